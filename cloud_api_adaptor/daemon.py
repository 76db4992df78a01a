"""The composition root: builds every object once, runs the servers, shuts down in stages.

Start-up order: provider (fails loudly on bad config), instance-type catalogue,
durable store, agent channel (TLS material), sandbox recovery, then the ttrpc
socket (and the optional gRPC socket), then the probe turns ready, then the
orphan reconciler.  Shutdown reverses it: stop accepting, drain in-flight calls,
stop background work, close proxies.  VMs and records stay for the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from prometheus_client import CollectorRegistry

from cloud_api_adaptor.agent_metrics import AgentChannelCollector, AgentCounters
from cloud_api_adaptor.aio import TaskSupervisor
from cloud_api_adaptor.channel import build_agent_channel
from cloud_api_adaptor.fsutil import make_private_dirs
from cloud_api_adaptor.grpcfront import GrpcFront
from cloud_api_adaptor.handover import (
    HANDOVER_SERVICE,
    HandoverListener,
    StateLock,
    detach_proxies,
    handover_service,
    pass_sockets,
    take_over,
)
from cloud_api_adaptor.hypervisor.abandonment import AbandonmentWatch, scan_interval
from cloud_api_adaptor.hypervisor.planning import validate_global_initdata
from cloud_api_adaptor.hypervisor.ports import LazyPodNetwork, PodNetworkPort
from cloud_api_adaptor.hypervisor.recovery import recover
from cloud_api_adaptor.hypervisor.sandboxes import SandboxManager
from cloud_api_adaptor.hypervisor.service import HypervisorService, add_grpc_services, ttrpc_services
from cloud_api_adaptor.hypervisor.status_map import to_rpc_error
from cloud_api_adaptor.hypervisor.store import SandboxStore
from cloud_api_adaptor.metrics import Metrics
from cloud_api_adaptor.plugins import load_plugin
from cloud_api_adaptor.probe import ProbeServer
from cloud_api_adaptor.provider import Provider, ProviderContext
from cloud_api_adaptor.reconciler import OrphanReconciler
from cloud_api_adaptor.settings import Settings
from cloud_api_adaptor.transport.custody import SocketCustody
from cloud_api_adaptor.transport.fdpass import bind_unix_listener
from cloud_api_adaptor.transport.keeper_link import open_keeper
from cloud_api_adaptor.ttrpc import Server

if TYPE_CHECKING:
    from cloud_api_adaptor.kube.integration import KubeIntegration

logger = logging.getLogger(__name__)

DRAIN_SECONDS = 10.0
HANDOVER_TIMEOUT = 120.0


def provider_context(settings: Settings) -> ProviderContext:
    return ProviderContext(
        node_name=settings.node_name or "local",
        cluster_id=settings.cluster_id or "default",
        state_dir=settings.state_dir,
        work_dir=settings.state_dir / "providers" / settings.provider,
        forwarder_port=settings.forwarder_port,
    )


def build_provider(settings: Settings, provider_config: Any) -> Provider:
    """The configured provider, with its work directory (created 0700) ready."""
    plugin = load_plugin(settings.provider)
    context = provider_context(settings)
    make_private_dirs(context.work_dir)
    return plugin.build(provider_config, context)


@dataclass
class Daemon:
    """Handles to a running daemon (for tests, the demo and benchmarks)."""

    settings: Settings
    provider: Provider
    manager: SandboxManager
    probe: ProbeServer
    ttrpc: Server
    grpc_server: GrpcFront | None
    supervisor: TaskSupervisor
    registry: CollectorRegistry
    store: SandboxStore
    lock: StateLock
    handover_requested: asyncio.Event
    custody: SocketCustody
    handover_listener: HandoverListener
    #: the Kubernetes side (PeerPods, node capacity, pod events); None when KUBERNETES_API is off
    kube: KubeIntegration | None = None
    #: the successor's hand-over connection, once one asked
    successor: socket.socket | None = None

    def _successor_asked(self, peer: socket.socket) -> None:
        logger.warning("a new cloud-api-adaptor asked for this node's sockets: handing over")
        self.successor = peer
        self.handover_requested.set()

    async def aclose(self, *, final: bool = False) -> None:
        """Staged shutdown: listeners, in-flight calls, background work, proxies, provider, lock.

        Idempotent; also what a hand-over runs before the old daemon goes idle.  ``final``:
        no successor took over (the node capacity is withdrawn if this is an uninstall).
        With a successor (hand-over) or a keeper, the shim-facing sockets are
        passed on or left to the keeper: no socket file disappears, no shim
        connection sees EOF (docs/survival.md).
        """
        if not self.lock.held:
            return
        self.ttrpc.close()
        if self.grpc_server is not None:
            await self.grpc_server.stop(DRAIN_SECONDS)
            if not self.custody.retains and self.successor is None:
                self.custody.release_listener(self.grpc_server.public)
                with contextlib.suppress(FileNotFoundError):
                    self.grpc_server.public.unlink()
        await self.ttrpc.wait_closed(DRAIN_SECONDS)
        await self.supervisor.aclose()
        self.handover_listener.close()
        successor, self.successor = self.successor, None
        keep = successor is not None or self.custody.retains
        if keep:
            handed = await detach_proxies(self.manager, reclaim=successor is not None)
            try:
                if successor is not None:
                    await asyncio.to_thread(pass_sockets, successor, self.custody, handed)
                    self.custody.forget_keeper()  # the successor keeps them with its own keeper
                else:
                    for conn in handed:  # each session's state, for the next daemon to resume
                        self.custody.leave(conn)
            except OSError as exc:
                logger.error("passing the sockets to the new daemon failed: %s", exc)
            finally:
                for conn in handed:
                    conn.sock.close()
                if successor is not None:
                    successor.close()
        await self.manager.aclose()
        if self.kube is not None:
            await self.kube.aclose(final=final)
        await asyncio.to_thread(self.store.close)
        await self.provider.aclose()
        await self.probe.aclose()
        if not keep:
            self.custody.release_listener(self.settings.socket)
            with contextlib.suppress(FileNotFoundError):
                self.settings.socket.unlink()
        self.custody.close()
        self.lock.release()


async def start_daemon(
    settings: Settings,
    provider_config: Any,
    *,
    network: PodNetworkPort | None = None,
    provider: Provider | None = None,
) -> Daemon:
    """Build and start everything; the hypervisor socket accepts when this returns."""
    validate_global_initdata(settings.initdata)
    lock = StateLock(settings.state_dir)
    inventory = await take_over(lock, settings.socket, HANDOVER_TIMEOUT)
    keeper, kept = await asyncio.to_thread(open_keeper, settings.fd_keeper_socket)
    inventory.merge(kept)
    custody = SocketCustody(inventory, keeper)
    try:
        return await _start_locked(settings, provider_config, lock, network, provider, custody)
    except BaseException:
        custody.close()
        lock.release()
        raise


async def _start_locked(
    settings: Settings,
    provider_config: Any,
    lock: StateLock,
    network: PodNetworkPort | None,
    provider: Provider | None,
    custody: SocketCustody,
) -> Daemon:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    handover_requested = asyncio.Event()
    probe = ProbeServer("127.0.0.1", settings.probe_port, registry)
    await probe.start()
    if provider is None:
        provider = await asyncio.to_thread(build_provider, settings, provider_config)
    store = SandboxStore(settings.state_dir)
    grpc_server: GrpcFront | None = None
    manager: SandboxManager | None = None
    kube: KubeIntegration | None = None
    try:
        kube = _build_kube(settings)
        catalogue = tuple(await provider.describe_instance_types())
        store.prepare()
        channel = await asyncio.to_thread(build_agent_channel, settings, custody)
        manager = SandboxManager(
            settings,
            provider,
            store,
            channel,
            network or LazyPodNetwork(functools.partial(_build_pod_network, settings, provider)),
            catalogue,
            observer=metrics,
            hooks=kube,
        )
        registry.register(AgentChannelCollector(functools.partial(_agent_proxy_stats, manager)))
        if kube is not None:
            metrics.track_outbox(kube.outbox.pending)
            kube.start()
        records = await asyncio.to_thread(store.load_all)
        metrics.records_quarantined(len(store.quarantined))
        await recover(manager, records, on_failure=metrics.recovery_failed)
        grpc_server = await _start_grpc(settings, manager, custody)
        server = Server(error_translator=to_rpc_error)
        for name, methods in ttrpc_services(HypervisorService(manager)).items():
            server.add_service(name, methods)
        server.add_service(HANDOVER_SERVICE, handover_service(handover_requested.set))
        listener = custody.take_listener(settings.socket) or bind_unix_listener(settings.socket, 0o600)
        custody.keep_listener(settings.socket, listener)
        custody.discard_unclaimed()  # passed sockets of sandboxes stopped meanwhile
        await server.start_on(listener)
        logger.info("ttrpc server listening on %s", settings.socket)
    except BaseException:
        if grpc_server is not None:
            await grpc_server.stop(0)
        if manager is not None:
            await manager.aclose()
        if kube is not None:
            await kube.aclose()
        store.close()
        await provider.aclose()
        await probe.aclose()
        raise
    probe.set_ready()
    supervisor = TaskSupervisor("daemon", on_failure=metrics.task_failed)
    handover_listener = HandoverListener(settings.state_dir, lambda _peer: None)
    reconciler = OrphanReconciler(provider, manager, settings.orphan_grace_period)
    supervisor.keep_running(
        functools.partial(reconciler.run, settings.orphan_scan_interval), name="housekeeping"
    )
    abandoned = AbandonmentWatch(manager, settings.abandoned_sandbox_grace, cluster=kube)
    supervisor.keep_running(
        functools.partial(abandoned.run, scan_interval(settings.abandoned_sandbox_grace)),
        name="abandoned-sandboxes",
    )
    logger.info(
        "cloud-api-adaptor serving on %s (provider %s, %d sandboxes recovered)",
        settings.socket,
        settings.provider,
        len(manager.records()),
    )
    daemon = Daemon(
        settings,
        provider,
        manager,
        probe,
        server,
        grpc_server,
        supervisor,
        registry,
        store,
        lock,
        handover_requested,
        custody,
        handover_listener,
        kube,
    )
    handover_listener.on_request = daemon._successor_asked
    handover_listener.start(supervisor)
    return daemon


def _agent_proxy_stats(manager: SandboxManager) -> Iterator[tuple[object, AgentCounters]]:
    """The counters of every live agent proxy (for ``AgentChannelCollector``)."""
    for live in manager.live_sandboxes():
        stats = getattr(live.proxy, "stats", None)
        if stats is not None:
            yield live.proxy, stats


def _build_kube(settings: Settings) -> KubeIntegration | None:
    """The Kubernetes side, imported only when used (KUBERNETES_API; docs/kubernetes.md)."""
    from cloud_api_adaptor.kube.config import wanted

    if not wanted(settings.kubernetes):
        return None
    from cloud_api_adaptor.kube.integration import build

    return build(settings)


def _build_pod_network(settings: Settings, provider: Provider) -> PodNetworkPort:
    from cloud_api_adaptor.network import build_pod_network

    return build_pod_network(settings, provider)


async def _start_grpc(
    settings: Settings, manager: SandboxManager, custody: SocketCustody
) -> GrpcFront | None:
    """The optional gRPC socket; started before the ttrpc socket, so 'listening' means all is up."""
    if settings.grpc_socket is None:
        return None
    server = grpc.aio.server()
    add_grpc_services(server, HypervisorService(manager))
    private = settings.state_dir / f"grpc-{os.getpid()}.sock"
    return await GrpcFront.start(server, settings.grpc_socket, private, custody)


async def serve(settings: Settings, provider_config: Any, stop: asyncio.Event) -> None:
    """Run until ``stop`` is set (SIGTERM/SIGINT), then shut down in stages."""
    daemon = await start_daemon(settings, provider_config)
    try:
        stopping = asyncio.ensure_future(stop.wait())
        handing_over = asyncio.ensure_future(daemon.handover_requested.wait())
        try:
            await asyncio.wait({stopping, handing_over}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            handing_over.cancel()
        if daemon.handover_requested.is_set() and not stop.is_set():
            await asyncio.shield(daemon.aclose())
            logger.warning("handed this node over to a new cloud-api-adaptor; idle until SIGTERM")
            await stop.wait()
        logger.info("shutting down")
    finally:
        await asyncio.shield(daemon.aclose(final=True))


def install_signal_handlers(stop: asyncio.Event, on_second: Callable[[], None] | None = None) -> None:
    """First SIGTERM/SIGINT: graceful stop; second: exit at once."""
    import signal

    loop = asyncio.get_running_loop()

    def handler() -> None:
        if stop.is_set():
            logger.warning("second signal: exiting now")
            if on_second is not None:
                on_second()
            os._exit(1)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, handler)


def state_paths(settings: Settings) -> list[Path]:
    return [settings.state_dir, settings.pods_dir, settings.socket.parent]
