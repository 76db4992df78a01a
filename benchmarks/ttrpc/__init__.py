"""ttrpc benchmark: hypervisor ``Version`` round trips, our Python Server against Go's.

Three servers answer ``hypervisor.Hypervisor/Version`` with "0.0.0" on unix
sockets, each in its own process:

* ``python_server``: ``benchmarks.ttrpc.pyserver`` (our Server) on the loop
  ``cloud-api-adaptor serve`` uses by default (uvloop when installed);
* ``python_server_asyncio``: the same on the stock asyncio loop
  (``CAA_EVENT_LOOP=asyncio``);
* ``go_server``: ``tests/interop/bin/ttrpc-bench-server`` (containerd/ttrpc
  v1.2.7, built in the same run by tests/interop/build.sh).

Each is measured with our Python Client and with the Go client (``kata-sim -mode
bench``), opening a new connection per call (what Kata's runtime does for every
hypervisor RPC) and over one reused connection.  The servers run side by side
and are measured in interleaved rounds (``ROUNDS`` x ``CALLS`` sequential calls
after a warm-up), so a burst of load on a shared machine hits all of them alike;
each figure is the median over the rounds.  Reported: p50 and p99 latency (µs)
and calls per second, plus the ratios Python server / Go server for each client
and mode (a latency ratio > 1 means our server is slower).  Loopback unix
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
ROUNDS = 3
WARMUP = 200
SERVICE = "hypervisor.Hypervisor"
CLIENTS = ("python_client", "go_client")
MODES = (("new_connection", False), ("reused_connection", True))
Summary = dict[str, float]


def _go_bin() -> Path:
    from tests.interop.gobuild import build_interop_binaries

    return build_interop_binaries()


@contextlib.contextmanager
def _server(argv: list[str], socket_path: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """Start a server process and wait for its READY line (yielded); terminate it on exit."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("READY"):
            raise RuntimeError(f"{argv[0]} did not start: {line!r}")
        yield line.strip()
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


def _summary(latencies_us: list[float], elapsed: float) -> Summary:
    ordered = sorted(latencies_us)
    return {
        "p50_us": round(statistics.median(ordered), 1),
        "p99_us": round(ordered[min(len(ordered) - 1, len(ordered) * 99 // 100)], 1),
        "calls_per_sec": round(len(ordered) / elapsed, 1),
    }


async def _python_client(socket_path: Path, *, reuse: bool, calls: int) -> Summary:
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


def _go_client(go_bin: Path, socket_path: Path, *, reuse: bool, calls: int) -> Summary:
    base = [os.fspath(go_bin / "kata-sim"), "-socket", os.fspath(socket_path), "-mode", "bench"]
    extra = ["-reuse"] if reuse else []
    subprocess.run([*base, *extra, "-count", str(WARMUP)], check=True, capture_output=True, timeout=300)
    out = subprocess.run(
        [*base, *extra, "-count", str(calls)], check=True, capture_output=True, text=True, timeout=300
    ).stdout
    line = json.loads(out.strip().splitlines()[-1])
    return {key: round(float(line[key]), 1) for key in ("p50_us", "p99_us", "calls_per_sec")}


def _measure_once(go_bin: Path, socket_path: Path, calls: int) -> dict[str, dict[str, Summary]]:
    results: dict[str, dict[str, Summary]] = {"python_client": {}, "go_client": {}}
    for mode, reuse in MODES:
        results["python_client"][mode] = asyncio.run(_python_client(socket_path, reuse=reuse, calls=calls))
        results["go_client"][mode] = _go_client(go_bin, socket_path, reuse=reuse, calls=calls)
    return results


def _median_rounds(rounds: list[dict[str, dict[str, Summary]]]) -> dict[str, dict[str, Summary]]:
    return {
        client: {
            mode: {
                key: round(statistics.median(r[client][mode][key] for r in rounds), 1)
                for key in ("p50_us", "p99_us", "calls_per_sec")
            }
            for mode, _ in MODES
        }
        for client in CLIENTS
    }


def _ratios(ours: dict[str, dict[str, Summary]], go: dict[str, dict[str, Summary]]) -> dict[str, Summary]:
    ratios: dict[str, Summary] = {}
    for client in CLIENTS:
        for mode, _ in MODES:
            a, b = ours[client][mode], go[client][mode]
            ratios[f"{client}/{mode}"] = {
                "p50_latency": round(a["p50_us"] / b["p50_us"], 2),
                "throughput": round(a["calls_per_sec"] / b["calls_per_sec"], 2),
            }
    return ratios


def run(calls: int = CALLS, rounds: int = ROUNDS) -> dict[str, Any]:
    go_bin = _go_bin()
    per_round = max(1, calls // rounds)
    with tempfile.TemporaryDirectory(prefix="ttrpc-bench-") as tmp, contextlib.ExitStack() as stack:
        sockets = {name: Path(tmp) / f"{name}.sock" for name in ("python", "python_asyncio", "go")}
        pyserver = [sys.executable, "-m", "benchmarks.ttrpc.pyserver"]
        ready = stack.enter_context(_server([*pyserver, os.fspath(sockets["python"])], sockets["python"]))
        asyncio_env = {**os.environ, "CAA_EVENT_LOOP": "asyncio"}
        stack.enter_context(
            _server([*pyserver, os.fspath(sockets["python_asyncio"])], sockets["python_asyncio"], asyncio_env)
        )
        go_argv = [os.fspath(go_bin / "ttrpc-bench-server"), "-socket", os.fspath(sockets["go"])]
        stack.enter_context(_server(go_argv, sockets["go"]))
        measured: dict[str, list[dict[str, dict[str, Summary]]]] = {name: [] for name in sockets}
        for _ in range(rounds):
            for name, path in sockets.items():
                measured[name].append(_measure_once(go_bin, path, per_round))
    python, python_asyncio, go = (_median_rounds(measured[n]) for n in ("python", "python_asyncio", "go"))
    return {
        "calls": per_round * rounds,
        "rounds": rounds,
        "python_server_loop": ready.split()[-1],
        "python_server": python,
        "python_server_asyncio": python_asyncio,
        "go_server": go,
        "ratio_python_over_go": _ratios(python, go),
        "ratio_python_asyncio_over_go": _ratios(python_asyncio, go),
    }
