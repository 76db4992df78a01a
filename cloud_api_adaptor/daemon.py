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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from prometheus_client import CollectorRegistry

from cloud_api_adaptor.aio import TaskSupervisor
from cloud_api_adaptor.channel import build_agent_channel
from cloud_api_adaptor.fsutil import make_private_dirs
from cloud_api_adaptor.handover import HANDOVER_SERVICE, StateLock, handover_service, take_over
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
from cloud_api_adaptor.ttrpc import Server

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
    grpc_server: grpc.aio.Server | None
    supervisor: TaskSupervisor
    registry: CollectorRegistry
    store: SandboxStore
    lock: StateLock
    handover_requested: asyncio.Event

    async def aclose(self) -> None:
        """Staged shutdown: listeners, in-flight calls, background work, proxies, provider, lock.

        Idempotent; also what a hand-over runs before the old daemon goes idle.
        """
        if not self.lock.held:
            return
        self.ttrpc.close()
        if self.grpc_server is not None:
            await self.grpc_server.stop(DRAIN_SECONDS)
        await self.ttrpc.wait_closed(DRAIN_SECONDS)
        await self.supervisor.aclose()
        await self.manager.aclose()
        await asyncio.to_thread(self.store.close)
        await self.provider.aclose()
        await self.probe.aclose()
        with contextlib.suppress(FileNotFoundError):
            self.settings.socket.unlink()
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
    await take_over(lock, settings.socket, HANDOVER_TIMEOUT)
    try:
        return await _start_locked(settings, provider_config, lock, network, provider)
    except BaseException:
        lock.release()
        raise


async def _start_locked(
    settings: Settings,
    provider_config: Any,
    lock: StateLock,
    network: PodNetworkPort | None,
    provider: Provider | None,
) -> Daemon:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    handover_requested = asyncio.Event()
    probe = ProbeServer("127.0.0.1", settings.probe_port, registry)
    await probe.start()
    if provider is None:
        provider = await asyncio.to_thread(build_provider, settings, provider_config)
    store = SandboxStore(settings.state_dir)
    grpc_server: grpc.aio.Server | None = None
    manager: SandboxManager | None = None
    try:
        catalogue = tuple(await provider.describe_instance_types())
        store.prepare()
        channel = await asyncio.to_thread(build_agent_channel, settings)
        manager = SandboxManager(
            settings,
            provider,
            store,
            channel,
            network or LazyPodNetwork(functools.partial(_build_pod_network, settings, provider)),
            catalogue,
            observer=metrics,
        )
        records = await asyncio.to_thread(store.load_all)
        metrics.records_quarantined(len(store.quarantined))
        await recover(manager, records, on_failure=metrics.recovery_failed)
        grpc_server = await _start_grpc(settings, manager)
        server = Server(error_translator=to_rpc_error)
        for name, methods in ttrpc_services(HypervisorService(manager)).items():
            server.add_service(name, methods)
        server.add_service(HANDOVER_SERVICE, handover_service(handover_requested.set))
        await server.start_unix(settings.socket, mode=0o600)
    except BaseException:
        if grpc_server is not None:
            await grpc_server.stop(0)
        if manager is not None:
            await manager.aclose()
        store.close()
        await provider.aclose()
        await probe.aclose()
        raise
    probe.set_ready()
    supervisor = TaskSupervisor("daemon", on_failure=metrics.task_failed)
    reconciler = OrphanReconciler(provider, manager, settings.orphan_grace_period)
    supervisor.keep_running(
        functools.partial(reconciler.run, settings.orphan_scan_interval), name="housekeeping"
    )
    abandoned = AbandonmentWatch(manager, settings.abandoned_sandbox_grace)
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
    return Daemon(
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
    )


def _build_pod_network(settings: Settings, provider: Provider) -> PodNetworkPort:
    from cloud_api_adaptor.network import build_pod_network

    return build_pod_network(settings, provider)


async def _start_grpc(settings: Settings, manager: SandboxManager) -> grpc.aio.Server | None:
    """The optional gRPC socket; started before the ttrpc socket, so 'listening' means all is up."""
    if settings.grpc_socket is None:
        return None
    server = grpc.aio.server()
    add_grpc_services(server, HypervisorService(manager))
    settings.grpc_socket.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        settings.grpc_socket.unlink()
    server.add_insecure_port(f"unix://{settings.grpc_socket}")
    await server.start()
    os.chmod(settings.grpc_socket, 0o600)
    return server


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
        await asyncio.shield(daemon.aclose())


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
