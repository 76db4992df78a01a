"""Orphan cleanup: delete instances this node owns that no live sandbox accounts for.

Cloud first, then records (as Karpenter's garbage collector does): list the
instances tagged for this cluster and node, then drop those a live sandbox
claims.  What remains and is older than the grace period is deleted.  Instances
of other nodes are never touched: the owner tags include the node name.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from cloud_api_adaptor.errors import InstanceNotFound, ProviderError
from cloud_api_adaptor.hypervisor.recovery import prune_tombstones
from cloud_api_adaptor.hypervisor.sandboxes import SandboxManager
from cloud_api_adaptor.provider import TAG_SANDBOX, Provider

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScanResult:
    seen: int
    deleted: int
    kept_young: int
    failed: int


class OrphanReconciler:
    def __init__(
        self,
        provider: Provider,
        manager: SandboxManager,
        grace_period: float,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._sleep = sleep
        self._provider = provider
        self._manager = manager
        self._grace = grace_period
        self._clock = clock
        self._first_seen: dict[str, float] = {}

    async def scan_once(self) -> ScanResult:
        instances = await self._provider.list_instances(self._manager.owner_tags())
        live_ids = self._manager.live_instance_ids()
        claiming = self._manager.claiming_sandbox_ids()
        now = self._clock()
        deleted = young = failed = 0
        current: set[str] = set()
        for instance in instances:
            current.add(instance.id)
            if instance.id in live_ids or instance.tags.get(TAG_SANDBOX, "") in claiming:
                continue
            born = instance.created_at or self._first_seen.setdefault(instance.id, now)
            if now - born < self._grace:
                young += 1
                continue
            try:
                await self._provider.delete_instance(instance.id)
                deleted += 1
                logger.warning("deleted orphaned instance %s (%s)", instance.id, instance.name)
            except InstanceNotFound:
                deleted += 1
            except ProviderError as exc:
                failed += 1
                logger.error("could not delete orphaned instance %s: %s", instance.id, exc)
        self._first_seen = {k: v for k, v in self._first_seen.items() if k in current}
        result = ScanResult(seen=len(instances), deleted=deleted, kept_young=young, failed=failed)
        logger.info(
            "orphan scan: %d owned instances, %d orphans deleted, %d too young, %d failed",
            result.seen,
            result.deleted,
            result.kept_young,
            result.failed,
        )
        return result

    async def run(self, interval: float) -> None:
        """Housekeeping every ``interval``: the orphan scan, then forgetting old tombstones.

        A cloud error skips one scan; any other exception ends the loop, and the
        supervisor that runs it (``TaskSupervisor.keep_running``) logs, counts and
        restarts it with backoff.
        """
        while True:
            try:
                await self.scan_once()
            except ProviderError as exc:
                logger.error("orphan scan failed: %s", exc)
            await prune_tombstones(self._manager, self._clock())
            await self._sleep(interval)
