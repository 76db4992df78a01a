"""A full state directory never leaks a VM: every write point of a pod's life fails in turn.

For each write CreateVM, StartVM and StopVM make, the disk fills up at that
write and stays full while Kata plays its sequence (CreateVM, StartVM, StopVM,
each answered or failed).  Then space is freed and one housekeeping pass runs:
no instance, no pod directory and no live record is left, and every failure
Kata saw for the full disk was RESOURCE_EXHAUSTED naming the state directory.
"""

from __future__ import annotations

import dataclasses
import errno
import threading
from pathlib import Path

import pytest

from cloud_api_adaptor.errors import NotFound, StateWriteError
from cloud_api_adaptor.fsutil import atomic_write
from cloud_api_adaptor.hypervisor.models import SandboxState
from cloud_api_adaptor.hypervisor.ports import NoPodNetwork
from cloud_api_adaptor.hypervisor.recovery import TOMBSTONE_SECONDS, prune_tombstones, resume_stalled
from cloud_api_adaptor.hypervisor.sandboxes import SandboxManager
from cloud_api_adaptor.hypervisor.status_map import to_rpc_error
from cloud_api_adaptor.hypervisor.store import SandboxStore
from cloud_api_adaptor.kata_client import kata_annotations
from cloud_api_adaptor.settings import Settings
from cloud_api_adaptor.testing.eventually import eventually
from cloud_api_adaptor.testing.fake_provider import FakeConfig, FakeProvider
from cloud_api_adaptor.testing.fakes import NullAgentChannel
from cloud_api_adaptor.ttrpc import Code

#: record writes of one pod's life: CreateVM 1, StartVM 3 (starting, instance id, running), StopVM 2
WRITES_PER_LIFECYCLE = 6
WRITES_STARTING_A_POD = 4


class Disk:
    """Record writes, counted; from write ``full_at`` on, ENOSPC until ``free()``."""

    def __init__(self, full_at: int | None = None) -> None:
        self.full_at = full_at
        self.writes = 0
        self._lock = threading.Lock()

    def write(self, path: Path, data: bytes) -> None:
        with self._lock:
            self.writes += 1
            full = self.full_at is not None and self.writes >= self.full_at
        if full:
            raise OSError(errno.ENOSPC, "No space left on device")
        atomic_write(path, data, sync_dir=False)

    def free(self) -> None:
        self.full_at = None


def manager_on(tmp: Path, disk: Disk, provider: FakeProvider, now: list[float]) -> SandboxManager:
    settings = dataclasses.replace(
        Settings(), state_dir=tmp / "state", pods_dir=tmp / "pods", node_name="n", cluster_id="c"
    )
    store = SandboxStore(settings.state_dir, write_file=disk.write)
    store.prepare()
    return SandboxManager(
        settings,
        provider,
        store,
        NullAgentChannel(),
        NoPodNetwork(),
        clock=lambda: now[0],
        delete_retry_delays=(0.01,),
    )


async def kata_sequence(manager: SandboxManager, sandbox_id: str) -> list[Exception]:
    """CreateVM, StartVM, StopVM as the shim sends them; the errors it saw."""
    seen: list[Exception] = []
    try:
        await manager.create_vm(sandbox_id, kata_annotations("web"), "")
    except Exception as exc:
        seen.append(exc)
        return seen  # the shim gives the sandbox up
    for call in (manager.start_vm, manager.stop_vm):
        try:
            await call(sandbox_id)
        except Exception as exc:
            seen.append(exc)
    return seen


def test_a_lifecycle_makes_the_expected_number_of_writes(tmp_path: Path) -> None:
    import asyncio

    disk = Disk()

    async def lifecycle() -> None:
        manager = manager_on(tmp_path, disk, FakeProvider(FakeConfig()), [1000.0])
        assert await kata_sequence(manager, "sb") == []
        await manager.aclose()

    asyncio.run(lifecycle())
    assert disk.writes == WRITES_PER_LIFECYCLE


@pytest.mark.asyncio
@pytest.mark.parametrize("full_at", range(1, WRITES_PER_LIFECYCLE + 1))
async def test_a_disk_that_fills_at_any_write_leaks_nothing_once_space_returns(
    full_at: int, tmp_path: Path
) -> None:
    disk = Disk(full_at)
    provider = FakeProvider(FakeConfig())
    now = [1000.0]
    manager = manager_on(tmp_path, disk, provider, now)
    try:
        seen = await kata_sequence(manager, "sb")
        # CreateVM and StartVM fail while their writes cannot be made; a StopVM whose VM is
        # gone succeeds (its tombstone is written later)
        assert bool(seen) is (full_at <= WRITES_STARTING_A_POD), seen
        for exc in seen:
            if isinstance(exc, NotFound):
                continue  # StopVM of a sandbox whose CreateVM failed
            error = to_rpc_error(exc)
            assert error is not None and error.code is Code.RESOURCE_EXHAUSTED, exc
            assert str(tmp_path / "state") in error.message
            assert isinstance(exc, StateWriteError)
        disk.free()
        await resume_stalled(manager)  # one housekeeping pass
        await eventually(lambda: not provider.instances, "every instance deleted")
        await eventually(
            lambda: (
                all(r.state in {SandboxState.STOPPED, SandboxState.FAILED} for r in manager.records())
                and not any(live.unsaved for live in manager.live_sandboxes())
            ),
            "every record settled and written",
        )
        assert not (tmp_path / "pods" / "sb").exists()
        on_disk = SandboxStore(tmp_path / "state").load_all()
        assert all(r.state in {SandboxState.STOPPED, SandboxState.FAILED} for r in on_disk)
        assert all(not r.instance_id for r in on_disk)
        now[0] += TOMBSTONE_SECONDS + 1
        await prune_tombstones(manager, now[0])
        assert [
            r for r in SandboxStore(tmp_path / "state").load_all() if r.state is SandboxState.STOPPED
        ] == []
    finally:
        await manager.aclose()
