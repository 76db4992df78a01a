"""Stopping sandboxes whose pod is gone, though no StopVM ever came.

The shim sends StopVM once, on a fresh connection; if it finds no daemon (a
restart, a crash, a hand-over gap) or dies itself, nobody asks again, and the
VM would run forever.  A StopVM that could not be delivered must never be
needed for cleanup, so the daemon looks for the pod's own traces instead:

- its CRI network namespace (``networkNamespacePath`` of CreateVM) no longer
  exists: the CRI deletes it with the pod sandbox;
- its shim-side agent connection closed and no StopVM followed within
  ``ABANDONED_SANDBOX_GRACE``: the Kata shim holds one agent connection for the
  pod's whole life, so a pod whose connection is gone is dead;
- (with the Kubernetes integration) the cluster has been deleting its PeerPod
  for ``ABANDONED_SANDBOX_GRACE``: the PeerPod's owner, the pod object, is gone
  (``kube.deletions``).  The grace lets a pod that terminates gracefully under
  foreground deletion stop the usual way.

``abandonment`` is the pure decision; ``stop_abandoned_at_recovery`` and
``AbandonmentWatch`` carry it out at start-up and in housekeeping.  What is
deliberately NOT evidence: a sandbox nobody has connected to since this daemon
started (after a restart without the fd-keeper the shim cannot reconnect, but a
client such as the CI's simulators may hold a pod without a connection), and a
namespace directory the daemon cannot see at all (a mis-mounted DaemonSet must
not stop every pod).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from cloud_api_adaptor.hypervisor.models import SandboxRecord, SandboxState
from cloud_api_adaptor.hypervisor.sandboxes import LiveSandbox, SandboxManager

logger = logging.getLogger(__name__)

#: states in which a sandbox can be abandoned; STARTING and STOPPING are finished by other housekeeping
_WATCHED = frozenset({SandboxState.CREATED, SandboxState.RUNNING, SandboxState.FAILED})


class Verdict(enum.Enum):
    KEEP = "keep"
    NETNS_GONE = "its pod network namespace no longer exists"
    SHIM_GONE = "its shim connection closed and no StopVM followed"
    POD_DELETED = "the cluster is deleting its PeerPod: its pod object is gone"


@dataclass(frozen=True)
class Evidence:
    """What the daemon can observe about a sandbox's pod."""

    #: None: the sandbox has no namespace path, or its directory is not visible to the daemon
    netns_exists: bool | None = None
    #: a shim-side connection was seen since this daemon (or the proxy) started
    shim_seen: bool = False
    shim_connections: int = 0
    #: when the watch first saw no shim connection after one had been seen (monotonic seconds)
    shim_gone_since: float | None = None
    #: a StopVM (or another call) is working on the sandbox right now
    busy: bool = False
    #: since when the cluster has been deleting the sandbox's PeerPod (monotonic seconds)
    pod_deleted_since: float | None = None


def abandonment(record: SandboxRecord, evidence: Evidence, now: float, grace: float) -> Verdict:
    """Whether a sandbox's pod is gone; ``grace`` <= 0 disables the connection rule.

    A deleted PeerPod counts after ``grace`` (at once when ``grace`` <= 0).
    """
    if record.state not in _WATCHED or evidence.busy:
        return Verdict.KEEP
    if record.netns_path and evidence.netns_exists is False:
        return Verdict.NETNS_GONE
    if evidence.pod_deleted_since is not None and now - evidence.pod_deleted_since >= max(grace, 0.0):
        return Verdict.POD_DELETED
    if (
        record.state is SandboxState.RUNNING
        and grace > 0
        and evidence.shim_seen
        and evidence.shim_connections == 0
        and evidence.shim_gone_since is not None
        and now - evidence.shim_gone_since >= grace
    ):
        return Verdict.SHIM_GONE
    return Verdict.KEEP


def netns_exists(path: str) -> bool | None:
    """True/False for a namespace path whose directory the daemon can see; None when it cannot tell."""
    if not path:
        return None
    netns = Path(path)
    try:
        if netns.exists():
            return True
        return False if netns.parent.is_dir() else None
    except OSError:
        return None


