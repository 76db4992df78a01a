"""Builds the Go interop peers (``build.sh``) at most once per input change.

``build_interop_binaries()`` hashes everything the build reads (the Go sources,
go.mod/go.sum, build.sh, the .proto files and the Go version) and reruns
``build.sh`` only when that hash differs from the one stamped in ``bin/`` by the
last successful build.  A file lock makes concurrent callers (two pytest runs,
a benchmark) wait for one build instead of racing.  Within a process the result
is memoised, so a test session builds at most once.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
BIN = HERE / "bin"
BINARIES = ("kata-sim", "ttrpc-bench-server", "shim-sim")
BUILD_TIMEOUT = 900.0  # a cold build downloads modules and compiles grpc: minutes on 2 cores


class GoBuildError(RuntimeError):
    """build.sh failed; the message carries the tail of its output."""


def _inputs() -> list[Path]:
    files = [HERE / "build.sh", HERE / "go.mod", HERE / "go.sum", ROOT / "protos" / "hypervisor.proto"]
    files.append(ROOT / "protos" / "health.proto")
    files.append(ROOT / "protos" / "agent.proto")
    for sub in ("cmd", "tools"):
        files.extend(sorted((HERE / sub).rglob("*.go")))
    return files


def inputs_hash() -> str:
    digest = hashlib.sha256()
    for path in _inputs():
        digest.update(os.fsencode(path.relative_to(ROOT)) + b"\0" + path.read_bytes() + b"\0")
    go_version = subprocess.run(
        ["go", "env", "GOVERSION"], check=True, capture_output=True, text=True, timeout=60
    ).stdout.strip()
    digest.update(go_version.encode())
    return digest.hexdigest()


def _is_current(stamp: Path, wanted: str) -> bool:
    if not all((BIN / name).is_file() for name in BINARIES):
        return False
    try:
        return stamp.read_text().strip() == wanted
    except FileNotFoundError:
        return False


@functools.cache
def build_interop_binaries() -> Path:
    """The directory holding ``kata-sim``, ``ttrpc-bench-server`` and ``shim-sim``, built if out of date."""
    BIN.mkdir(parents=True, exist_ok=True)
    stamp = BIN / ".inputs.sha256"
    wanted = inputs_hash()
    with open(BIN / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _is_current(stamp, wanted):
            return BIN
        stamp.unlink(missing_ok=True)
        env = {**os.environ, "PYTHON": sys.executable}
        proc = subprocess.run(
            ["bash", os.fspath(HERE / "build.sh")],
            env=env,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
            check=False,
        )
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr)[-4000:]
            raise GoBuildError(f"tests/interop/build.sh failed (exit {proc.returncode}):\n{tail}")
        stamp.write_text(wanted + "\n")
    return BIN


if __name__ == "__main__":
    print(build_interop_binaries())
