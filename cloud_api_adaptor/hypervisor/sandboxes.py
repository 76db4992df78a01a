"""The sandbox lifecycle: CreateVM, StartVM, StopVM and GetInfo semantics.

What it guarantees:
- every step is recorded durably before and after its cloud call, so a restart
  resumes running sandboxes (same agent socket) and finishes or undoes the rest;
- StartVM passes an idempotency token derived from the sandbox, so a retried or
  interrupted create never makes a second VM;
- a failed StartVM deletes its instance before returning, shielded from
  cancellation; a failed delete is retried in the background until it succeeds;
- bad input is refused with INVALID_ARGUMENT naming the field, never coerced.

State mutation happens under a per-sandbox lock; all I/O happens under that
lock too, but never under a global one, so sandboxes proceed in parallel.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import shutil
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloud_api_adaptor.aio import TaskSupervisor, shielded
from cloud_api_adaptor.errors import (
    AlreadyExists,
    DeadlineExceeded,
    NotFound,
    ProviderError,
    StateWriteError,
)
from cloud_api_adaptor.hypervisor import planning
from cloud_api_adaptor.hypervisor import requests as rq
from cloud_api_adaptor.hypervisor.models import SandboxRecord, SandboxState
from cloud_api_adaptor.hypervisor.ports import (
    AgentChannelPort,
    AgentProxyPort,
    NoHooks,
    PodNetworkPort,
    SandboxHooks,
)
from cloud_api_adaptor.hypervisor.store import SandboxStore
from cloud_api_adaptor.hypervisor.teardown import SandboxTeardown
from cloud_api_adaptor.metrics import LifecycleObserver, NullObserver
from cloud_api_adaptor.provider import (
    TAG_CLUSTER,
    TAG_NODE,
    TAG_SANDBOX,
    InstanceTypeInfo,
    Provider,
)
from cloud_api_adaptor.settings import Settings

logger = logging.getLogger(__name__)

DELETE_RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


@dataclass
class LiveSandbox:
    """In-memory companion of a record: its lock and its running proxy."""

    record: SandboxRecord
    lock: asyncio.Lock
    proxy: AgentProxyPort | None = None
    #: the record in memory is newer than the one on disk (a write failed: the disk is full)
    unsaved: bool = False


class SandboxManager:
    """Owns every sandbox on this node."""

    def __init__(
        self,
        settings: Settings,
        provider: Provider,
        store: SandboxStore,
        channel: AgentChannelPort,
        network: PodNetworkPort,
        catalogue: tuple[InstanceTypeInfo, ...] = (),
        clock: Callable[[], float] = time.time,
        observer: LifecycleObserver | None = None,
        delete_retry_delays: tuple[float, ...] = DELETE_RETRY_DELAYS,
        hooks: SandboxHooks | None = None,
    ) -> None:
        self._delete_retry_delays = delete_retry_delays
        self._hooks: SandboxHooks = hooks or NoHooks()
        self._settings = settings
        self._observer: LifecycleObserver = observer or NullObserver()
        self._observer.track_states(self._state_counts)
        self._provider = provider
        self._store = store
        self._channel = channel
        self._network = network
        self._target = planning.PlanTarget.of(settings, provider, catalogue)
        self._clock = clock
        self._sandboxes: dict[str, LiveSandbox] = {}
        #: VNIs handed out by CreateVMs whose record is not registered yet
        self._pending_vnis: set[int] = set()
        self._changed = asyncio.Condition()
        self._background = TaskSupervisor("sandboxes")
        self._stopping: dict[str, asyncio.Task[None]] = {}
        #: sandboxes whose delete is being retried in the background
        self._deleting: set[str] = set()
        self._teardown = SandboxTeardown(provider, network, self.owner_tags)

    # ---- queries -------------------------------------------------------------------------------

    def records(self) -> list[SandboxRecord]:
        return [live.record for live in self._sandboxes.values()]

    def owner_tags(self, sandbox_id: str | None = None) -> dict[str, str]:
        tags = {
            TAG_CLUSTER: self._settings.cluster_id or "default",
            TAG_NODE: self._settings.node_name or "local",
        }
        if sandbox_id is not None:
            tags[TAG_SANDBOX] = sandbox_id
        return tags

    def live_instance_ids(self) -> set[str]:
        return {r.instance_id for r in self.records() if r.instance_id and r.owns_instance()}

    def _state_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self.records():
            counts[r.state.value] = counts.get(r.state.value, 0) + 1
        return counts

    def claiming_sandbox_ids(self) -> set[str]:
        """Sandboxes that may own a cloud instance (STARTING, RUNNING, STOPPING).

        A FAILED or CREATED sandbox owns none, so an instance tagged with it (a
        launch that landed after StartVM gave up) is an orphan.
        """
        return {r.id for r in self.records() if r.owns_instance()}

    @contextlib.asynccontextmanager
    async def _timed(self, operation: str) -> AsyncIterator[None]:
        started = time.monotonic()
        outcome = "error"
        try:
            yield
            outcome = "ok"
        finally:
            self._observer.observe(operation, outcome, time.monotonic() - started)

    # ---- persistence helpers -------------------------------------------------------------------

    async def _commit(
        self, live: LiveSandbox, record: SandboxRecord, first: Callable[[], object] | None = None
    ) -> SandboxRecord:
        """Make ``record`` the sandbox's state, in memory and then on disk.

        ``first`` is a pod-directory step done in the store's writer thread.  Memory
        is updated first: what is true of the cloud (an instance id) must never wait
        for the disk, so that cleanup knows it even when the write fails
        (``StateWriteError``, the sandbox marked ``unsaved`` for housekeeping).
        """
        record = record.with_changes(updated_at=self._clock())
        live.record = record
        async with self._changed:
            self._changed.notify_all()
        try:
            await self._store.save(record, first=first)
        except StateWriteError:
            live.unsaved = True
            raise
        live.unsaved = False
        self._hooks.changed(record)
        return record

    async def _note(
        self, live: LiveSandbox, record: SandboxRecord, first: Callable[[], object] | None = None
    ) -> SandboxRecord:
        """``_commit`` for cleanup: a failed write never stops it; housekeeping writes the record later."""
        try:
            return await self._commit(live, record, first)
        except StateWriteError as exc:
            logger.warning("sandbox %s: %s; continuing, the record is written later", record.id, exc)
            return live.record

    # ---- CreateVM ------------------------------------------------------------------------------

    async def create_vm(self, sandbox_id: str, annotations: Mapping[str, str], netns_path: str) -> str:
        async with self._timed("create"):
            return await self._create_vm(sandbox_id, annotations, netns_path)

    async def _create_vm(self, sandbox_id: str, annotations: Mapping[str, str], netns_path: str) -> str:
        request = planning.validate_request(sandbox_id, annotations, netns_path, self._target.pods_dir)
        existing = self._sandboxes.get(sandbox_id)
        if existing is not None and existing.record.state is not SandboxState.STOPPED:
            if existing.record.request_digest == request.digest:
                return existing.record.agent_socket_path
            raise AlreadyExists(f"adding sandbox: sandbox {sandbox_id} already exists")
        choice = planning.choose_instance(request, self._target)
        await self._provider.check_spec(planning.instance_spec(request, choice))
        vni: int | None = None
        pod_network: dict[str, Any] | None = None
        if netns_path:
            vni = self._allocate_vni()
            self._pending_vnis.add(vni)  # a concurrent CreateVM must not pick it during inspect
            try:
                pod_network = await self._network.inspect(netns_path, vni)
            finally:
                # No await from here until the record is registered: no CreateVM can run in between.
                self._pending_vnis.discard(vni)
        record = planning.render_record(
            request,
            choice,
            self._target,
            tls_fields=self._channel.apf_tls_fields(choice.instance_name),
            pod_network=pod_network,
            vni=vni,
            now=self._clock(),
        )
        live = LiveSandbox(record, asyncio.Lock())
        if existing is not None:  # a tombstone: the id is being reused
            live.lock = existing.lock
        self._sandboxes[sandbox_id] = live
        pod_dir = Path(record.agent_socket_path).parent
        try:
            await self._commit(live, record, first=functools.partial(_make_pod_dir, pod_dir))
        except BaseException:
            self._sandboxes.pop(sandbox_id, None)
            remove_pod_dir = functools.partial(shutil.rmtree, pod_dir, ignore_errors=True)
            with contextlib.suppress(StateWriteError):
                await shielded(self._store.remove(sandbox_id, first=remove_pod_dir))
            raise
        logger.info(
            "sandbox %s created for pod %s/%s (%s)",
            sandbox_id,
            record.pod_namespace,
            record.pod_name,
            record.instance_name,
        )
        return record.agent_socket_path

    def _allocate_vni(self) -> int:
        """Lowest VNI free among live records (persisted: unique across restarts) and CreateVMs in flight."""
        # Imported here: the podnetwork package pulls in pyroute2, which pods without a
        # network namespace (and daemon start-up) should not pay for.
        from cloud_api_adaptor.podnetwork.vni import allocate_vni

        in_use = {r.vni for r in self.records() if r.vni is not None and r.is_live()} | self._pending_vnis
        return allocate_vni(in_use, self._settings.network.vxlan_min_id)

    # ---- StartVM -------------------------------------------------------------------------------

    def _get(self, sandbox_id: str, verb: str) -> LiveSandbox:
        rq.validate_sandbox_id(sandbox_id)
        live = self._sandboxes.get(sandbox_id)
        if live is None:
            raise NotFound(f"{verb}: sandbox {sandbox_id} does not exist")
        return live

    async def start_vm(self, sandbox_id: str, deadline: float | None = None) -> None:
        """Create the VM and return once its agent channel is up.

        ``deadline`` is in ``loop.time()`` units (from the caller's ttrpc timeout).
        """
        live = self._get(sandbox_id, "getting sandbox")
        async with self._timed("start"), live.lock:
            record = live.record
            if record.state is SandboxState.RUNNING:
                return
            if record.state in {SandboxState.STOPPING, SandboxState.STOPPED}:
                raise NotFound(f"getting sandbox: sandbox {sandbox_id} does not exist")
            attempt = record.attempt + 1 if record.state is SandboxState.FAILED else max(record.attempt, 1)
            started = time.monotonic()
            record = await self._commit(
                live, record.transition(SandboxState.STARTING, attempt=attempt, last_error="")
            )
            try:
                await self._hooks.before_create(record)
                await self._start_instance(live, deadline)
            except BaseException as exc:
                await shielded(self._undo_start(live, exc))
                self._hooks.start_failed(live.record, exc, time.monotonic() - started)
                raise
            self._hooks.started(live.record, time.monotonic() - started)

    async def _start_instance(self, live: LiveSandbox, deadline: float | None) -> None:
        record = live.record
        loop = asyncio.get_running_loop()
        # the provider's wait for the VM is bounded like the agent channel's: PROXY_TIMEOUT, and the
        # caller's deadline (loop time, handed over as time.monotonic())
        wait = self._settings.proxy_timeout
        if deadline is not None:
            wait = min(wait, deadline - loop.time())
        tags = {**dict(self._settings.tags), **self.owner_tags(record.id)}
        request = planning.create_request(record, tags, deadline=time.monotonic() + wait)
        try:
            instance = await self._provider.create_instance(request)
        except ProviderError as exc:
            raise type(exc)(f"creating an instance : {exc}") from exc
        ips = tuple(str(ip) for ip in instance.ips)
        record = await self._commit(live, record.with_changes(instance_id=instance.id, instance_ips=ips))
        if not ips:
            raise DeadlineExceeded("instance IP is not available")
        if record.netns_path and record.pod_network is not None:
            await self._network.setup(record.netns_path, ips, record.pod_network)
        proxy = self._channel.new_proxy(Path(record.agent_socket_path), record.instance_name)
        live.proxy = proxy
        timeout = self._settings.proxy_timeout
        if deadline is not None:
            timeout = min(timeout, deadline - loop.time())
        if timeout <= 0:
            raise DeadlineExceeded("StartVM deadline passed before the pod VM was reachable")
        try:
            await proxy.start(ips[0], self._settings.forwarder_port, timeout)
        except DeadlineExceeded as exc:
            raise DeadlineExceeded(f"error connecting to agent: {exc}") from exc
        starting = live.record
        try:
            await self._commit(live, starting.transition(SandboxState.RUNNING))
        except StateWriteError:
            # Not recorded as running, it would not be recovered after a restart: fail and undo it.
            live.record = starting
            raise
        logger.info("sandbox %s running on instance %s (%s)", record.id, instance.id, ips[0])

    async def _undo_start(self, live: LiveSandbox, cause: BaseException) -> None:
        """Delete whatever StartVM made; on failure keep retrying in the background.

        The delete never waits for the disk: a record that cannot be written is kept
        in memory and written by housekeeping once there is space.
        """
        record = live.record
        logger.warning(
            "StartVM for sandbox %s failed (%s); cleaning up", record.id, cause or type(cause).__name__
        )
        await self._close_proxy(live)
        try:
            await self._teardown.release(record)
        except Exception as exc:
            logger.error("cleaning up sandbox %s failed: %s; retrying in the background", record.id, exc)
            await self._note(live, record.transition(SandboxState.STOPPING, last_error=str(cause)))
            self._schedule_delete(live)
            return
        await self._note(
            live,
            record.transition(SandboxState.FAILED, instance_id="", instance_ips=(), last_error=str(cause)),
        )

    async def _close_proxy(self, live: LiveSandbox) -> None:
        """Close the agent socket; a failure is logged, never a reason to keep the VM."""
        proxy, live.proxy = live.proxy, None
        if proxy is None:
            return
        try:
            await proxy.aclose()
        except Exception:
            logger.exception("closing the agent socket of sandbox %s failed", live.record.id)

    # ---- StopVM --------------------------------------------------------------------------------

    async def stop_vm(self, sandbox_id: str) -> None:
        """Tear the sandbox down; the work outlives a caller that gives up.

        runtime-rs calls StopVM with a 1 s deadline: if the caller is cancelled,
        the stop keeps running in the background (and a repeated StopVM joins
        it), so an instance is never left half-deleted.
        """
        live = self._get(sandbox_id, "stopping VM")
        async with self._timed("stop"):
            task = self._stopping.get(sandbox_id)
            if task is None or task.done():
                task = self._background.spawn(self._stop(live), name=f"stop-{sandbox_id}")
                self._stopping[sandbox_id] = task
                task.add_done_callback(functools.partial(self._forget_stop, sandbox_id))
            await asyncio.shield(task)

    def _forget_stop(self, sandbox_id: str, task: asyncio.Task[None]) -> None:
        if self._stopping.get(sandbox_id) is task:
            del self._stopping[sandbox_id]

    async def _stop(self, live: LiveSandbox) -> None:
        async with live.lock:
            record = live.record
            if record.state is SandboxState.STOPPED:
                return
            if record.state is not SandboxState.STOPPING:
                record = await self._note(live, record.transition(SandboxState.STOPPING))
            await self._close_proxy(live)
            try:
                await self._teardown.release(record)
            except Exception as exc:
                logger.error("StopVM: cleaning up sandbox %s failed: %s; will retry", record.id, exc)
                await self._note(live, record.with_changes(last_error=str(exc)))
                self._schedule_delete(live)
                return
            await self._finish_stop(live)

    async def _finish_stop(self, live: LiveSandbox) -> None:
        record = live.record
        await self._note(
            live,
            record.transition(SandboxState.STOPPED, instance_id="", instance_ips=(), userdata=""),
            first=functools.partial(shutil.rmtree, Path(record.agent_socket_path).parent, ignore_errors=True),
        )
        logger.info("sandbox %s stopped", record.id)

    def _schedule_delete(self, live: LiveSandbox) -> None:
        sandbox_id = live.record.id
        if sandbox_id in self._deleting:
            return
        self._deleting.add(sandbox_id)
        task = self._background.spawn(self._retry_delete(live), name=f"delete-{sandbox_id}")
        task.add_done_callback(lambda _t: self._deleting.discard(sandbox_id))

    async def _retry_delete(self, live: LiveSandbox) -> None:
        attempt = 0
        while True:
            delays = self._delete_retry_delays
            delay = delays[min(attempt, len(delays) - 1)]
            await asyncio.sleep(delay)
            attempt += 1
            async with live.lock:
                if live.record.state is not SandboxState.STOPPING:
                    return
                try:
                    await self._teardown.release(live.record)
                except Exception as exc:
                    logger.warning(
                        "retrying the delete of sandbox %s (attempt %d): %s", live.record.id, attempt, exc
                    )
                    continue
                await self._finish_stop(live)
                return

    # ---- primitives for recovery and housekeeping (hypervisor.recovery) ----------------------

    def live_sandboxes(self) -> list[LiveSandbox]:
        return list(self._sandboxes.values())

    def adopt(self, record: SandboxRecord) -> LiveSandbox:
        """Register a record loaded from disk."""
        live = LiveSandbox(record, asyncio.Lock())
        self._sandboxes[record.id] = live
        self._hooks.changed(record)
        return live

    async def undo_start(self, live: LiveSandbox, cause: BaseException) -> None:
        """Undo an interrupted StartVM (the shim saw it fail), unless the sandbox moved on meanwhile."""
        async with live.lock:
            if live.record.state is SandboxState.STARTING:
                await self._undo_start(live, cause)

    def resume_delete(self, live: LiveSandbox) -> None:
        """Finish an interrupted delete in the background."""
        self._schedule_delete(live)

    def is_idle(self, live: LiveSandbox) -> bool:
        """No call and no background delete is working on the sandbox."""
        return not live.lock.locked() and live.record.id not in self._deleting

    async def write_unsaved(self, live: LiveSandbox) -> None:
        """Write a record a full disk kept in memory only (a tombstone removes its pod directory again)."""
        async with live.lock:
            if not live.unsaved:
                return
            record = live.record
            first = None
            if record.state is SandboxState.STOPPED:
                first = functools.partial(
                    shutil.rmtree, Path(record.agent_socket_path).parent, ignore_errors=True
                )
            await self._commit(live, record, first=first)

    async def forget(self, live: LiveSandbox) -> bool:
        """Drop a stopped sandbox from memory and disk; False when it changed meanwhile."""
        async with live.lock:
            record = live.record
            if record.state is not SandboxState.STOPPED or self._sandboxes.get(record.id) is not live:
                return False
            if not self._hooks.can_forget(record):
                return False
            del self._sandboxes[record.id]
            await self._store.remove(record.id)
            return True

    async def restore_running(self, live: LiveSandbox) -> None:
        """Bring a running sandbox's tunnel and agent socket back after a restart."""
        record = live.record
        if not record.instance_ips:
            return
        if record.netns_path and record.pod_network is not None:
            try:
                await self._network.setup(record.netns_path, record.instance_ips, record.pod_network)
            except Exception:
                logger.exception("restoring the pod network of sandbox %s failed", record.id)
        proxy = self._channel.new_proxy(Path(record.agent_socket_path), record.instance_name)
        try:
            Path(record.agent_socket_path).parent.mkdir(parents=True, exist_ok=True)
            await proxy.restore(record.instance_ips[0], self._settings.forwarder_port)
        except BaseException:
            await shielded(proxy.aclose())
            raise
        live.proxy = proxy
        logger.info("sandbox %s restored: agent socket %s", record.id, record.agent_socket_path)

    # ---- GetInfo -------------------------------------------------------------------------------

    async def get_info(self, pod_name: str, pod_namespace: str, wait: bool) -> str:
        """The instance id of the pod's sandbox (empty while StartVM has not set it)."""
        async with self._changed:
            while True:
                for live in self._sandboxes.values():
                    r = live.record
                    if r.is_live() and r.pod_name == pod_name and r.pod_namespace == pod_namespace:
                        if not r.instance_id:
                            raise NotFound(f"pod {pod_namespace}/{pod_name} has no VM yet")
                        return r.instance_id
                if not wait:
                    raise NotFound(f"no sandbox for pod {pod_namespace}/{pod_name}")
                await self._changed.wait()

    # ---- shutdown ------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Stop background work and close proxies; VMs and records stay for the next start."""
        await self._background.aclose()
        for live in list(self._sandboxes.values()):
            await self._close_proxy(live)


def _make_pod_dir(path: Path) -> None:
    """``mkdir -p`` with mode 0755 whatever the process umask (the agent proxy narrows it briefly)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o755)
