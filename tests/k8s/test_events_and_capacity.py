"""Pod events with typed reasons, and the node capacity a hand-over keeps, against a real
API server with the daemon's least-privilege role."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
from lightkube import AsyncClient
from lightkube.models.apps_v1 import DaemonSetSpec
from lightkube.models.core_v1 import Container, PodSpec, PodTemplateSpec
from lightkube.models.meta_v1 import LabelSelector, ObjectMeta, OwnerReference
from lightkube.resources.apps_v1 import DaemonSet
from lightkube.resources.core_v1 import Event, Node, Pod

from cloud_api_adaptor import kata_client as kata
from cloud_api_adaptor.daemon import Daemon
from cloud_api_adaptor.errors import QuotaExceeded
from cloud_api_adaptor.kube import node as node_capacity
from cloud_api_adaptor.kube.api import KubeApi
from cloud_api_adaptor.ttrpc import RpcError
from tests.k8s import stand
from tests.k8s.cluster import KubeCluster

pytestmark = pytest.mark.asyncio


async def pod_events(client: AsyncClient, namespace: str, uid: str) -> list[dict[str, Any]]:
    events = [stand.as_dict(e) async for e in client.list(Event, namespace=namespace)]
    return [e for e in events if e["involvedObject"].get("uid") == uid]


async def test_a_failed_start_vm_leaves_a_quota_event_and_a_start_a_normal_one(
    kube_cluster: KubeCluster, kube_client: AsyncClient, kube_namespace: str, short_tmp: Path
) -> None:
    await stand.apply_daemon_rbac(kube_client)
    node = f"node-{uuid.uuid4().hex[:6]}"
    await stand.create_node(kube_client, node)
    uid = await stand.create_pod(kube_client, kube_namespace, "batch", node)
    provider = stand.SpyingProvider(kube_client, kube_namespace)
    provider.fail_next_creates(
        error=QuotaExceeded("quota 'vCPUs' exceeded in region test-1: 96 of 96 in use")
    )
    sid = uuid.uuid4().hex
    async with stand.forwarder_stand_in() as port:
        settings = stand.daemon_settings(short_tmp, kube_cluster, node, port)
        daemon = await stand.start(settings, provider)
        try:
            await kata.create_vm(settings.socket, sid, stand.pod_annotations("batch", kube_namespace, uid))
            with pytest.raises(RpcError):
                await kata.start_vm(settings.socket, sid, timeout=60)

            async def warned() -> list[dict[str, Any]]:
                return [
                    e for e in await pod_events(kube_client, kube_namespace, uid) if e["type"] == "Warning"
                ]

            [warning] = await stand.eventually_async(warned, "a Warning event on the pod")
            assert warning["reason"] == "PeerPodQuotaExceeded"
            assert "quota 'vCPUs' exceeded" in warning["message"]
            assert warning["involvedObject"]["name"] == "batch"
            assert warning["source"]["component"] == "cloud-api-adaptor"

            await kata.start_vm(settings.socket, sid, timeout=60)  # the retry succeeds

            async def normal() -> list[dict[str, Any]]:
                return [
                    e for e in await pod_events(kube_client, kube_namespace, uid) if e["type"] == "Normal"
                ]

            [started] = await stand.eventually_async(normal, "a Normal event on the pod")
            [instance_id] = provider.instances
            assert started["reason"] == "PeerPodStarted"
            assert instance_id in started["message"]
            assert "fake.medium" in started["message"]
            assert " in " in started["message"] and started["message"].endswith("s")
            await kata.stop_vm(settings.socket, sid)
        finally:
            await daemon.aclose()


async def node_state(client: AsyncClient, name: str) -> tuple[str | None, str | None]:
    got = stand.as_dict(await client.get(Node, name))
    capacity = (got.get("status") or {}).get("capacity") or {}
    annotations = got["metadata"].get("annotations") or {}
    return capacity.get(node_capacity.RESOURCE), annotations.get(node_capacity.OWNER_ANNOTATION)


async def test_capacity_is_advertised_at_start_and_survives_a_hand_over(
    kube_cluster: KubeCluster, kube_client: AsyncClient, short_tmp: Path
) -> None:
    await stand.apply_daemon_rbac(kube_client)
    node = f"node-{uuid.uuid4().hex[:6]}"
    await stand.create_node(kube_client, node)
    provider = stand.SpyingProvider(kube_client, "default")
    async with stand.forwarder_stand_in() as port:
        old_settings = stand.daemon_settings(
            short_tmp, kube_cluster, node, port, {"PEERPODS_LIMIT_PER_NODE": "7", "POD_UID": "old-pod"}
        )
        old = await stand.start(old_settings, provider)
        new: Daemon | None = None
        try:
            assert old.kube is not None
            await asyncio.wait_for(old.kube.capacity_advertised.wait(), 30)
            assert await node_state(kube_client, node) == ("7", "old-pod")

            # the rolling update: the new pod takes over the node (the old one closes when asked)
            new_settings = stand.daemon_settings(
                short_tmp, kube_cluster, node, port, {"PEERPODS_LIMIT_PER_NODE": "7", "POD_UID": "new-pod"}
            )

            async def old_hands_over() -> None:
                await old.handover_requested.wait()
                await old.aclose()

            handing_over = asyncio.ensure_future(old_hands_over())
            new = await stand.start(new_settings, provider)
            await handing_over
            assert new.kube is not None
            await asyncio.wait_for(new.kube.capacity_advertised.wait(), 30)
            assert await node_state(kube_client, node) == ("7", "new-pod")

            # the old pod can never remove what the new one advertised; the owner can
            api = KubeApi(kube_client)
            assert not await node_capacity.withdraw(api, node, "old-pod")
            assert await node_state(kube_client, node) == ("7", "new-pod")
            assert await node_capacity.withdraw(api, node, "new-pod")
            assert await node_state(kube_client, node) == (None, None)
        finally:
            if new is not None:
                await new.aclose()
            await old.aclose()


async def test_capacity_is_withdrawn_on_uninstall_only(
    kube_cluster: KubeCluster, kube_client: AsyncClient, short_tmp: Path
) -> None:
    await stand.apply_daemon_rbac(kube_client)
    node = f"node-{uuid.uuid4().hex[:6]}"
    await stand.create_node(kube_client, node)
    ns = stand.DAEMON_NAMESPACE
    ds_name = f"caa-{uuid.uuid4().hex[:6]}"
    labels = {"app": ds_name}
    daemonset = await kube_client.create(
        DaemonSet(
            metadata=ObjectMeta(name=ds_name, namespace=ns),
            spec=DaemonSetSpec(
                selector=LabelSelector(matchLabels=labels),
                template=PodTemplateSpec(
                    metadata=ObjectMeta(labels=labels),
                    spec=PodSpec(containers=[Container(name="caa", image="registry.invalid/caa:1")]),
                ),
            ),
        )
    )
    assert daemonset.metadata is not None
    owner = OwnerReference(
        apiVersion="apps/v1", kind="DaemonSet", name=ds_name, uid=str(daemonset.metadata.uid), controller=True
    )
    pod = await kube_client.create(
        Pod(
            metadata=ObjectMeta(name=f"{ds_name}-x", namespace=ns, ownerReferences=[owner], labels=labels),
            spec=PodSpec(nodeName=node, containers=[Container(name="caa", image="registry.invalid/caa:1")]),
        )
    )
    assert pod.metadata is not None and pod.metadata.name and pod.metadata.uid
    identity = {"POD_NAME": pod.metadata.name, "POD_NAMESPACE": ns, "POD_UID": pod.metadata.uid}
    provider = stand.SpyingProvider(kube_client, "default")
    try:
        async with stand.forwarder_stand_in() as port:
            settings = stand.daemon_settings(short_tmp, kube_cluster, node, port, identity)
            for uninstall in (False, True):
                daemon = await stand.start(settings, provider)
                try:
                    assert daemon.kube is not None
                    await asyncio.wait_for(daemon.kube.capacity_advertised.wait(), 30)
                    if uninstall:
                        await kube_client.delete(DaemonSet, ds_name, namespace=ns)
                finally:
                    await daemon.aclose(final=True)
                expected = (None, None) if uninstall else ("10", pod.metadata.uid)
                assert await node_state(kube_client, node) == expected, f"uninstall={uninstall}"
    finally:
        await kube_client.delete(Pod, pod.metadata.name, namespace=ns, grace_period=0)
