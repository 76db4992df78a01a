"""Drives ``shim-sim`` (tests/interop/cmd/shim-sim) from async tests: start pods, ask for reports, stop.

shim-sim holds each pod's one agent connection open with the long-polls in
flight and keep-alives going, as the Kata shim does; the test disturbs the
daemon or the link meanwhile, then asks for reports and finally stops the pods
(SignalProcess ... DestroySandbox, StopVM).  Each report says what the shim
would have seen: EOFs, errors, keep-alives sent and answered, how the
long-polls ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: what the development agent answers GetOOMEvent once the sandbox is destroyed (as kata-agent)
OOM_AFTER_DESTROY = "Internal"
#: WaitProcess status after SignalProcess(SIGKILL)
KILLED_STATUS = 128 + 9


@dataclass
class ShimSim:
    """One running ``shim-sim`` process and every line it printed."""

    proc: asyncio.subprocess.Process
    lines: list[dict[str, Any]] = field(default_factory=list)
    stderr_path: Path | None = None

    @classmethod
    async def start(
        cls,
        bin_dir: Path,
        socket: Path,
        *,
        sandbox_id: str,
        count: int = 3,
        keepalive: float = 5.0,
        stderr_path: Path | None = None,
        extra: tuple[str, ...] = (),
        timeout: float = 300.0,
    ) -> ShimSim:
        """Start the pods; returns once every pod runs with its long-polls in flight (or setup failed)."""
        stderr = open(stderr_path, "ab") if stderr_path else asyncio.subprocess.DEVNULL  # noqa: SIM115
        try:
            proc = await asyncio.create_subprocess_exec(
                os.fspath(bin_dir / "shim-sim"),
                "-socket",
                os.fspath(socket),
                "-id",
                sandbox_id,
                "-count",
                str(count),
                "-keepalive",
                f"{keepalive}s",
                *extra,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
            )
        finally:
            if not isinstance(stderr, int):
                stderr.close()
        sim = cls(proc, stderr_path=stderr_path)
        try:
            async with asyncio.timeout(timeout):
                ready = await sim._until("ready")
        except BaseException:
            await sim.kill()
            raise
        if not ready.get("ok"):
            failed = [line for line in sim.lines if line.get("ok") is False]
            await sim.kill()
            raise AssertionError(f"shim-sim could not start its pods: {failed}")
        return sim

    async def _line(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        raw = await self.proc.stdout.readline()
        if not raw:
            raise EOFError(f"shim-sim exited ({self.proc.returncode}) after {self.lines[-5:]}")
        line: dict[str, Any] = json.loads(raw)
        self.lines.append(line)
        return line

    async def _until(self, step: str) -> dict[str, Any]:
        while True:
            line = await self._line()
            if line.get("step") == step:
                return line

    async def _command(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        await self.proc.stdin.drain()

    async def report(self, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Every pod's report so far (the pods keep running)."""
        await self._command("report")
        async with asyncio.timeout(timeout):
            return [await self._until("report") for _ in range(count)]

    async def keepalives_answered(self, count: int) -> int:
        """The fewest keep-alives any pod has had answered."""
        return min(int(r["keepalives_answered"]) for r in await self.report(count))

    async def stop(self, timeout: float = 300.0) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Stop every pod as the shim does; returns the final reports and the summary."""
        await self._command("stop")
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        reports = []
        async with asyncio.timeout(timeout):
            while True:
                line = await self._line()
                if line.get("step") == "report" and line.get("final"):
                    reports.append(line)
                if line.get("step") == "summary":
                    await self.proc.wait()
                    return reports, line

    async def kill(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()


def problems(report: dict[str, Any], *, final: bool) -> list[str]:
    """What the shim would have noticed in one pod's report; empty when the pod never saw a thing."""
    found = []
    if not report["running"]:
        found.append("the pod never ran")
    if report["eofs"]:
        found.append(f"{report['eofs']} EOF(s) on the agent connection")
    if report["errors"]:
        found.append(f"errors: {report['errors']}")
    if final:
        if report["keepalives_sent"] != report["keepalives_answered"]:
            found.append(
                f"keep-alives: {report['keepalives_sent']} sent, {report['keepalives_answered']} answered"
            )
        if report["wait_status"] != KILLED_STATUS:
            found.append(f"WaitProcess ended with {report['wait_status']} ({report.get('wait_error')})")
        if report["oom_code"] != OOM_AFTER_DESTROY:
            found.append(f"GetOOMEvent ended with {report['oom_code']}")
        if not report["stop_vm"]:
            found.append("StopVM failed")
    elif report["wait_done"] or report["oom_done"]:
        found.append("a long-poll ended while the pod ran")
    return found
