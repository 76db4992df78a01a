"""Instances of this cluster whose node no longer exists: deleted after a grace period.

The daemon's own orphan scan covers its node; a node that is gone (scaled
down, dead) has no daemon left to scan.  The provider lists the instances
carrying this cluster's owner tag; those whose node tag names no existing
Node are remembered when first seen that way and deleted once the node has
been missing for ``grace`` seconds (and the instance is at least that old,
when the cloud says when it was created): a node that is only being
re-registered, or an instance whose node object is not created yet, survives.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from cloud_api_adaptor.errors import AdaptorError
from cloud_api_adaptor.provider import TAG_CLUSTER, TAG_NODE, Provider

logger = logging.getLogger(__name__)

#: the node tag of a daemon started without NODE_NAME: no Node is named so, and such a daemon may well
#: be alive, so its instances are never taken for a gone node's
UNNAMED_NODE = "local"


class NodeOrphanSweeper:
    def __init__(
        self,
        provider: Provider,
        *,
        cluster_id: str,
        grace: float,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._provider = provider
        self._cluster_id = cluster_id or "default"
        self._grace = grace
        self._clock = clock
        self._wall = wall_clock
        self._missing_since: dict[str, float] = {}

    async def sweep(self, nodes: Iterable[str]) -> list[str]:
        """Delete what is due; returns the ids deleted.  Provider errors on one instance skip it."""
        existing = set(nodes)
        now = self._clock()
        instances = await self._provider.list_instances({TAG_CLUSTER: self._cluster_id})
        seen: set[str] = set()
        deleted: list[str] = []
        for instance in instances:
            node = instance.tags.get(TAG_NODE, "")
            if not node or node == UNNAMED_NODE or node in existing:
                continue
            seen.add(instance.id)
            since = self._missing_since.setdefault(instance.id, now)
            old_enough = instance.created_at is None or self._wall() - instance.created_at >= self._grace
            if now - since < self._grace or not old_enough:
                continue
            try:
                await self._provider.delete_instance(instance.id)
            except AdaptorError as exc:
                logger.warning(
                    "controller: orphan %s of gone node %s: delete failed: %s", instance.id, node, exc
                )
                continue
            logger.info("controller: deleted instance %s of gone node %s", instance.id, node)
            deleted.append(instance.id)
            seen.discard(instance.id)
        # forget instances that are gone or whose node came back
        self._missing_since = {k: v for k, v in self._missing_since.items() if k in seen}
        return deleted
