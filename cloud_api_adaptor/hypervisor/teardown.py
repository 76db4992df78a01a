"""Removing what a sandbox made: its pod network tunnel and its cloud instance.

Both steps are idempotent, so a caller that sees an error retries the whole
thing later, and the instance delete is attempted even when the tunnel could not
come down (a VM costs money, a stale tunnel link does not).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping

from cloud_api_adaptor.errors import InstanceNotFound
from cloud_api_adaptor.hypervisor.models import SandboxRecord, SandboxState
from cloud_api_adaptor.hypervisor.ports import PodNetworkPort
from cloud_api_adaptor.provider import Provider

logger = logging.getLogger(__name__)


class SandboxTeardown:
    """Deletes a sandbox's tunnel and instance; ``owner_tags(id)`` finds an instance never recorded."""

    def __init__(
        self,
        provider: Provider,
        network: PodNetworkPort,
        owner_tags: Callable[[str], Mapping[str, str]],
    ) -> None:
        self._provider = provider
        self._network = network
        self._owner_tags = owner_tags

    async def release(self, record: SandboxRecord) -> None:
        """Remove the sandbox's tunnel and instance; raise if either is still there."""
        failure: Exception | None = None
        if record.netns_path and record.pod_network is not None:
            try:
                await self._network.teardown(record.netns_path, record.pod_network)
            except Exception as exc:
                logger.error("tearing down the pod network of sandbox %s failed: %s", record.id, exc)
                failure = exc
        await self.delete_instances(record)
        if failure is not None:
            raise failure

    async def delete_instances(self, record: SandboxRecord) -> None:
        """Delete the sandbox's instance; if its id was never learnt, find it by owner tags."""
        ids = {record.instance_id} if record.instance_id else set()
        if not ids and record.state in {SandboxState.STARTING, SandboxState.STOPPING}:
            found = await self._provider.list_instances(self._owner_tags(record.id))
            ids = {i.id for i in found}
        for instance_id in ids:
            with contextlib.suppress(InstanceNotFound):
                await self._provider.delete_instance(instance_id)
            logger.info("deleted instance %s of sandbox %s", instance_id, record.id)
