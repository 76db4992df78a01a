"""Issue 10, item 4: a sandbox whose pod is gone is stopped and its VM deleted, though no StopVM came.

The first test uses the tunnel test bed (real network namespaces, the daemon in
the node namespace, netns-mode local VMs); the second a loopback daemon.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud_api_adaptor import kata_client as kata
from cloud_api_adaptor.hypervisor.models import SandboxRecord, SandboxState
from cloud_api_adaptor.podnetwork import delete_named_netns
from cloud_api_adaptor.testing.eventually import eventually

from .daemon_proc import DaemonProcess
from .test_lifecycle_local import new_id, vm_processes
from .test_tunnel_e2e import NodeDaemon, bed, daemon, leftovers, run_pod  # noqa: F401 - bed and daemon are fixtures


def alive(pid: int) -> bool:
    """Running (a zombie nobody reaped yet has no command line)."""
    try:
        return bool(Path(f"/proc/{pid}/cmdline").read_bytes())
    except OSError:
        return False


@pytest.mark.root
@pytest.mark.asyncio
async def test_a_pod_whose_shim_vanished_while_the_daemon_was_down_is_stopped_after_restart(
    daemon: NodeDaemon,  # noqa: F811 - the fixture
) -> None:
    bed_ = daemon.bed
    gone = await run_pod(daemon, bed_, "pod-a")
    kept = await run_pod(daemon, bed_, "pod-b")
    gone_vm, kept_vm = daemon.vm_of(gone), daemon.vm_of(kept)

    daemon.kill9()
    # The CRI removed the pod while no daemon listened: its namespace is gone, its StopVM never arrived.
    await delete_named_netns(f"{bed_.prefix}-pod-a")
    del bed_.paths["pod-a"]
    await daemon.start()

    # Recovery stopped it before serving: VM deleted, record a tombstone; the other pod runs on.
    assert daemon.sandbox(gone).state is SandboxState.STOPPED
    assert [vm["sandbox_id"] for vm in daemon.vm_records()] == [kept]
    assert not alive(gone_vm["pid"]) and alive(kept_vm["pid"])
    assert daemon.sandbox(kept).state is SandboxState.RUNNING

    await kata.stop_vm(daemon.socket, kept)
    assert await leftovers(bed_, {gone_vm["netns"], kept_vm["netns"]}) == []
    assert daemon.vm_records() == []


def record_of(d: DaemonProcess, sid: str) -> SandboxRecord | None:
    path = d.state_dir / "sandboxes" / f"{sid}.json"
    return SandboxRecord.from_json(path.read_bytes()) if path.exists() else None


@pytest.mark.asyncio
async def test_a_pod_whose_shim_connection_closed_without_stop_vm_is_stopped_after_the_grace_period(
    short_tmp: Path,
) -> None:
    d = DaemonProcess(short_tmp, {"ABANDONED_SANDBOX_GRACE": "1s"})
    d.start()
    try:
        left, idle = new_id(), new_id()
        for sid in (left, idle):
            await kata.create_vm(d.socket, sid, kata.kata_annotations(f"pod-{sid[:8]}"))
            await kata.start_vm(d.socket, sid, timeout=60)
        # The shim's one agent connection ends (the shim died) and no StopVM follows.
        agent = await kata.AgentClient.connect(d.pods_dir / left / "agent.ttrpc")
        assert await agent.check() == 1
        await agent.aclose()

        def left_stopped() -> bool:
            record = record_of(d, left)
            return record is not None and record.state is SandboxState.STOPPED

        await eventually(left_stopped, "the abandoned sandbox stopped", timeout=60)
        # The sandbox nobody connected to since it started is not evidence of anything: it runs on.
        idle_record = record_of(d, idle)
        assert idle_record is not None and idle_record.state is SandboxState.RUNNING
        assert not (d.pods_dir / left).exists()
        await kata.stop_vm(d.socket, idle)
        assert vm_processes(d.root) == []
        assert "is abandoned (its shim connection closed and no StopVM followed)" in d.log.read_text()
        await kata.stop_vm(d.socket, left)  # a late StopVM still succeeds (tombstone)
    finally:
        d.stop()
