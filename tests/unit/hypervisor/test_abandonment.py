"""Abandoned sandboxes (pod gone, no StopVM) are stopped: the decision, at recovery, in housekeeping."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from cloud_api_adaptor.hypervisor.abandonment import (
    AbandonmentWatch,
    ClusterView,
    Evidence,
    Verdict,
    abandonment,
    netns_exists,
    scan_interval,
)
from cloud_api_adaptor.hypervisor.models import SandboxRecord, SandboxState
from cloud_api_adaptor.hypervisor.recovery import recover
from cloud_api_adaptor.hypervisor.sandboxes import SandboxManager
from cloud_api_adaptor.hypervisor.store import SandboxStore
from cloud_api_adaptor.kata_client import kata_annotations
from cloud_api_adaptor.provider import TAG_SANDBOX
from cloud_api_adaptor.settings import Settings
from cloud_api_adaptor.testing.fake_provider import FakeConfig, FakeProvider

GRACE = 60.0
RUNNING = SandboxState.RUNNING


def record(state: SandboxState = RUNNING, netns: str = "/var/run/netns/cni-1") -> SandboxRecord:
    return SandboxRecord(
        id="sb",
        pod_name="p",
        pod_namespace="ns",
        request_digest="d",
        agent_socket_path="/run/peerpod/pods/sb/agent.ttrpc",
        instance_name="podvm-p",
        instance_type="t",
        image="",
        vcpus=1,
        memory_mib=1024,
        gpus=0,
        userdata="",
        netns_path=netns,
        state=state,
    )


GONE_SINCE_0 = Evidence(netns_exists=True, shim_seen=True, shim_connections=0, shim_gone_since=0.0)

TABLE: list[tuple[str, SandboxRecord, Evidence, float, float, Verdict]] = [
    ("running, namespace there, shim connected", record(), Evidence(True, True, 1), 1e6, GRACE, Verdict.KEEP),
    ("namespace deleted", record(), Evidence(netns_exists=False), 0, GRACE, Verdict.NETNS_GONE),
    (
        "namespace deleted, connection rule off",
        record(),
        Evidence(netns_exists=False),
        0,
        0,
        Verdict.NETNS_GONE,
    ),
    (
        "namespace deleted, never started",
        record(SandboxState.CREATED),
        Evidence(False),
        0,
        GRACE,
        Verdict.NETNS_GONE,
    ),
    (
        "namespace deleted after a failed start",
        record(SandboxState.FAILED),
        Evidence(False),
        0,
        GRACE,
        Verdict.NETNS_GONE,
    ),
    (
        "namespace deleted but StartVM in flight",
        record(SandboxState.STARTING),
        Evidence(False),
        0,
        GRACE,
        Verdict.KEEP,
    ),
    (
        "namespace deleted but StopVM in flight",
        record(SandboxState.STOPPING),
        Evidence(False),
        0,
        GRACE,
        Verdict.KEEP,
    ),
    ("already stopped", record(SandboxState.STOPPED), Evidence(False), 0, GRACE, Verdict.KEEP),
    (
        "namespace deleted, a call is working on it",
        record(),
        Evidence(False, busy=True),
        0,
        GRACE,
        Verdict.KEEP,
    ),
    (
        "namespace directory not visible to the daemon",
        record(),
        Evidence(netns_exists=None),
        0,
        GRACE,
        Verdict.KEEP,
    ),
    ("no namespace path at all", record(netns=""), Evidence(netns_exists=False), 0, GRACE, Verdict.KEEP),
    ("shim gone, within the grace period", record(), GONE_SINCE_0, GRACE - 1, GRACE, Verdict.KEEP),
    ("shim gone, grace period over", record(), GONE_SINCE_0, GRACE, GRACE, Verdict.SHIM_GONE),
    ("shim gone, connection rule off", record(), GONE_SINCE_0, 1e6, 0, Verdict.KEEP),
    ("shim gone, not running", record(SandboxState.CREATED), GONE_SINCE_0, 1e6, GRACE, Verdict.KEEP),
    (
        "shim gone, StopVM working on it",
        record(),
        dataclasses.replace(GONE_SINCE_0, busy=True),
        1e6,
        GRACE,
        Verdict.KEEP,
    ),
    (
        "no shim connection ever seen (e.g. since a restart)",
        record(),
        Evidence(netns_exists=True, shim_seen=False),
        1e6,
        GRACE,
        Verdict.KEEP,
    ),
    (
        "PeerPod being deleted, within the grace period",
        record(),
        Evidence(True, True, 1, pod_deleted_since=0.0),
        GRACE - 1,
        GRACE,
        Verdict.KEEP,
    ),
    (
        "PeerPod being deleted, grace period over (shim still connected)",
        record(),
        Evidence(True, True, 1, pod_deleted_since=0.0),
        GRACE,
        GRACE,
        Verdict.POD_DELETED,
    ),
    (
        "PeerPod being deleted, grace 0: at once",
        record(),
        Evidence(True, pod_deleted_since=5.0),
        5.0,
        0,
        Verdict.POD_DELETED,
    ),
    (
        "PeerPod being deleted, StartVM in flight",
        record(SandboxState.STARTING),
        Evidence(True, pod_deleted_since=0.0),
        1e6,
        GRACE,
        Verdict.KEEP,
    ),
    (
        "PeerPod being deleted, StopVM working on it",
        record(),
        Evidence(True, busy=True, pod_deleted_since=0.0),
        1e6,
        GRACE,
        Verdict.KEEP,
    ),
    (
        "a shim connection is open again",
        record(),
        dataclasses.replace(GONE_SINCE_0, shim_connections=1, shim_gone_since=None),
        1e6,
        GRACE,
        Verdict.KEEP,
    ),
]


@pytest.mark.parametrize(
    ("case", "rec", "evidence", "now", "grace", "expected"), TABLE, ids=[t[0] for t in TABLE]
)
def test_abandonment_decision(
    case: str, rec: SandboxRecord, evidence: Evidence, now: float, grace: float, expected: Verdict
) -> None:
    assert abandonment(rec, evidence, now, grace) is expected


def test_netns_exists_tells_gone_from_invisible(tmp_path: Path) -> None:
    present = tmp_path / "cni-1"
    present.touch()
    assert netns_exists(str(present)) is True
    assert netns_exists(str(tmp_path / "cni-2")) is False
    assert netns_exists(str(tmp_path / "no-such-dir" / "cni-3")) is None
    assert netns_exists("") is None


def test_scan_interval_follows_the_grace_period() -> None:
    assert scan_interval(60.0) == 15.0
    assert scan_interval(0.0) == 0.5
    assert scan_interval(3600.0) == 30.0


# ---- carried out, on the fake provider ------------------------------------------------------------


@dataclasses.dataclass
class Counters:
    connections_total: int = 0
    connections_active: int = 0


class CountingProxy:
    """Counts shim connections like ``AgentProxy.stats``; the test moves the counters."""

    def __init__(self) -> None:
        self.stats = Counters()

    async def start(self, host: str, port: int, timeout: float) -> None:
        return None

    async def restore(self, host: str, port: int) -> None:
        return None

    async def aclose(self) -> None:
        return None


class Channel:
    def __init__(self) -> None:
        self.proxies: dict[Path, CountingProxy] = {}

    def apf_tls_fields(self, instance_name: str) -> Mapping[str, Any]:
        return {}

    def new_proxy(self, socket_path: Path, instance_name: str) -> CountingProxy:
        return self.proxies.setdefault(socket_path, CountingProxy())


class Network:
    """Accepts any namespace path (the pod network is not under test)."""

    async def inspect(self, netns_path: str, vni: int) -> dict[str, Any]:
        return {"podip": "10.0.0.2"}

    async def setup(self, netns_path: str, vm_ips: Sequence[str], pod_network: Mapping[str, Any]) -> None:
        return None

    async def teardown(self, netns_path: str, pod_network: Mapping[str, Any]) -> None:
        return None


def manager(tmp: Path, provider: FakeProvider, channel: Channel) -> SandboxManager:
    settings = dataclasses.replace(Settings(), state_dir=tmp / "state", pods_dir=tmp / "pods", node_name="n")
    store = SandboxStore(settings.state_dir)
    store.prepare()
    return SandboxManager(settings, provider, store, channel, Network(), delete_retry_delays=(0.01,))


async def run_pod(m: SandboxManager, sid: str, netns: Path) -> None:
    netns.touch()
    await m.create_vm(sid, kata_annotations(f"pod-{sid}"), str(netns))
    await m.start_vm(sid)


@pytest.mark.asyncio
async def test_recovery_stops_a_pod_whose_namespace_was_deleted_while_the_daemon_was_down(
    tmp_path: Path,
) -> None:
    provider = FakeProvider(FakeConfig())
    first = manager(tmp_path, provider, Channel())
    netns_dir = tmp_path / "netns"
    netns_dir.mkdir()
    await run_pod(first, "gone", netns_dir / "cni-gone")
    await run_pod(first, "kept", netns_dir / "cni-kept")
    await first.aclose()  # the daemon goes away; the VMs stay
    assert len(await provider.list_instances({})) == 2
    (netns_dir / "cni-gone").unlink()  # the CRI removed the pod; its StopVM found no daemon

    channel = Channel()
    second = manager(tmp_path, provider, channel)
    await recover(second, SandboxStore(tmp_path / "state").load_all())
    try:
        states = {r.id: r.state for r in second.records()}
        assert states == {"gone": SandboxState.STOPPED, "kept": SandboxState.RUNNING}
        (left,) = await provider.list_instances({})
        assert left.tags[TAG_SANDBOX] == "kept"
    finally:
        await second.aclose()


def housekeeping(
    tmp_path: Path, cluster: ClusterView | None = None
) -> tuple[FakeProvider, Channel, SandboxManager, list[float], AbandonmentWatch, Path]:
    """A manager on a fake provider, its watch on a settable clock, a directory for pod namespaces."""
    provider = FakeProvider(FakeConfig())
    channel = Channel()
    m = manager(tmp_path, provider, channel)
    now = [0.0]
    watch = AbandonmentWatch(m, grace=GRACE, clock=lambda: now[0], cluster=cluster)
    netns_dir = tmp_path / "netns"
    netns_dir.mkdir()
    return provider, channel, m, now, watch, netns_dir


@pytest.mark.asyncio
async def test_housekeeping_stops_a_running_pod_whose_shim_left_without_stop_vm(tmp_path: Path) -> None:
    provider, channel, m, now, watch, netns_dir = housekeeping(tmp_path)
    try:
        await run_pod(m, "left", netns_dir / "cni-left")
        await run_pod(m, "idle", netns_dir / "cni-idle")  # no shim connection ever: kept
        await run_pod(m, "busy", netns_dir / "cni-busy")  # connected all along: kept
        proxies = {r.id: channel.proxies[Path(r.agent_socket_path)] for r in m.records()}
        proxies["left"].stats = Counters(connections_total=1, connections_active=0)
        proxies["busy"].stats = Counters(connections_total=1, connections_active=1)
        assert await watch.scan_once() == 0  # the shim is gone since now
        now[0] = GRACE - 1
        assert await watch.scan_once() == 0
        now[0] = GRACE
        assert await watch.scan_once() == 1
        states = {r.id: r.state for r in m.records()}
        assert states == {"left": SandboxState.STOPPED, "idle": RUNNING, "busy": RUNNING}
        assert len(await provider.list_instances({})) == 2
        (netns_dir / "cni-idle").unlink()  # the pod's namespace goes: stopped at the next scan
        assert await watch.scan_once() == 1
        assert {r.id for r in m.records() if r.state is RUNNING} == {"busy"}
        assert len(await provider.list_instances({})) == 1
    finally:
        await m.aclose()


class DeletingCluster:
    """The cluster's word (``ClusterView``): these sandboxes' PeerPods are being deleted."""

    def __init__(self) -> None:
        self.deleting: set[str] = set()

    def pod_deleted(self, record: SandboxRecord) -> bool:
        return record.id in self.deleting


@pytest.mark.asyncio
async def test_housekeeping_stops_a_pod_whose_peerpod_the_cluster_deletes(tmp_path: Path) -> None:
    cluster = DeletingCluster()
    provider, _channel, m, now, watch, netns_dir = housekeeping(tmp_path, cluster)
    try:
        await run_pod(m, "gone", netns_dir / "cni-gone")
        await run_pod(m, "back", netns_dir / "cni-back")
        await run_pod(m, "kept", netns_dir / "cni-kept")
        cluster.deleting = {"gone", "back"}
        assert await watch.scan_once() == 0  # deleting since now
        now[0] = GRACE / 2
        cluster.deleting = {"gone"}  # "back": the deletion was seen to end (e.g. a re-list)
        assert await watch.scan_once() == 0
        cluster.deleting = {"gone", "back"}  # deleting again: its grace starts over
        now[0] = GRACE
        assert await watch.scan_once() == 1
        assert {r.id for r in m.records() if r.state is RUNNING} == {"back", "kept"}
        assert len(await provider.list_instances({})) == 2
        now[0] = GRACE * 1.5  # "back" has been deleting again for half the grace period
        assert await watch.scan_once() == 0
        now[0] = GRACE * 2
        assert await watch.scan_once() == 1
        assert {r.id for r in m.records() if r.state is RUNNING} == {"kept"}
        assert len(await provider.list_instances({})) == 1
    finally:
        await m.aclose()
