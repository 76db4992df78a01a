"""Start-up to listening socket: ``cloud-api-adaptor serve`` (local provider), median of runs.

Baseline in the same run: a bare ``python -c pass`` start, so the ratio shows
what the daemon adds to the interpreter's own start-up (target: <= 1 s total).
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent / "cloud-api-adaptor"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _one(tmp: Path) -> float:
    sock = tmp / "hv.sock"
    env = {
        **os.environ,
        "CLOUD_PROVIDER": "local",
        "REMOTE_HYPERVISOR_ENDPOINT": str(sock),
        "PODS_DIR": str(tmp / "pods"),
        "STATE_DIR": str(tmp / "state"),
        "PROBE_PORT": str(_free_port()),
        "LOG_LEVEL": "warning",
    }
    started = time.perf_counter()
    proc = subprocess.Popen(
        [str(BIN), "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {proc.returncode}")
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(str(sock))
                return time.perf_counter() - started
            except OSError:
                time.sleep(0.002)
    finally:
        proc.terminate()
        proc.wait(30)


def run() -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="caa-s", dir="/tmp"))
    try:
        runs = [_one(tmp) for _ in range(5)]
        bare = []
        for _ in range(5):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", "pass"], check=True)
            bare.append(time.perf_counter() - started)
        daemon = statistics.median(runs)
        python = statistics.median(bare)
        return {
            "serve_to_listening_s_median": round(daemon, 3),
            "bare_python_start_s_median": round(python, 3),
            "ratio_vs_bare_python": round(daemon / python, 1),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
