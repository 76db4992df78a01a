"""The controller's decisions without an API server: which PeerPods lose their VM, when an orphan is due."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from cloud_api_adaptor.controller.orphans import NodeOrphanSweeper
from cloud_api_adaptor.controller.peerpods import FINALIZER, PeerPod, superseded, verdict, verdicts
from cloud_api_adaptor.provider import TAG_CLUSTER, TAG_NODE, CreateRequest, InstanceSpec
from cloud_api_adaptor.testing.fake_provider import FakeProvider

PODS = {("ns", "web"): "uid-1"}
NODES = {"n1"}


def peerpod(
    *, deleting: bool = False, finalizers: tuple[str, ...] = (FINALIZER,), cleaned: bool = False, **spec: str
) -> Any:
    metadata: dict[str, Any] = {"name": "web-resource-x", "namespace": "ns", "finalizers": list(finalizers)}
    if deleting:
        metadata["deletionTimestamp"] = dt.datetime.now(dt.UTC).isoformat()
    body = {"podName": "web", "podUID": "uid-1", "nodeName": "n1", **spec}
    return PeerPod.from_dict(
        {"metadata": metadata, "spec": body, "status": {"cleand": cleaned} if cleaned else {}}
    )


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        (peerpod(), ""),
        (peerpod(deleting=True), "deleting"),
        (peerpod(deleting=True, finalizers=()), ""),  # released: the API server finishes the delete
        (peerpod(podName="gone"), "pod-gone"),
        (peerpod(podUID="uid-2"), "pod-gone"),  # a new pod of the same name is not this VM's pod
        (peerpod(nodeName="n2"), "node-gone"),
        (peerpod(finalizers=(), cleaned=True, nodeName="n2"), "node-gone"),
    ],
    ids=["alive", "deleting", "released", "pod-gone", "pod-replaced", "node-gone", "cleaned-but-stale"],
)
def test_verdict(obj: Any, reason: str) -> None:
    assert verdict(obj, PODS, NODES).reason == reason


async def _instance(provider: FakeProvider, node: str, name: str) -> str:
    tags = {TAG_CLUSTER: "c1", TAG_NODE: node}
    request = CreateRequest(
        name=name, sandbox_id=name, token=name, spec=InstanceSpec(), userdata="", tags=tags
    )
    return (await provider.create_instance(request)).id


@pytest.mark.asyncio
async def test_orphan_due_only_after_its_node_was_missing_for_the_grace_period() -> None:
    now = [1000.0]
    provider = FakeProvider(clock=lambda: 0.0)  # created long ago
    sweeper = NodeOrphanSweeper(
        provider, cluster_id="c1", grace=60, clock=lambda: now[0], wall_clock=lambda: 1e6
    )
    orphan = await _instance(provider, "gone", "a")
    back = await _instance(provider, "flaky", "b")
    assert await sweeper.sweep({"n1"}) == []
    now[0] += 30
    assert await sweeper.sweep({"n1", "flaky"}) == []  # "flaky" is back: its clock restarts
    now[0] += 31
    assert await sweeper.sweep({"n1"}) == [orphan]
    assert back in provider.instances
    now[0] += 61
    assert await sweeper.sweep({"n1"}) == [back]


@pytest.mark.asyncio
async def test_young_instances_wait_even_if_their_node_is_unknown() -> None:
    """An instance whose node object does not exist yet (a node joining) is not an orphan."""
    provider = FakeProvider(clock=lambda: 1e6 - 10)  # created 10 s ago
    sweeper = NodeOrphanSweeper(provider, cluster_id="c1", grace=0.0, wall_clock=lambda: 1e6)
    await _instance(provider, "joining", "a")
    sweeper_with_grace = NodeOrphanSweeper(provider, cluster_id="c1", grace=60, wall_clock=lambda: 1e6)
    assert await sweeper_with_grace.sweep(set()) == []
    assert len(await sweeper.sweep(set())) == 1


@pytest.mark.asyncio
async def test_instances_of_a_daemon_without_node_name_are_never_swept() -> None:
    provider = FakeProvider(clock=lambda: 0.0)
    sweeper = NodeOrphanSweeper(provider, cluster_id="c1", grace=0.0, wall_clock=lambda: 1e6)
    unnamed = await _instance(provider, "local", "a")
    assert await sweeper.sweep(set()) == []
    assert unnamed in provider.instances


def owned(name: str, created: str, *, pod: str = "web", uid: str = "uid-1", deleting: bool = False) -> Any:
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": "ns",
        "finalizers": [FINALIZER],
        "creationTimestamp": created,
    }
    if deleting:
        metadata["deletionTimestamp"] = "2026-12-05T10:00:00Z"
    spec = {"podName": pod, "podUID": uid, "nodeName": "n1", "sandboxID": name}
    return PeerPod.from_dict({"metadata": metadata, "spec": spec})


def test_an_older_peerpod_of_the_same_pod_is_superseded() -> None:
    first = owned("web-resource-a", "2026-12-05T09:00:00Z")
    second = owned("web-resource-b", "2026-12-05T09:05:00Z")  # the pod's new sandbox
    same_second = owned("web-resource-c", "2026-12-05T09:05:00Z")
    other_pod = owned("db-resource-a", "2026-12-05T08:00:00Z", pod="db", uid="uid-9")
    leaving = owned("web-resource-z", "2026-12-05T09:30:00Z", deleting=True)  # takes no part
    judged = verdicts(
        [second, first, same_second, other_pod, leaving], {**PODS, ("ns", "db"): "uid-9"}, NODES
    )
    reasons = {p.metadata.name: why.reason for p, why in judged}
    assert reasons == {
        "web-resource-a": "superseded",
        "web-resource-b": "",
        "web-resource-c": "",  # created in the same second: never judged against each other
        "db-resource-a": "",  # another pod's: older, but not superseded
        "web-resource-z": "deleting",
    }
    assert superseded([first]) == set()
