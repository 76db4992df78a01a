"""ttrpc benchmark: hypervisor ``Version`` round trips, our Python Server against Go's.

Both servers answer ``hypervisor.Hypervisor/Version`` with "0.0.0" on a unix
socket, each in its own process: ``benchmarks.ttrpc.pyserver`` (our Server) and
``tests/interop/bin/ttrpc-bench-server`` (containerd/ttrpc v1.2.7, built in the
same run by tests/interop/build.sh).  Each is measured

* with our Python Client and with the Go client (``kata-sim -mode bench``),
* opening a new connection per call (what Kata's runtime does for every
  hypervisor RPC) and over one reused connection,

for ``CALLS`` sequential calls after a warm-up.  Reported: p50 and p99 latency
(µs) and calls per second, plus the ratio Python server / Go server for each
client and mode (latency ratio > 1 means our server is slower).  Loopback unix
sockets only; nothing is asserted (machines are noisy).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cloud_api_adaptor._pb import hypervisor_pb2 as hv
from cloud_api_adaptor.ttrpc import Client

CALLS = 2000
WARMUP = 200
SERVICE = "hypervisor.Hypervisor"


def _go_bin() -> Path:
    from tests.interop.gobuild import build_interop_binaries

    return build_interop_binaries()


@contextlib.contextmanager
def _server(argv: list[str], socket_path: Path) -> Iterator[None]:
    """Start a server process and wait for its READY line; terminate it on exit."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("READY"):
            raise RuntimeError(f"{argv[0]} did not start: {line!r}")
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
        with contextlib.suppress(FileNotFoundError):
            socket_path.unlink()


def _summary(latencies_us: list[float], elapsed: float) -> dict[str, float]:
    ordered = sorted(latencies_us)
    return {
        "p50_us": round(statistics.median(ordered), 1),
        "p99_us": round(ordered[min(len(ordered) - 1, len(ordered) * 99 // 100)], 1),
        "calls_per_sec": round(len(ordered) / elapsed, 1),
    }


async def _python_client(socket_path: Path, *, reuse: bool, calls: int) -> dict[str, float]:
    request = hv.VersionRequest()
    latencies: list[float] = []
    clock = time.perf_counter
    if reuse:
        async with await Client.connect_unix(socket_path) as client:
            for _ in range(WARMUP):
                await client.call(SERVICE, "Version", request, hv.VersionResponse)
            started = clock()
            for _ in range(calls):
                t = clock()
                await client.call(SERVICE, "Version", request, hv.VersionResponse)
                latencies.append((clock() - t) * 1e6)
            elapsed = clock() - started
    else:
        for i in range(WARMUP + calls):
            if i == WARMUP:
                started = clock()
            t = clock()
            async with await Client.connect_unix(socket_path) as client:
                await client.call(SERVICE, "Version", request, hv.VersionResponse)
            if i >= WARMUP:
                latencies.append((clock() - t) * 1e6)
        elapsed = clock() - started
    return _summary(latencies, elapsed)


def _go_client(go_bin: Path, socket_path: Path, *, reuse: bool, calls: int) -> dict[str, float]:
    base = [os.fspath(go_bin / "kata-sim"), "-socket", os.fspath(socket_path), "-mode", "bench"]
    extra = ["-reuse"] if reuse else []
    subprocess.run([*base, *extra, "-count", str(WARMUP)], check=True, capture_output=True, timeout=300)
    out = subprocess.run(
        [*base, *extra, "-count", str(calls)], check=True, capture_output=True, text=True, timeout=300
    ).stdout
    line = json.loads(out.strip().splitlines()[-1])
    return {key: round(float(line[key]), 1) for key in ("p50_us", "p99_us", "calls_per_sec")}


def _measure(go_bin: Path, socket_path: Path, calls: int) -> dict[str, dict[str, dict[str, float]]]:
    results: dict[str, dict[str, dict[str, float]]] = {"python_client": {}, "go_client": {}}
    for mode, reuse in (("new_connection", False), ("reused_connection", True)):
        results["python_client"][mode] = asyncio.run(_python_client(socket_path, reuse=reuse, calls=calls))
        results["go_client"][mode] = _go_client(go_bin, socket_path, reuse=reuse, calls=calls)
    return results


def run(calls: int = CALLS) -> dict[str, Any]:
    go_bin = _go_bin()
    with tempfile.TemporaryDirectory(prefix="ttrpc-bench-") as tmp:
        py_sock = Path(tmp) / "py.sock"
        go_sock = Path(tmp) / "go.sock"
        with _server([sys.executable, "-m", "benchmarks.ttrpc.pyserver", os.fspath(py_sock)], py_sock):
            python_server = _measure(go_bin, py_sock, calls)
        with _server([os.fspath(go_bin / "ttrpc-bench-server"), "-socket", os.fspath(go_sock)], go_sock):
            go_server = _measure(go_bin, go_sock, calls)
    ratios: dict[str, dict[str, float]] = {}
    for client in ("python_client", "go_client"):
        for mode in ("new_connection", "reused_connection"):
            ours, theirs = python_server[client][mode], go_server[client][mode]
            ratios[f"{client}/{mode}"] = {
                "p50_latency": round(ours["p50_us"] / theirs["p50_us"], 2),
                "throughput": round(ours["calls_per_sec"] / theirs["calls_per_sec"], 2),
            }
    return {
        "calls": calls,
        "python_server": python_server,
        "go_server": go_server,
        "ratio_python_over_go": ratios,
    }