@runtime_checkable
class CountsShimConnections(Protocol):
    """An agent proxy that counts its shim-side connections (``AgentProxy.stats``)."""

    @property
    def stats(self) -> _ConnectionCounters: ...


class ClusterView(Protocol):
    """What the cluster says of a sandbox's pod (``kube.integration.KubeIntegration``)."""

    def pod_deleted(self, record: SandboxRecord) -> bool: ...


class _ConnectionCounters(Protocol):
    connections_total: int
    connections_active: int


async def _stop(manager: SandboxManager, live: LiveSandbox, verdict: Verdict) -> None:
    record = live.record
    logger.warning(
        "sandbox %s of pod %s/%s is abandoned (%s): stopping it and deleting its VM",
        record.id,
        record.pod_namespace,
        record.pod_name,
        verdict.value,
    )
    try:
        await manager.stop_vm(record.id)
    except Exception as exc:  # the delete is retried in the background by the manager
        logger.error("stopping abandoned sandbox %s failed: %s", record.id, exc)


async def stop_abandoned_at_recovery(manager: SandboxManager, live: LiveSandbox) -> bool:
    """At start-up, before restoring: stop the sandbox if its namespace is gone; True if it did."""
    evidence = Evidence(netns_exists=netns_exists(live.record.netns_path))
    verdict = abandonment(live.record, evidence, now=0.0, grace=0.0)
    if verdict is Verdict.KEEP:
        return False
    await _stop(manager, live, verdict)
    return True


class AbandonmentWatch:
    """Housekeeping: remembers since when each sandbox has had no shim connection."""

    def __init__(
        self,
        manager: SandboxManager,
        grace: float,
        clock: Callable[[], float] = time.monotonic,
        cluster: ClusterView | None = None,
    ) -> None:
        self._manager = manager
        self._grace = grace
        self._clock = clock
        self._cluster = cluster
        self._gone_since: dict[str, float] = {}
        self._deleted_since: dict[str, float] = {}

    def evidence(self, live: LiveSandbox, now: float) -> Evidence:
        record = live.record
        proxy = live.proxy
        seen, active = False, 0
        if isinstance(proxy, CountsShimConnections):
            seen, active = proxy.stats.connections_total > 0, proxy.stats.connections_active
        if seen and active == 0:
            since = self._gone_since.setdefault(record.id, now)
        else:
            self._gone_since.pop(record.id, None)
            since = None
        deleted_since = None
        if self._cluster is not None and self._cluster.pod_deleted(record):
            deleted_since = self._deleted_since.setdefault(record.id, now)
        else:
            self._deleted_since.pop(record.id, None)
        return Evidence(
            netns_exists=netns_exists(record.netns_path),
            shim_seen=seen,
            shim_connections=active,
            shim_gone_since=since,
            busy=not self._manager.is_idle(live),
            pod_deleted_since=deleted_since,
        )

    async def scan_once(self) -> int:
        """Stop every abandoned sandbox; returns how many."""
        now = self._clock()
        stopped = 0
        live_ids = set()
        for live in self._manager.live_sandboxes():
            live_ids.add(live.record.id)
            verdict = abandonment(live.record, self.evidence(live, now), now, self._grace)
            if verdict is not Verdict.KEEP:
                await _stop(self._manager, live, verdict)
                self._gone_since.pop(live.record.id, None)
                self._deleted_since.pop(live.record.id, None)
                stopped += 1
        for table in (self._gone_since, self._deleted_since):
            for gone in set(table) - live_ids:
                del table[gone]
        return stopped

    async def run(self, interval: float) -> None:
        """Scan every ``interval`` seconds, forever (run under ``TaskSupervisor.keep_running``)."""
        while True:
            await self.scan_once()
            await asyncio.sleep(interval)


def scan_interval(grace: float) -> float:
    """How often housekeeping looks: a quarter of the grace period, between 0.5 s and 30 s."""
    return min(max(grace / 4, 0.5), 30.0)
