"""The daemon's Kubernetes side as one object: the sandbox hooks, and the loops behind them.

``build`` returns None when the API is off (``KUBERNETES_API=off``, or ``auto`` outside a
cluster): the daemon then runs exactly as without this package, which it never imports.
The loops run under their own supervisor, started before the hypervisor socket accepts
(StartVM may wait for a PeerPod), stopped after the sandboxes are closed.
"""

from __future__ import annotations

import asyncio
import logging
import socket

from cloud_api_adaptor.aio import TaskSupervisor
from cloud_api_adaptor.hypervisor.models import SandboxRecord
from cloud_api_adaptor.kube import node
from cloud_api_adaptor.kube.api import KubeApi, KubeError
from cloud_api_adaptor.kube.config import load_config, wanted
from cloud_api_adaptor.kube.deletions import PeerPodDeletions
from cloud_api_adaptor.kube.events import PodEvents
from cloud_api_adaptor.kube.peerpods import PeerPodOutbox
from cloud_api_adaptor.settings import Settings

logger = logging.getLogger(__name__)

ADVERTISE_DELAYS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
REQUEST_TIMEOUT = 10.0
SHUTDOWN_CHECK_TIMEOUT = 10.0


class KubeIntegration:
    """Implements ``hypervisor.ports.SandboxHooks`` on the Kubernetes API."""

    def __init__(self, api: KubeApi, settings: Settings) -> None:
        self.api = api
        self._settings = settings
        kube = settings.kubernetes
        self.outbox = PeerPodOutbox(api, settings.provider, settings.node_name, kube.peerpod_create_wait)
        self.events = PodEvents(api, settings.node_name)
        self.deletions = PeerPodDeletions(api, settings.node_name)
        self.owner = kube.pod_uid or f"{socket.gethostname()}-{id(self):x}"
        self._supervisor = TaskSupervisor("kubernetes")
        self.capacity_advertised = asyncio.Event()

    # ---- SandboxHooks ----------------------------------------------------------------------------

    def changed(self, record: SandboxRecord) -> None:
        self.outbox.changed(record)

    async def before_create(self, record: SandboxRecord) -> None:
        if not await self.outbox.wait_applied(record):
            logger.warning(
                "sandbox %s: creating the VM before its PeerPod exists (the API server is slow or away); "
                "the PeerPod follows when it answers",
                record.id,
            )

    def started(self, record: SandboxRecord, seconds: float) -> None:
        self.events.started(record, seconds)

    def start_failed(self, record: SandboxRecord, error: BaseException, seconds: float) -> None:
        self.events.start_failed(record, error, seconds)

    def can_forget(self, record: SandboxRecord) -> bool:
        return self.outbox.can_forget(record)

    # ---- hypervisor.abandonment.ClusterView ---------------------------------------------------

    def pod_deleted(self, record: SandboxRecord) -> bool:
        """The cluster is deleting the sandbox's PeerPod: its pod object is gone."""
        return self.deletions.deleting(record)

    # ---- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        self._supervisor.keep_running(self.outbox.run, name="peerpod-outbox")
        self._supervisor.keep_running(self.events.run, name="pod-events")
        kube = self._settings.kubernetes
        if not self._settings.node_name:
            logger.warning(
                "NODE_NAME is not set: not advertising %s on the node, not watching PeerPods", node.RESOURCE
            )
            return
        self._supervisor.keep_running(self.deletions.run, name="peerpod-deletions")
        if kube.limit_per_node < 0:
            return
        self._supervisor.spawn(self._advertise(kube.limit_per_node), name="node-capacity")

    async def _advertise(self, limit: int) -> None:
        """At start, until it succeeds: an API server down at start comes back, and a refusal
        (403 while RBAC is applied after the DaemonSet, or an API server whose authorizer
        has not caught up after a restart) may pass too."""
        attempt = 0
        while True:
            try:
                await node.advertise(self.api, self._settings.node_name, limit, self.owner)
            except KubeError as exc:
                delay = ADVERTISE_DELAYS[min(attempt, len(ADVERTISE_DELAYS) - 1)]
                attempt += 1
                log = logger.warning if exc.temporary else logger.error
                log("advertising node capacity: %s; again in %.0f s", exc, delay)
                await asyncio.sleep(delay)
                continue
            self.capacity_advertised.set()
            return

    async def aclose(self, *, final: bool = False) -> None:
        """Stop the loops; on the final shutdown (not a hand-over) withdraw the capacity if uninstalled."""
        await self._supervisor.aclose()
        try:
            if final and self.capacity_advertised.is_set():
                async with asyncio.timeout(SHUTDOWN_CHECK_TIMEOUT):
                    await self._withdraw_if_uninstalled()
        except (KubeError, TimeoutError) as exc:
            logger.warning("leaving the node capacity in place: %s", exc or "the API server did not answer")
        finally:
            await self.api.aclose()

    async def _withdraw_if_uninstalled(self) -> None:
        kube, node_name = self._settings.kubernetes, self._settings.node_name
        if not (kube.pod_name and kube.pod_namespace):
            return
        if not await node.uninstalling(self.api, kube.pod_namespace, kube.pod_name):
            logger.info("not uninstalled: %s stays on node %s", node.RESOURCE, node_name)
            return
        if await node.withdraw(self.api, node_name, self.owner):
            logger.info("uninstalled: withdrew %s from node %s", node.RESOURCE, node_name)


def build(settings: Settings) -> KubeIntegration | None:
    """The integration, or None when the daemon does not use the Kubernetes API."""
    if not wanted(settings.kubernetes):
        return None
    import httpx2
    from lightkube import AsyncClient

    config = load_config(settings.kubernetes)
    client = AsyncClient(config, field_manager="cloud-api-adaptor", timeout=httpx2.Timeout(REQUEST_TIMEOUT))
    api = KubeApi(client, qps=settings.kubernetes.qps, burst=settings.kubernetes.burst)
    return KubeIntegration(api, settings)
