"""Agent-channel benchmark: the whole relay path against calling the agent directly.

Path measured: client -> AgentProxy (unix socket, own process) -> mTLS over
loopback TCP -> agent-protocol-forwarder (the real CLI, own process) -> stub
agent (unix socket, own process).  Baseline in the same run: the same client
calling the same stub agent directly on its unix socket.

The channel is measured twice: with mutual TLS (the default) and with
``-disable-tls`` on both ends, so the TLS share of the cost is visible.
Reported: ``grpc.Health/Check`` latency p50/p99 (µs) for both paths and the
added latency of the channel; 64 KiB echo calls per second, one in flight and
eight in flight, for both paths, and the throughput ratio channel / direct.
Bounded loops, loopback and unix sockets only; nothing is asserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cloud_api_adaptor._pb import health_pb2, ttrpc_pb2
from cloud_api_adaptor.apf import ApfConfig
from cloud_api_adaptor.proxy.testing import StubClient
from cloud_api_adaptor.proxy.tls import AgentTls
from cloud_api_adaptor.settings import TlsSettings

CHECKS = 2000
WARMUP = 200
ECHOES = 300
ECHO_SIZE = 64 * 1024
INSTANCE = "podvm-bench"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _process(argv: list[str], *, env: dict[str, str] | None = None, ready: str = "READY") -> Iterator[None]:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)
    try:
        if ready:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line.startswith(ready):
                raise RuntimeError(f"{argv[:4]} did not start: {line!r}")
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


@contextlib.contextmanager
def _forwarder(
    root: Path, apf: ApfConfig, port: int, agent_sock: Path, *, tls_enabled: bool
) -> Iterator[None]:
    config = root / "apf.json"
    config.write_text(apf.to_json())
    notify = root / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(notify))
        sock.settimeout(60)
        env = {**os.environ, "NOTIFY_SOCKET": str(notify)}
        argv = [sys.executable, "-m", "cloud_api_adaptor.vm.forwarder_cli", "-config", str(config)]
        argv += ["-listen", f"127.0.0.1:{port}", "-kata-agent-socket", str(agent_sock)]
        if not tls_enabled:
            argv.append("-disable-tls")
        with _process(argv, env=env, ready=""):
            if sock.recv(64) != b"READY=1":
                raise RuntimeError("forwarder did not report READY=1")
            yield


async def _latencies(client: StubClient, n: int) -> list[float]:
    raw = ttrpc_pb2.Request(
        service="grpc.Health", method="Check", payload=health_pb2.CheckRequest().SerializeToString()
    ).SerializeToString()
    for _ in range(WARMUP):
        await client.send_request(raw)
    out = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        await client.send_request(raw)
        out.append((time.perf_counter_ns() - t0) / 1000)
    return out


async def _echo_rate(client: StubClient, n: int, in_flight: int) -> float:
    raw = ttrpc_pb2.Request(
        service="test.Echo", method="Echo", payload=os.urandom(ECHO_SIZE)
    ).SerializeToString()
    await client.send_request(raw)
    started = time.perf_counter()
    done = 0
    while done < n:
        batch = min(in_flight, n - done)
        await asyncio.gather(*(client.send_request(raw) for _ in range(batch)))
        done += batch
    return n / (time.perf_counter() - started)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _measure(path: Path) -> dict[str, float]:
    client = await StubClient.connect_unix(path)
    try:
        lat = await _latencies(client, CHECKS)
        one = await _echo_rate(client, ECHOES, 1)
        eight = await _echo_rate(client, ECHOES, 8)
    finally:
        await client.aclose()
    return {
        "p50_us": round(statistics.median(lat), 1),
        "p99_us": round(_pct(lat, 0.99), 1),
        "echo64k_per_s": round(one, 1),
        "echo64k_x8_per_s": round(eight, 1),
    }


def _run_once(*, tls_enabled: bool) -> tuple[dict[str, float], dict[str, float]]:
    """(direct, through the channel) in one set of processes."""
    with tempfile.TemporaryDirectory(prefix="caa-bench-", dir="/tmp") as tmp:
        root = Path(tmp)
        agent_sock, proxy_sock = root / "agent.sock", root / "sb" / "agent.ttrpc"
        state = root / "state" if tls_enabled else Path("-")
        tls = AgentTls.from_settings(TlsSettings(disabled=not tls_enabled), state)
        apf = ApfConfig.from_mapping(
            {"pod-namespace": "bench", "pod-name": "bench", **tls.apf_tls_fields(INSTANCE)}
        )
        port = _free_port()
        procs = [sys.executable, "-m", "benchmarks.agent_channel.procs"]
        with (
            _process([*procs, "agent", str(agent_sock)]),
            _forwarder(root, apf, port, agent_sock, tls_enabled=tls_enabled),
            _process([*procs, "proxy", str(proxy_sock), "127.0.0.1", str(port), str(state), INSTANCE]),
        ):
            return asyncio.run(_measure(agent_sock)), asyncio.run(_measure(proxy_sock))


def run() -> dict[str, Any]:
    direct, channel = _run_once(tls_enabled=True)
    _, plain = _run_once(tls_enabled=False)
    return {
        "direct": direct,
        "channel_mtls": channel,
        "channel_plain_tcp": plain,
        "health_p50_added_plain_us": round(plain["p50_us"] - direct["p50_us"], 1),
        "health_p50_added_us": round(channel["p50_us"] - direct["p50_us"], 1),
        "health_p50_ratio": round(channel["p50_us"] / direct["p50_us"], 2),
        "echo64k_throughput_ratio": round(channel["echo64k_per_s"] / direct["echo64k_per_s"], 2),
        "echo64k_x8_throughput_ratio": round(channel["echo64k_x8_per_s"] / direct["echo64k_x8_per_s"], 2),
        "calls": {"health": CHECKS, "echo": ECHOES, "echo_bytes": ECHO_SIZE},
    }
