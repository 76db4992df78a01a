"""Lifecycle benchmarks: concurrency, memory per sandbox, and StartVM latency after boot.

- 100 concurrent lifecycles with a 1 s simulated create (the fake provider; every
  instance points at one shared forwarder + development agent), against one
  lifecycle measured the same way in the same run: the ratio says how well
  lifecycles overlap (target: wall close to one lifecycle's, <= 1.5 s).  The
  concurrent run is repeated ``ROUNDS`` times and the median reported (with every
  round), as is the daemon's CPU time per lifecycle over those rounds (user +
  system, its writer threads included): on a shared 2-core machine the wall time
  is noisy, the CPU time much less so.
- Daemon RSS with 500 live sandboxes, against the idle daemon's RSS.
- StartVM's return after the local VM's forwarder starts accepting
  (LOCAL_BOOT_DELAY simulates the boot), target <= 100 ms.
TLS is disabled for the shared-forwarder runs: one forwarder cannot present every
sandbox's per-VM certificate.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from cloud_api_adaptor import kata_client as kata

BIN = Path(sys.executable).parent
ROUNDS = 3
CONCURRENT = 100


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def _wait_socket(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _, w = await asyncio.open_unix_connection(str(path))
            w.close()
            return
        except OSError:
            await asyncio.sleep(0.02)
    raise TimeoutError(path)


async def _lifecycle(sock: Path, i: int) -> float:
    sid = uuid.uuid4().hex
    started = time.perf_counter()
    path = await kata.create_vm(sock, sid, kata.kata_annotations(f"bench-{i}"))
    await kata.start_vm(sock, sid, timeout=120)
    agent = await kata.AgentClient.connect(path)
    try:
        await agent.check()
    finally:
        await agent.aclose()
    await kata.stop_vm(sock, sid)
    return time.perf_counter() - started


async def _shared_forwarder_runs(tmp: Path) -> dict[str, Any]:
    port = _free_port()
    agent_sock = tmp / "agent.sock"
    apf = tmp / "apf.json"
    apf.write_text(json.dumps({"pod-namespace": "bench", "pod-name": "bench"}))
    procs: list[subprocess.Popen[bytes]] = []
    log = (tmp / "procs.log").open("wb")
    try:
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "cloud_api_adaptor.vm.devagent", "--socket", str(agent_sock)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        await _wait_socket(agent_sock)
        procs.append(
            subprocess.Popen(
                [
                    str(BIN / "agent-protocol-forwarder"),
                    "-disable-tls",
                    "-config",
                    str(apf),
                    "-listen",
                    f"127.0.0.1:{port}",
                    "-kata-agent-socket",
                    str(agent_sock),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        env = {
            **os.environ,
            "CLOUD_PROVIDER": "fake",
            "FAKE_INSTANCE_IP": "127.0.0.1",
            "FAKE_CREATE_DELAY": "1s",
            "FORWARDER_PORT": str(port),
            "REMOTE_HYPERVISOR_ENDPOINT": str(tmp / "hv.sock"),
            "PODS_DIR": str(tmp / "pods"),
            "STATE_DIR": str(tmp / "state"),
            "PROBE_PORT": str(_free_port()),
            "LOG_LEVEL": "warning",
        }
        daemon = subprocess.Popen(
            [str(BIN / "cloud-api-adaptor"), "serve", "-disable-tls"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        procs.append(daemon)
        sock = tmp / "hv.sock"
        await _wait_socket(sock)
        one = min([await _lifecycle(sock, 0) for _ in range(2)])
        rounds: list[float] = []
        cpu_before = _cpu_seconds(daemon.pid)
        for _ in range(ROUNDS):
            started = time.perf_counter()
            await asyncio.gather(*(_lifecycle(sock, i) for i in range(CONCURRENT)))
            rounds.append(time.perf_counter() - started)
        cpu_per_lifecycle = (_cpu_seconds(daemon.pid) - cpu_before) / (ROUNDS * CONCURRENT)
        hundred = statistics.median(rounds)
        idle_rss = _rss_kib(daemon.pid)
        ids = [uuid.uuid4().hex for _ in range(500)]
        sem = asyncio.Semaphore(100)

        async def bring_up(sid: str) -> None:
            async with sem:
                await kata.create_vm(sock, sid, kata.kata_annotations(sid[:10]))
                await kata.start_vm(sock, sid, timeout=300)

        await asyncio.gather(*(bring_up(sid) for sid in ids))
        live_rss = _rss_kib(daemon.pid)

        async def tear_down(sid: str) -> None:
            async with sem:
                await kata.stop_vm(sock, sid)

        await asyncio.gather(*(tear_down(sid) for sid in ids))
        return {
            "one_lifecycle_s": round(one, 3),
            "hundred_concurrent_lifecycles_s": round(hundred, 3),
            "hundred_concurrent_rounds_s": [round(r, 3) for r in rounds],
            "concurrency_ratio_vs_one": round(hundred / one, 2),
            "daemon_cpu_ms_per_lifecycle": round(cpu_per_lifecycle * 1000, 2),
            "daemon_rss_idle_mib": round(idle_rss / 1024, 1),
            "daemon_rss_500_live_sandboxes_mib": round(live_rss / 1024, 1),
            "rss_per_sandbox_kib": round((live_rss - idle_rss) / 500, 1),
        }
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        log.close()


async def _startvm_after_boot(tmp: Path) -> dict[str, Any]:
    from cloud_api_adaptor.daemon import start_daemon
    from cloud_api_adaptor.options import load
    from cloud_api_adaptor.plugins import load_plugin
    from cloud_api_adaptor.settings import Settings

    settings = dataclasses.replace(
        Settings(),
        provider="local",
        socket=tmp / "hv2.sock",
        pods_dir=tmp / "pods2",
        state_dir=tmp / "state2",
        probe_port=0,
        proxy_timeout=60,
    )
    values = load(load_plugin("local").settings_class, {"LOCAL_BOOT_DELAY": "2s"})
    daemon = await start_daemon(settings, values)
    gaps = []
    try:
        for i in range(3):
            sid = uuid.uuid4().hex
            await kata.create_vm(settings.socket, sid, kata.kata_annotations(f"boot-{i}"))
            start = asyncio.ensure_future(kata.start_vm(settings.socket, sid, timeout=60))
            first_accept = None
            while first_accept is None:
                record = next(r for r in daemon.manager.records() if r.id == sid)
                if record.instance_ips:
                    try:
                        _, w = await asyncio.open_connection(record.instance_ips[0], settings.forwarder_port)
                        first_accept = time.perf_counter()
                        w.close()
                        break
                    except OSError:
                        pass
                if start.done():
                    break
                await asyncio.sleep(0.002)
            await start
            returned = time.perf_counter()
            if first_accept is not None:
                gaps.append((returned - first_accept) * 1000)
            await kata.stop_vm(settings.socket, sid)
    finally:
        await daemon.aclose()
    return {"startvm_return_after_forwarder_accepts_ms": [round(g, 1) for g in gaps]}


def run() -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="caa-b", dir="/tmp"))
    try:
        result = asyncio.run(_shared_forwarder_runs(tmp))
        result.update(asyncio.run(_startvm_after_boot(tmp)))
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
