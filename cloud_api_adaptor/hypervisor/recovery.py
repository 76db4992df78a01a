"""What a daemon does with the sandboxes it finds on disk, and the periodic housekeeping.

The decision for each record is a pure function of its state (``recovery_action``);
``recover`` and ``prune_tombstones`` carry the decisions out through the sandbox
manager's primitives.  A VM outlives the daemon, so a restart resumes running
sandboxes (same agent socket), undoes StartVMs the shim already saw fail, and
finishes deletes that were in flight.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable

from cloud_api_adaptor.hypervisor.abandonment import stop_abandoned_at_recovery
from cloud_api_adaptor.hypervisor.models import SandboxRecord, SandboxState
from cloud_api_adaptor.hypervisor.sandboxes import SandboxManager

logger = logging.getLogger(__name__)

#: how long a stopped sandbox is remembered, so that a repeated StopVM still succeeds
TOMBSTONE_SECONDS = 3600.0


class RecoveryAction(enum.Enum):
    """What to do with a sandbox found on disk at start-up."""

    NOTHING = "nothing"  # CREATED, FAILED, STOPPED: no cloud resource is in flight
    RESTORE = "restore"  # RUNNING: listen on its agent socket again, re-create its tunnel
    UNDO_START = "undo-start"  # STARTING: the daemon died mid-StartVM and the shim saw it fail
    FINISH_DELETE = "finish-delete"  # STOPPING: a delete was in flight or being retried


_ACTIONS = {
    SandboxState.CREATED: RecoveryAction.NOTHING,
    SandboxState.STARTING: RecoveryAction.UNDO_START,
    SandboxState.RUNNING: RecoveryAction.RESTORE,
    SandboxState.FAILED: RecoveryAction.NOTHING,
    SandboxState.STOPPING: RecoveryAction.FINISH_DELETE,
    SandboxState.STOPPED: RecoveryAction.NOTHING,
}


def recovery_action(record: SandboxRecord) -> RecoveryAction:
    return _ACTIONS[record.state]


def is_forgettable(record: SandboxRecord, now: float, max_age: float = TOMBSTONE_SECONDS) -> bool:
    """A tombstone older than ``max_age``: a repeated StopVM is long over."""
    return record.state is SandboxState.STOPPED and record.updated_at <= now - max_age


async def recover(
    manager: SandboxManager,
    records: list[SandboxRecord],
    on_failure: Callable[[str, BaseException], None] | None = None,
) -> None:
    """Resume or undo every sandbox found on disk (called once, before the socket opens).

    A sandbox whose pod is gone (its network namespace was deleted while no
    daemon ran) is stopped instead of restored (``hypervisor.abandonment``).

    One sandbox that cannot be recovered (its socket cannot be bound, its cloud
    call fails, a bug) is logged and reported to ``on_failure``; the others and
    the daemon's start go on.  Its record stays, so StopVM and housekeeping still
    find it.
    """
    for record in records:
        live = manager.adopt(record)
        action = recovery_action(record)
        try:
            # a pod that died while no daemon listened sent a StopVM nobody got: stop it now
            watched = action in {RecoveryAction.RESTORE, RecoveryAction.NOTHING}
            if watched and await stop_abandoned_at_recovery(manager, live):
                continue
            if action is RecoveryAction.RESTORE:
                await manager.restore_running(live)
            elif action is RecoveryAction.UNDO_START:
                await manager.undo_start(live, RuntimeError("daemon restarted during StartVM"))
            elif action is RecoveryAction.FINISH_DELETE:
                manager.resume_delete(live)
        except Exception as exc:
            logger.error("recovering sandbox %s (%s) failed", record.id, action.value, exc_info=exc)
            if on_failure is not None:
                on_failure(record.id, exc)


async def prune_tombstones(manager: SandboxManager, now: float) -> int:
    """Forget stopped sandboxes older than an hour (memory and disk)."""
    pruned = 0
    for live in manager.live_sandboxes():
        if is_forgettable(live.record, now) and await manager.forget(live):
            pruned += 1
    return pruned


async def resume_stalled(manager: SandboxManager) -> int:
    """Housekeeping: finish what nobody is working on any more; returns how many sandboxes it touched.

    - a STARTING sandbox with no StartVM running (its undo could not even begin,
      e.g. the disk was full) is undone: its instance deleted;
    - a STOPPING sandbox with no delete being retried gets its delete retried;
    - a record a full disk kept in memory only is written once there is space.
    A StopVM that failed for the caller therefore never leaves a VM behind.
    """
    touched = 0
    for live in manager.live_sandboxes():
        if not manager.is_idle(live):
            continue
        state, unsaved = live.record.state, live.unsaved
        if state not in {SandboxState.STARTING, SandboxState.STOPPING} and not unsaved:
            continue
        touched += 1
        try:
            if state is SandboxState.STARTING:
                await manager.undo_start(live, RuntimeError("StartVM left unfinished"))
            elif state is SandboxState.STOPPING:
                manager.resume_delete(live)
            if live.unsaved:
                await manager.write_unsaved(live)
        except Exception as exc:
            logger.warning("housekeeping of sandbox %s failed: %s", live.record.id, exc)
    return touched
