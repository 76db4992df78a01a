"""The lifecycle's promises, on the fake provider with an in-memory agent channel.

Outcomes asserted: instances left in the fake cloud, records on disk, states.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from cloud_api_adaptor.aio import RESTART_DELAYS, TaskSupervisor
from cloud_api_adaptor.errors import DeadlineExceeded, NotFound, TemporaryProviderError
from cloud_api_adaptor.hypervisor.models import SandboxState
from cloud_api_adaptor.hypervisor.ports import NoPodNetwork, PodNetworkPort
from cloud_api_adaptor.hypervisor.recovery import prune_tombstones, recover
from cloud_api_adaptor.hypervisor.sandboxes import SandboxManager
from cloud_api_adaptor.hypervisor.store import SandboxStore
from cloud_api_adaptor.kata_client import kata_annotations
from cloud_api_adaptor.provider import (
    TAG_CLUSTER,
    TAG_NODE,
    TAG_SANDBOX,
    CreateRequest,
    Instance,
    InstanceSpec,
)
from cloud_api_adaptor.reconciler import OrphanReconciler
from cloud_api_adaptor.settings import Settings
from cloud_api_adaptor.testing.eventually import eventually
from cloud_api_adaptor.testing.fake_provider import FakeConfig, FakeProvider


class FakeProxy:
    def __init__(self, channel: FakeChannel, path: Path) -> None:
        self.channel = channel
        self.path = path

    async def start(self, host: str, port: int, timeout: float) -> None:
        if self.channel.hang:
            await asyncio.sleep(3600)
        if self.channel.unreachable:
            raise DeadlineExceeded(f"failed to establish agent proxy connection to {host}:{port}: refused")
        self.channel.listening.add(self.path)

    async def restore(self, host: str, port: int) -> None:
        self.channel.listening.add(self.path)

    async def aclose(self) -> None:
        self.channel.listening.discard(self.path)


class FakeChannel:
    def __init__(self) -> None:
        self.unreachable = False
        self.hang = False
        self.listening: set[Path] = set()

    def apf_tls_fields(self, instance_name: str) -> Mapping[str, Any]:
        return {}

    def new_proxy(self, socket_path: Path, instance_name: str) -> FakeProxy:
        return FakeProxy(self, socket_path)


def make(
    tmp: Path,
    provider: FakeProvider,
    channel: FakeChannel,
    clock: Callable[[], float] = time.time,
    network: PodNetworkPort | None = None,
) -> SandboxManager:
    settings = dataclasses.replace(
        Settings(), state_dir=tmp / "state", pods_dir=tmp / "pods", node_name="node-a", cluster_id="c1"
    )
    store = SandboxStore(settings.state_dir)
    store.prepare()
    return SandboxManager(
        settings,
        provider,
        store,
        channel,
        network or NoPodNetwork(),
        clock=clock,
        delete_retry_delays=(0.01,),
    )


@pytest.fixture
def provider() -> FakeProvider:
    return FakeProvider(FakeConfig())


@pytest.mark.asyncio
async def test_a_failed_start_vm_deletes_its_instance(tmp_path: Path, provider: FakeProvider) -> None:
    channel = FakeChannel()
    channel.unreachable = True
    manager = make(tmp_path, provider, channel)
    await manager.create_vm("sb1", kata_annotations("p"), "")
    with pytest.raises(DeadlineExceeded, match="error connecting to agent"):
        await manager.start_vm("sb1")
    assert provider.instances == {}
    assert manager.records()[0].state is SandboxState.FAILED
    await manager.stop_vm("sb1")
    assert manager.records()[0].state is SandboxState.STOPPED
    await manager.aclose()


@pytest.mark.asyncio
async def test_a_cancelled_start_vm_still_deletes_its_instance(
    tmp_path: Path, provider: FakeProvider
) -> None:
    channel = FakeChannel()
    channel.hang = True
    manager = make(tmp_path, provider, channel)
    await manager.create_vm("sb1", kata_annotations("p"), "")
    task = asyncio.ensure_future(manager.start_vm("sb1"))
    await eventually(lambda: provider.instances, "the instance created", interval=0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert provider.instances == {}
    await manager.aclose()


@pytest.mark.asyncio
async def test_a_stop_vm_whose_caller_gives_up_still_deletes_the_vm(tmp_path: Path) -> None:
    provider = FakeProvider(FakeConfig(delete_delay=0.2))
    manager = make(tmp_path, provider, FakeChannel())
    await manager.create_vm("sb1", kata_annotations("p"), "")
    await manager.start_vm("sb1")
    with pytest.raises(TimeoutError):  # runtime-rs calls StopVM with a 1 s deadline
        async with asyncio.timeout(0.05):
            await manager.stop_vm("sb1")
    await manager.stop_vm("sb1")  # joins the stop still running
    assert provider.instances == {}
    assert manager.records()[0].state is SandboxState.STOPPED
    await manager.aclose()


@pytest.mark.asyncio
async def test_a_failed_delete_is_retried_until_the_vm_is_gone(
    tmp_path: Path, provider: FakeProvider
) -> None:
    manager = make(tmp_path, provider, FakeChannel())
    await manager.create_vm("sb1", kata_annotations("p"), "")
    await manager.start_vm("sb1")
    provider.fail_next_deletes(3)
    await manager.stop_vm("sb1")  # succeeds for Kata; the delete continues in the background
    await eventually(
        lambda: not provider.instances and manager.records()[0].state is SandboxState.STOPPED,
        "the retried delete done",
    )
    await manager.aclose()


@pytest.mark.asyncio
async def test_a_restart_resumes_running_sandboxes_and_undoes_interrupted_starts(
    tmp_path: Path, provider: FakeProvider
) -> None:
    channel = FakeChannel()
    first = make(tmp_path, provider, channel)
    for sid in ("run1", "run2", "half"):
        await first.create_vm(sid, kata_annotations(sid), "")
    await first.start_vm("run1")
    await first.start_vm("run2")
    # "half": the daemon dies after the cloud created the VM but before the id was recorded.
    record = next(r for r in first.records() if r.id == "half")
    starting = record.transition(SandboxState.STARTING, attempt=1)
    await SandboxStore(tmp_path / "state").save(starting)
    await provider.create_instance(
        CreateRequest(
            record.instance_name, "half", starting.token, InstanceSpec(), "", first.owner_tags("half")
        )
    )
    assert len(provider.instances) == 3
    second = make(tmp_path, provider, FakeChannel())
    await recover(second, SandboxStore(tmp_path / "state").load_all())
    states = {r.id: r.state for r in second.records()}
    assert states == {"run1": SandboxState.RUNNING, "run2": SandboxState.RUNNING, "half": SandboxState.FAILED}
    assert len(provider.instances) == 2
    for sid in ("run1", "run2", "half"):
        await second.stop_vm(sid)
    assert provider.instances == {}
    await first.aclose()
    await second.aclose()


@pytest.mark.asyncio
async def test_temporary_create_errors_reach_kata_with_the_go_prefix(
    tmp_path: Path, provider: FakeProvider
) -> None:
    manager = make(tmp_path, provider, FakeChannel())
    await manager.create_vm("sb1", kata_annotations("p"), "")
    provider.fail_next_creates(1)
    with pytest.raises(TemporaryProviderError, match=r"^creating an instance : "):
        await manager.start_vm("sb1")
    await manager.start_vm("sb1")  # a retry succeeds, with a new token
    assert len(provider.instances) == 1
    await manager.stop_vm("sb1")
    assert provider.instances == {}
    await manager.aclose()


@pytest.mark.asyncio
async def test_get_info_waits_for_the_sandbox(tmp_path: Path, provider: FakeProvider) -> None:
    manager = make(tmp_path, provider, FakeChannel())
    with pytest.raises(NotFound):
        await manager.get_info("p", "default", wait=False)
    waiter = asyncio.ensure_future(manager.get_info("p", "default", wait=True))
    await asyncio.sleep(0)
    await manager.create_vm("sb1", kata_annotations("p"), "")
    with pytest.raises(NotFound):  # like Go: found, but no VM id yet
        await waiter
    await manager.start_vm("sb1")
    assert await manager.get_info("p", "default", wait=False) == next(iter(provider.instances))
    await manager.stop_vm("sb1")
    await manager.aclose()


@pytest.mark.asyncio
async def test_the_orphan_scan_deletes_only_old_unclaimed_instances_of_this_node(tmp_path: Path) -> None:
    now = [1000.0]
    provider = FakeProvider(FakeConfig(), clock=lambda: now[0])
    manager = make(tmp_path, provider, FakeChannel())
    await manager.create_vm("live", kata_annotations("p"), "")
    await manager.start_vm("live")

    async def instance(sid: str, node: str) -> str:
        tags = {TAG_CLUSTER: "c1", TAG_NODE: node, TAG_SANDBOX: sid}
        made = await provider.create_instance(
            CreateRequest(f"vm-{sid}", sid, f"t-{sid}", InstanceSpec(), "", tags)
        )
        return made.id

    orphan = await instance("gone", "node-a")
    other_node = await instance("theirs", "node-b")
    reconciler = OrphanReconciler(provider, manager, grace_period=120, clock=lambda: now[0])
    first = await reconciler.scan_once()
    assert first.deleted == 0 and first.kept_young == 1  # just created: within the grace period
    now[0] += 121
    second = await reconciler.scan_once()
    assert second.deleted == 1
    assert orphan not in provider.instances
    assert other_node in provider.instances
    assert len(provider.instances) == 2  # the live sandbox's VM and the other node's
    await manager.stop_vm("live")
    await manager.aclose()


@pytest.mark.asyncio
async def test_an_instance_that_landed_after_start_vm_failed_is_an_orphan(tmp_path: Path) -> None:
    now = [1000.0]
    provider = FakeProvider(FakeConfig(), clock=lambda: now[0])
    channel = FakeChannel()
    channel.unreachable = True
    manager = make(tmp_path, provider, channel)
    await manager.create_vm("sb1", kata_annotations("p"), "")
    with pytest.raises(DeadlineExceeded):
        await manager.start_vm("sb1")
    # The cloud finishes a launch the daemon had given up on, tagged for the FAILED sandbox.
    late = await provider.create_instance(
        CreateRequest("late", "sb1", "t-late", InstanceSpec(), "", manager.owner_tags("sb1"))
    )
    now[0] += 121
    result = await OrphanReconciler(provider, manager, grace_period=120, clock=lambda: now[0]).scan_once()
    assert result.deleted == 1
    assert late.id not in provider.instances
    await manager.aclose()


@pytest.mark.asyncio
async def test_tombstones_are_forgotten_after_an_hour(tmp_path: Path, provider: FakeProvider) -> None:
    now = [1000.0]
    manager = make(tmp_path, provider, FakeChannel(), clock=lambda: now[0])
    await manager.create_vm("sb1", kata_annotations("p"), "")
    await manager.stop_vm("sb1")
    assert await prune_tombstones(manager, now[0]) == 0
    await manager.stop_vm("sb1")  # still known: a repeated StopVM succeeds
    now[0] += 3601
    assert await prune_tombstones(manager, now[0]) == 1
    assert manager.records() == []
    assert not (tmp_path / "state" / "sandboxes" / "sb1.json").exists()
    with pytest.raises(NotFound):
        await manager.stop_vm("sb1")
    await manager.aclose()


class FlakyNetwork:
    """A tunnel whose first teardown fails (e.g. netlink busy); counts what is left."""

    def __init__(self) -> None:
        self.tunnels: set[str] = set()
        self.fail_teardowns = 1

    async def inspect(self, netns_path: str, vni: int) -> dict[str, Any]:
        return {"vxlan-id": vni}

    async def setup(self, netns_path: str, vm_ips: Sequence[str], pod_network: Mapping[str, Any]) -> None:
        self.tunnels.add(netns_path)

    async def teardown(self, netns_path: str, pod_network: Mapping[str, Any]) -> None:
        if self.fail_teardowns:
            self.fail_teardowns -= 1
            raise RuntimeError("netlink: device or resource busy")
        self.tunnels.discard(netns_path)


@pytest.mark.asyncio
async def test_a_tunnel_that_fails_to_come_down_is_retried_and_the_vm_still_goes(
    tmp_path: Path, provider: FakeProvider
) -> None:
    network = FlakyNetwork()
    manager = make(tmp_path, provider, FakeChannel(), network=network)
    await manager.create_vm("sb1", kata_annotations("p"), "/run/netns/pod1")
    await manager.start_vm("sb1")
    assert network.tunnels == {"/run/netns/pod1"}
    await manager.stop_vm("sb1")
    assert provider.instances == {}  # the instance goes even though the tunnel did not
    await eventually(lambda: manager.records()[0].state is SandboxState.STOPPED, "the sandbox stopped")
    assert network.tunnels == set()
    await manager.aclose()


class DeadlineRecorder(FakeProvider):
    """Records the deadline each create was given."""

    def __init__(self) -> None:
        super().__init__(FakeConfig())
        self.deadlines: list[float | None] = []

    async def create_instance(self, request: CreateRequest) -> Any:
        self.deadlines.append(request.deadline)
        return await super().create_instance(request)


@pytest.mark.asyncio
async def test_the_providers_wait_is_bounded_by_proxy_timeout_and_the_callers_deadline(
    tmp_path: Path,
) -> None:
    provider = DeadlineRecorder()
    manager = make(tmp_path, provider, FakeChannel())
    proxy_timeout = Settings().proxy_timeout
    loop = asyncio.get_running_loop()
    await manager.create_vm("no-deadline", kata_annotations("p"), "")
    before = time.monotonic()
    await manager.start_vm("no-deadline")
    after = time.monotonic()
    await manager.create_vm("short", kata_annotations("q"), "")
    await manager.start_vm("short", deadline=loop.time() + 7)
    unbounded, short = provider.deadlines
    assert unbounded is not None and before + proxy_timeout <= unbounded <= after + proxy_timeout
    assert short is not None and 0 < short - time.monotonic() <= 7


class _BrokenOnce(FakeProvider):
    """A provider whose first listing dies of something that is no provider error (a bug, a bad SDK)."""

    def __init__(self) -> None:
        super().__init__(FakeConfig())
        self.listings = 0

    async def list_instances(self, owner_tags: Mapping[str, str]) -> Sequence[Instance]:
        self.listings += 1
        if self.listings == 1:
            raise KeyError("an SDK changed its response shape")
        return await super().list_instances(owner_tags)


@pytest.mark.asyncio
async def test_the_orphan_reconciler_survives_an_arbitrary_exception(tmp_path: Path) -> None:
    provider = _BrokenOnce()
    manager = make(tmp_path, provider, FakeChannel())
    orphan = await provider.create_instance(
        CreateRequest(
            "vm-x", "x", "t-x", InstanceSpec(), "", {TAG_CLUSTER: "c1", TAG_NODE: "node-a", TAG_SANDBOX: "x"}
        )
    )
    failures: list[tuple[str, type[BaseException]]] = []
    waits: list[float] = []
    quiet = asyncio.Event()  # never set: the second housekeeping pass parks here

    async def fake_sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) > 1:
            await quiet.wait()

    supervisor = TaskSupervisor(
        "test", on_failure=lambda name, exc: failures.append((name, type(exc))), sleep=fake_sleep
    )
    reconciler = OrphanReconciler(provider, manager, grace_period=0, sleep=fake_sleep)
    supervisor.keep_running(functools.partial(reconciler.run, 300.0), name="housekeeping")
    await eventually(lambda: orphan.id not in provider.instances, "the orphan deleted after the restart")
    assert failures == [("housekeeping", KeyError)]
    assert waits[0] == RESTART_DELAYS[0] and waits[1] == 300.0  # backoff, then the scan interval
    await supervisor.aclose()
    await manager.aclose()
