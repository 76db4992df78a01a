"""Runs ``kata-sim`` from async tests and parses its JSON-lines output.

The server under test usually runs in the test's own event loop, so kata-sim
must run as an asyncio subprocess (a blocking ``subprocess.run`` would starve
the server it talks to).
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class KataSimRun:
    """kata-sim's exit status, its result lines (decoded JSON) and its stderr."""

    returncode: int
    lines: list[dict[str, Any]]
    stderr: str

    def steps(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("step") == name]


async def run_kata_sim(bin_dir: Path, *args: str, timeout: float = 120.0) -> KataSimRun:
    """Run ``bin_dir/kata-sim *args``; ``timeout`` only bounds a hung run (it is not an assertion)."""
    proc = await asyncio.create_subprocess_exec(
        os.fspath(bin_dir / "kata-sim"),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    lines = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
    assert proc.returncode is not None
    return KataSimRun(proc.returncode, lines, err.decode())
