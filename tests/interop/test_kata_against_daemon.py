"""Kata's own client sequence (containerd/ttrpc v1.2.7, Go) against ``cloud-api-adaptor serve``.

kata-sim is generated from the Kata hypervisor proto with containerd's
protoc-gen-go-ttrpc (Kata's runtime module is not served by the Go module
proxy; see README).  It runs Kata's exact sequence: a new connection per
hypervisor RPC, the nine annotations, StartVM with a deadline, dial the agent
socket, Health/Check, StopVM.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from ..integration.daemon_proc import DaemonProcess
from .katasim import run_kata_sim


@pytest.mark.asyncio
@pytest.mark.timeout(1200)
async def test_kata_sequence_runs_three_pods_against_the_daemon(interop_bin: Path, short_tmp: Path) -> None:
    daemon = DaemonProcess(short_tmp)
    daemon.start()
    try:
        sid = uuid.uuid4().hex
        run = await run_kata_sim(
            interop_bin,
            "-socket",
            str(daemon.socket),
            "-mode",
            "sandbox",
            "-id",
            sid,
            "-count",
            "3",
            "-parallel",
            "-pod-name",
            "interop",
            "-pod-namespace",
            "default",
        )
        assert run.returncode == 0, run.stderr[-3000:]
        for step in ("CreateVM", "StartVM", "StopVM"):
            assert len(run.steps(step)) == 3 and all(s["ok"] for s in run.steps(step)), run.lines
        checks = run.steps("AgentCheck")
        assert len(checks) == 3 and all(c["ok"] for c in checks), run.lines
        paths = {s["agent_socket_path"] for s in run.steps("CreateVM")}
        assert all(p.startswith(f"{daemon.pods_dir}/{sid}") for p in paths)
        assert list(daemon.pods_dir.iterdir()) == []
        version = await run_kata_sim(interop_bin, "-socket", str(daemon.socket), "-mode", "version")
        assert version.returncode == 0 and version.steps("Version")[0]["version"] == "0.0.0"
        errors = await run_kata_sim(interop_bin, "-socket", str(daemon.socket), "-mode", "errors")
        assert errors.returncode == 0
        assert errors.steps("unknown-service")[0]["code"] == "Unimplemented"
        assert errors.steps("unknown-method")[0]["code"] == "Unimplemented"
    finally:
        assert daemon.stop() == 0
