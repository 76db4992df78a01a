"""The controller process: leader election, the reconcile loop, health and metrics.

Every ``reconcile_period`` the leader makes one pass: the PeerPods
(``peerpods``) and then the instances of gone nodes (``orphans``).  A pass
reads everything afresh from the API server and the provider, so a missed
event or a restart loses nothing; its cost is one list of pods, nodes and
PeerPods and one provider list per period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import httpx2
from aiohttp import web
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.resources.core_v1 import Node
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from cloud_api_adaptor.aio import TaskSupervisor
from cloud_api_adaptor.controller.leader import LeaderElector
from cloud_api_adaptor.controller.metrics import ControllerMetrics
from cloud_api_adaptor.controller.orphans import NodeOrphanSweeper
from cloud_api_adaptor.controller.peerpods import PeerPod, PeerPodReconciler
from cloud_api_adaptor.controller.settings import ControllerSettings
from cloud_api_adaptor.errors import AdaptorError
from cloud_api_adaptor.kube.api import KubeApi
from cloud_api_adaptor.provider import Provider

logger = logging.getLogger(__name__)

#: how long close() waits for a pass in progress and the Lease release
STOP_GRACE = 10.0


@dataclass
class Controller:
    settings: ControllerSettings
    client: AsyncClient
    provider: Provider
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    health_port: int = 0

    def __post_init__(self) -> None:
        s = self.settings
        self.metrics = ControllerMetrics(self.registry)
        self.identity = s.identity or f"{socket.gethostname()}-{id(self):x}"
        self.elector: LeaderElector | None = None
        if s.leader_elect:
            self.elector = LeaderElector(
                self.client,
                namespace=s.namespace,
                name=s.lease_name,
                identity=self.identity,
                lease_duration=s.lease_duration,
                renew_deadline=s.renew_deadline,
                retry_period=s.retry_period,
                on_change=lambda leading: self.metrics.leader.set(1 if leading else 0),
            )
        else:
            self.metrics.leader.set(1)
        self.api = KubeApi(self.client, qps=s.kube_qps, burst=s.kube_burst)
        self.peerpods = PeerPodReconciler(
            self.api, self.provider, provider_name=s.provider, cluster_id=s.cluster_id
        )
        self.sweeper = NodeOrphanSweeper(self.provider, cluster_id=s.cluster_id, grace=s.orphan_grace_period)
        self._supervisor = TaskSupervisor("controller")
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._wake = asyncio.Event()
        self._elector_task: asyncio.Task[None] | None = None

    @property
    def is_leader(self) -> bool:
        return self.elector is None or self.elector.is_leader

    async def start(self) -> None:
        if self.elector is not None:
            # run() survives API errors itself, and must not be restarted once it released the Lease
            self._elector_task = self._supervisor.spawn(
                self.elector.run(self._stopping), name="leader-election"
            )
        self._supervisor.keep_running(self._loop, name="reconcile")
        if self.settings.watch:
            self._supervisor.keep_running(self._watch, name="watch")
        if self.settings.health_port >= 0:
            await self._serve_health()

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            if self.elector is not None:
                await _first_of(self.elector.wait_leader(), self._stopping.wait())
                if self._stopping.is_set():
                    break
            self._wake.clear()
            self._idle.clear()
            try:
                await self.reconcile_once()
            finally:
                self._idle.set()
            await _first_of(self._stopping.wait(), self._wake.wait(), timeout=self.settings.reconcile_period)
        # keep_running restarts a loop that returns: park until close() cancels it
        await asyncio.Event().wait()

    async def _watch(self) -> None:
        """Wake the loop when a PeerPod starts being deleted or a Node goes: no need to wait a period."""

        async def ignore(_: list[Any]) -> None:
            return None

        async def peerpod_event(kind: str, obj: Any) -> None:
            if kind == "DELETED" or (obj.metadata and obj.metadata.deletionTimestamp is not None):
                self._wake.set()

        async def node_event(kind: str, _: Any) -> None:
            if kind == "DELETED":
                self._wake.set()

        await asyncio.gather(
            self.api.list_then_watch(PeerPod, ignore, peerpod_event, namespace="*"),
            self.api.list_then_watch(Node, ignore, node_event),
        )

    async def reconcile_once(self) -> bool:
        """One pass; errors are logged and counted, the next pass tries again."""
        started = time.perf_counter()
        try:
            outcomes = await self.peerpods.reconcile_all()
            for outcome, count in outcomes.items():
                self.metrics.peerpods.labels(outcome).inc(count)
            if self.settings.orphan_scan:
                _, nodes = await self.peerpods.live_state()
                deleted = await self.sweeper.sweep(nodes)
                self.metrics.orphans_deleted.inc(len(deleted))
        except (ApiError, httpx2.HTTPError, AdaptorError) as exc:
            logger.warning("controller: reconcile pass failed: %s", exc)
            self.metrics.passes.labels("error").inc()
            return False
        self.metrics.passes.labels("ok").inc()
        self.metrics.pass_seconds.observe(time.perf_counter() - started)
        self.metrics.last_pass.set_to_current_time()
        return True

    async def _serve_health(self) -> None:
        async def ok(_: web.Request) -> web.Response:
            return web.Response(text="ok")

        async def metrics(_: web.Request) -> web.Response:
            return web.Response(
                body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
            )

        app = web.Application()
        app.router.add_get("/healthz", ok)
        app.router.add_get("/readyz", ok)
        app.router.add_get("/metrics", metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.health_address, self.settings.health_port)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.base_events.Server)
        self.health_port = int(server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Let a pass in progress finish and the Lease be released (bounded), then cancel what is left.

        Cancelling a request mid-connect would leave its socket behind, and a pass cut short would
        only be redone by the next leader; so stopping is cooperative first.
        """
        self._stopping.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), STOP_GRACE)
        if self._elector_task is not None:
            await asyncio.wait({self._elector_task}, timeout=STOP_GRACE)
        await self._supervisor.aclose()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


async def _first_of(*waits: Coroutine[Any, Any, Any], timeout: float | None = None) -> None:
    """Return when the first of ``waits`` finishes (or after ``timeout``); cancel the others."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def run_controller(
    settings: ControllerSettings, client: AsyncClient, provider: Provider, stop: asyncio.Event
) -> None:
    controller = Controller(settings, client, provider)
    try:
        await controller.start()
        await stop.wait()
    finally:
        await asyncio.shield(controller.close())
