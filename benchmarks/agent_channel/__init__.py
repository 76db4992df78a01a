"""Agent-channel benchmark: the whole relay path against calling the agent directly.

Path measured: client -> AgentProxy (unix socket, own process) -> mTLS over
loopback TCP -> agent-protocol-forwarder (the real CLI, own process) -> stub
agent (unix socket, own process).  Baseline in the same run: the same client
calling the same stub agent directly on its unix socket.

The channel is measured three times: with mutual TLS (the default), with
``-disable-tls`` on both ends (the TLS share of the cost), and with mutual TLS
on asyncio's own loop (``CAA_EVENT_LOOP=asyncio`` for proxy and forwarder: what
uvloop buys).  Reported: ``grpc.Health/Check`` latency p50/p99 (µs) for both
paths and the added latency of the channel; 64 KiB echo calls per second, one
in flight and eight in flight, for both paths, and the throughput ratio
channel / direct; and a one-way 64 KiB stream (``grpc.AgentService/CopyFile``
requests carrying 64 KiB, empty replies, eight in flight: how file copies and
stdin reach the VM).

Readiness (in this process, mTLS, loopback): how long after the forwarder
starts listening ``AgentProxy.start`` returns, when the dials before that were
refused (RST, as the local VMs answer) and when their SYNs were dropped (a
listener whose accept queue is full: what a booting cloud VM often does).

Machines are noisy (2 shared cores run client, proxy, forwarder and agent), so
direct and channel are measured in alternating rounds and every figure that
compares them is the median of the per-round comparisons: a load spike hits
both sides of a pair, not one side of the whole run.  Bounded loops, loopback
and unix sockets only; nothing is asserted.
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
from cloud_api_adaptor.aio import EVENT_LOOP_ENV, loop_factory
from cloud_api_adaptor.aio import run as run_loop
from cloud_api_adaptor.apf import ApfConfig
from cloud_api_adaptor.proxy.agent_proxy import AgentChannel
from cloud_api_adaptor.proxy.testing import StubClient
from cloud_api_adaptor.proxy.tls import AgentTls, CertKeyPair, make_server_context
from cloud_api_adaptor.settings import TlsSettings

ROUNDS = 5
CHECKS = 400  # per path per round
WARMUP = 200
ECHOES = 60  # one in flight, per path per round
ECHOES_X8 = 160  # eight in flight, per path per round
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
    root: Path, apf: ApfConfig, port: int, agent_sock: Path, *, tls_enabled: bool, env: dict[str, str]
) -> Iterator[None]:
    config = root / "apf.json"
    config.write_text(apf.to_json())
    notify = root / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(notify))
        sock.settimeout(60)
        env = {**env, "NOTIFY_SOCKET": str(notify)}
        argv = [sys.executable, "-m", "cloud_api_adaptor.vm.forwarder_cli", "-config", str(config)]
        argv += ["-listen", f"127.0.0.1:{port}", "-kata-agent-socket", str(agent_sock)]
        if not tls_enabled:
            argv.append("-disable-tls")
        with _process(argv, env=env, ready=""):
            if sock.recv(64) != b"READY=1":
                raise RuntimeError("forwarder did not report READY=1")
            yield


def _health_request() -> bytes:
    return ttrpc_pb2.Request(
        service="grpc.Health", method="Check", payload=health_pb2.CheckRequest().SerializeToString()
    ).SerializeToString()


async def _latencies(client: StubClient, n: int) -> list[float]:
    raw = _health_request()
    out = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        await client.send_request(raw)
        out.append((time.perf_counter_ns() - t0) / 1000)
    return out


async def _echo_rate(client: StubClient, raw: bytes, n: int, in_flight: int) -> float:
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


async def _measure(direct_path: Path, channel_path: Path) -> dict[str, Any]:
    """Alternating rounds over one connection per path; pooled latencies, paired ratios."""
    paths = {"direct": direct_path, "channel": channel_path}
    clients = {name: await StubClient.connect_unix(path) for name, path in paths.items()}
    echo = ttrpc_pb2.Request(
        service="test.Echo", method="Echo", payload=os.urandom(ECHO_SIZE)
    ).SerializeToString()
    upload = ttrpc_pb2.Request(
        service="grpc.AgentService", method="CopyFile", payload=os.urandom(ECHO_SIZE)
    ).SerializeToString()
    lat: dict[str, list[float]] = {name: [] for name in paths}
    rounds: list[dict[str, dict[str, float]]] = []
    try:
        for client in clients.values():
            for _ in range(WARMUP):
                await client.send_request(_health_request())
            await _echo_rate(client, echo, 8, 8)
        for i in range(ROUNDS):
            order = list(paths) if i % 2 == 0 else list(reversed(paths))
            this: dict[str, dict[str, float]] = {name: {} for name in paths}
            for name in order:
                samples = await _latencies(clients[name], CHECKS)
                lat[name] += samples
                this[name]["p50"] = statistics.median(samples)
            for name in order:
                this[name]["echo1"] = await _echo_rate(clients[name], echo, ECHOES, 1)
            for name in order:
                this[name]["echo8"] = await _echo_rate(clients[name], echo, ECHOES_X8, 8)
            for name in order:
                this[name]["upload8"] = await _echo_rate(clients[name], upload, ECHOES_X8, 8)
            rounds.append(this)
    finally:
        for client in clients.values():
            await client.aclose()

    def path_summary(name: str) -> dict[str, float]:
        return {
            "p50_us": round(statistics.median(lat[name]), 1),
            "p99_us": round(_pct(lat[name], 0.99), 1),
            "echo64k_per_s": round(statistics.median(r[name]["echo1"] for r in rounds), 1),
            "echo64k_x8_per_s": round(statistics.median(r[name]["echo8"] for r in rounds), 1),
            "upload64k_x8_per_s": round(statistics.median(r[name]["upload8"] for r in rounds), 1),
        }

    def paired(key: str, f: Any) -> float:
        return float(statistics.median(f(r["channel"][key], r["direct"][key]) for r in rounds))

    return {
        "direct": path_summary("direct"),
        "channel": path_summary("channel"),
        "p50_added_us": round(paired("p50", lambda c, d: c - d), 1),
        "p50_ratio": round(paired("p50", lambda c, d: c / d), 2),
        "echo1_ratio": round(paired("echo1", lambda c, d: c / d), 2),
        "echo8_ratio": round(paired("echo8", lambda c, d: c / d), 2),
        "upload8_ratio": round(paired("upload8", lambda c, d: c / d), 2),
    }


def _run_once(*, tls_enabled: bool, event_loop: str = "") -> dict[str, Any]:
    """Direct and through the channel, in one set of processes."""
    with tempfile.TemporaryDirectory(prefix="caa-bench-", dir="/tmp") as tmp:
        root = Path(tmp)
        agent_sock, proxy_sock = root / "agent.sock", root / "sb" / "agent.ttrpc"
        state = root / "state" if tls_enabled else Path("-")
        tls = AgentTls.from_settings(TlsSettings(disabled=not tls_enabled), state)
        apf = ApfConfig.from_mapping(
            {"pod-namespace": "bench", "pod-name": "bench", **tls.apf_tls_fields(INSTANCE)}
        )
        port = _free_port()
        env = {**os.environ, EVENT_LOOP_ENV: event_loop}
        procs = [sys.executable, "-m", "benchmarks.agent_channel.procs"]
        with (
            _process([*procs, "agent", str(agent_sock)]),
            _forwarder(root, apf, port, agent_sock, tls_enabled=tls_enabled, env=env),
            _process(
                [*procs, "proxy", str(proxy_sock), "127.0.0.1", str(port), str(state), INSTANCE], env=env
            ),
        ):
            return asyncio.run(_measure(agent_sock, proxy_sock))


async def _readiness(dropped: bool, tls: AgentTls, root: Path, boot: float) -> float:
    """ms from the listener accepting to ``AgentProxy.start`` returning."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    filler: socket.socket | None = None
    if dropped:
        listener.listen(0)  # one queued connection fills it: later SYNs are dropped
        filler = socket.create_connection(("127.0.0.1", port))
    else:
        listener.close()  # nothing listens: connects are refused
    fields = tls.apf_tls_fields(INSTANCE)
    server_ctx = make_server_context(
        server=CertKeyPair(fields["tls-server-cert"].encode(), fields["tls-server-key"].encode()),
        client_ca_pem=fields["tls-client-ca"].encode(),
        profile=None,
    )
    proxy = AgentChannel(tls).new_proxy(root / f"ready-{port}.ttrpc", INSTANCE)
    starting = asyncio.create_task(proxy.start("127.0.0.1", port, timeout=30))
    conns: list[asyncio.StreamWriter] = []

    async def keep(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        conns.append(w)

    server: asyncio.Server | None = None
    try:
        await asyncio.sleep(boot)  # the VM boots: several attempts fail or hang
        opened = time.perf_counter()
        if dropped:
            listener.accept()[0].close()  # the queue has room again
        else:
            listener = socket.create_server(("127.0.0.1", port))
        server = await asyncio.start_server(keep, sock=listener, ssl=server_ctx)
        await starting
        return (time.perf_counter() - opened) * 1000
    finally:
        starting.cancel()
        await proxy.aclose()
        for w in conns:
            w.transport.abort()
        if filler is not None:
            filler.close()
        if server is not None:
            server.close()
            await server.wait_closed()
        else:
            listener.close()


async def _readiness_runs(trials: int = 6) -> dict[str, list[float]]:
    # Boot times spread over a retry interval and more, so the listener opens at every phase.
    boots = [0.3 + 0.023 * i for i in range(trials)]
    with tempfile.TemporaryDirectory(prefix="caa-bench-", dir="/tmp") as tmp:
        tls = AgentTls.from_settings(TlsSettings(), Path(tmp) / "state")
        return {
            kind: [round(await _readiness(kind == "dropped", tls, Path(tmp), boot), 1) for boot in boots]
            for kind in ("refused", "dropped")
        }


def run() -> dict[str, Any]:
    mtls = _run_once(tls_enabled=True)
    plain = _run_once(tls_enabled=False)
    stock = _run_once(tls_enabled=True, event_loop="asyncio")
    ready = run_loop(_readiness_runs())
    return {
        "event_loop": "uvloop" if loop_factory("") is not None else "asyncio",
        "direct": mtls["direct"],
        "channel_mtls": mtls["channel"],
        "channel_plain_tcp": plain["channel"],
        "channel_mtls_asyncio_loop": stock["channel"],
        "health_p50_added_us": mtls["p50_added_us"],
        "health_p50_added_plain_us": plain["p50_added_us"],
        "health_p50_added_asyncio_loop_us": stock["p50_added_us"],
        "health_p50_ratio": mtls["p50_ratio"],
        "echo64k_throughput_ratio": mtls["echo1_ratio"],
        "echo64k_x8_throughput_ratio": mtls["echo8_ratio"],
        "upload64k_x8_throughput_ratio": mtls["upload8_ratio"],
        "upload64k_x8_throughput_ratio_plain": plain["upload8_ratio"],
        "echo64k_throughput_ratio_plain": plain["echo1_ratio"],
        "echo64k_throughput_ratio_asyncio_loop": stock["echo1_ratio"],
        "echo64k_x8_throughput_ratio_asyncio_loop": stock["echo8_ratio"],
        "ready_after_listen_ms_refused_dials": ready["refused"],
        "ready_after_listen_ms_dropped_syns": ready["dropped"],
        "calls": {
            "rounds": ROUNDS,
            "health_per_round": CHECKS,
            "echo_per_round": ECHOES,
            "echo_x8_per_round": ECHOES_X8,
            "echo_bytes": ECHO_SIZE,
        },
    }
