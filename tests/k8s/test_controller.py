"""The cluster controller against the real API server, with the fake provider as the cloud.

The controller runs as the deploy/ ServiceAccount identity with deploy/'s RBAC only, so these tests also
show the ClusterRole and Role are enough.  The daemon's part (a PeerPod with the finalizer and the
instance it created, tagged for the cluster, the node and the sandbox) is set up as the daemon leaves it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import pytest_asyncio
import yaml
from lightkube import AsyncClient, Client, KubeConfig
from lightkube.codecs import from_dict
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import Namespace, Node, Pod
from lightkube.types import PatchType

from cloud_api_adaptor import kata_client as kata
from cloud_api_adaptor.controller.peerpods import FINALIZER, PeerPod
from cloud_api_adaptor.controller.runner import Controller
from cloud_api_adaptor.controller.settings import ControllerSettings
from cloud_api_adaptor.options import load
from cloud_api_adaptor.provider import TAG_CLUSTER, TAG_NODE, TAG_SANDBOX, CreateRequest, InstanceSpec
from cloud_api_adaptor.testing.eventually import eventually
from cloud_api_adaptor.testing.fake_provider import FakeConfig, FakeProvider
from tests.k8s import stand
from tests.k8s.cluster import ROOT, KubeCluster
from tests.k8s.conftest import kubeconfig_for

CONTROLLER_NS = "confidential-containers-system"
RBAC_KINDS = {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}


@pytest.fixture(scope="module")
def controller_rbac(kube_admin: Client) -> Iterator[None]:
    """deploy/kustomize/base/controller.yaml's RBAC, applied as kustomize would (namespace set)."""
    try:
        kube_admin.create(Namespace(metadata=ObjectMeta(name=CONTROLLER_NS)))
    except ApiError as exc:
        if exc.status.code != 409:
            raise
    docs = [d for d in yaml.safe_load_all((ROOT / "deploy/kustomize/base/controller.yaml").read_text()) if d]
    created = []
    for doc in docs:
        if doc["kind"] not in RBAC_KINDS:
            continue
        if doc["kind"] in {"Role", "RoleBinding"}:
            doc["metadata"]["namespace"] = CONTROLLER_NS
        obj: Any = from_dict(doc)
        kube_admin.apply(obj, field_manager="caa-tests")
        created.append(obj)
    yield
    for obj in reversed(created):
        kube_admin.delete(type(obj), obj.metadata.name, namespace=obj.metadata.namespace)


@pytest_asyncio.fixture
async def controller_client(
    kube_cluster: KubeCluster, controller_rbac: None, tmp_path: Path
) -> AsyncIterator[AsyncClient]:
    config = KubeConfig.from_file(kubeconfig_for(kube_cluster, "controller", tmp_path))
    client = AsyncClient(config, field_manager="peerpod-controller")
    try:
        yield client
    finally:
        await client.close()


def controller_settings(**overrides: str) -> ControllerSettings:
    env = {
        "CLOUD_PROVIDER": "fake",
        "CLUSTER_ID": "c1",
        "PEERPODS_NAMESPACE": CONTROLLER_NS,
        "LEASE_NAME": f"lease-{secrets.token_hex(3)}",
        "CONTROLLER_RECONCILE_PERIOD": "200ms",
        "CONTROLLER_ORPHAN_GRACE_PERIOD": "0s",
        "LEASE_DURATION": "3s",
        "RENEW_DEADLINE": "2s",
        "RETRY_PERIOD": "100ms",
        "CONTROLLER_HEALTH_PORT": "0",
        "CONTROLLER_HEALTH_ADDRESS": "127.0.0.1",
    }
    env.update(overrides)
    return load(ControllerSettings, env)


class World:
    """Nodes, pods, instances and PeerPods as the daemons leave them; removes what it made."""

    def __init__(self, admin: AsyncClient, namespace: str, provider: FakeProvider) -> None:
        self.admin, self.namespace, self.provider = admin, namespace, provider
        self.nodes: list[str] = []

    async def node(self) -> str:
        name = f"node-{secrets.token_hex(3)}"
        await self.admin.create(Node(metadata=ObjectMeta(name=name)))
        self.nodes.append(name)
        return name

    async def instance(self, node: str, sandbox: str, cluster: str = "c1") -> str:
        request = CreateRequest(
            name=f"podvm-{sandbox}",
            sandbox_id=sandbox,
            token=sandbox,
            spec=InstanceSpec(),
            userdata="",
            tags={TAG_CLUSTER: cluster, TAG_NODE: node, TAG_SANDBOX: sandbox},
        )
        return (await self.provider.create_instance(request)).id

    async def peer_pod(
        self, node: str, *, record_instance: bool = True, pod: Pod | None = None
    ) -> tuple[str, str, str]:
        """A pod on ``node`` (or ``pod``, for its next sandbox) with a VM and PeerPod.

        Returns (pod, PeerPod, instance id).
        """
        given = pod.metadata.name if pod is not None and pod.metadata else None
        pod_name = given or f"pod-{secrets.token_hex(3)}"
        pod = pod or await self.admin.create(
            cast(
                Pod,
                Pod.from_dict(
                    {
                        "metadata": {"name": pod_name, "namespace": self.namespace},
                        "spec": {
                            "nodeName": node,
                            "runtimeClassName": "kata-remote",
                            "containers": [{"name": "c", "image": "registry.example/app:1"}],
                        },
                    }
                ),
            )
        )
        assert pod.metadata is not None
        sandbox = secrets.token_hex(8)
        instance = await self.instance(node, sandbox)
        peerpod = PeerPod.from_dict(
            {
                "apiVersion": "confidentialcontainers.org/v1alpha1",
                "kind": "PeerPod",
                "metadata": {
                    "name": f"{pod_name}-resource-{secrets.token_hex(3)}",
                    "namespace": self.namespace,
                    "finalizers": [FINALIZER],
                    "ownerReferences": [
                        {
                            "apiVersion": "v1",
                            "kind": "Pod",
                            "name": pod_name,
                            "uid": pod.metadata.uid,
                            "controller": True,
                            "blockOwnerDeletion": True,
                        }
                    ],
                },
                "spec": {
                    "cloudProvider": "fake",
                    "instanceID": instance if record_instance else "",
                    "nodeName": node,
                    "podName": pod_name,
                    "podUID": pod.metadata.uid,
                    "sandboxID": sandbox,
                },
            }
        )
        created = await self.admin.create(peerpod)
        return pod_name, created.metadata.name, instance

    async def gone(self, name: str) -> bool:
        return not await self.peerpod_exists(name)

    async def created_at(self, name: str) -> dt.datetime:
        got = await self.admin.get(PeerPod, name, namespace=self.namespace)
        assert got.metadata is not None and got.metadata.creationTimestamp is not None
        created: dt.datetime = got.metadata.creationTimestamp
        return created

    async def peerpod_exists(self, name: str) -> bool:
        try:
            await self.admin.get(PeerPod, name, namespace=self.namespace)
        except ApiError as exc:
            if exc.status.code == 404:
                return False
            raise
        return True

    async def cleanup(self) -> None:
        async for peerpod in self.admin.list(PeerPod, namespace=self.namespace):
            name = str(peerpod.metadata.name if peerpod.metadata else "")
            await self.admin.patch(
                PeerPod,
                name,
                {"metadata": {"finalizers": None}},
                namespace=self.namespace,
                patch_type=PatchType.MERGE,
            )
        for name in self.nodes:
            try:
                await self.admin.delete(Node, name)
            except ApiError as exc:
                if exc.status.code != 404:
                    raise


@pytest_asyncio.fixture
async def world(kube_client: AsyncClient, kube_namespace: str) -> AsyncIterator[World]:
    w = World(kube_client, kube_namespace, FakeProvider())
    try:
        yield w
    finally:
        await w.cleanup()


@pytest_asyncio.fixture
async def controller(controller_client: AsyncClient, world: World) -> AsyncIterator[Controller]:
    c = Controller(controller_settings(), controller_client, world.provider)
    await c.start()
    try:
        yield c
    finally:
        await c.close()


def passes(c: Controller) -> int:
    return int(c.metrics.passes.labels("ok")._value.get())


async def wait_passes(c: Controller, count: int) -> None:
    target = passes(c) + count
    await eventually(lambda: passes(c) >= target, f"{count} more reconcile passes")


@pytest.mark.asyncio
async def test_gone_node_and_pod_vm_and_peerpod_deleted_within_a_period(
    world: World, controller: Controller
) -> None:
    dead_node, live_node = await world.node(), await world.node()
    dead_pod, dead_peerpod, dead_vm = await world.peer_pod(dead_node)
    _, live_peerpod, live_vm = await world.peer_pod(live_node)
    await asyncio.wait_for(wait_passes(controller, 2), 30)
    assert set(world.provider.instances) == {dead_vm, live_vm}  # nothing gone: nothing deleted

    # the daemon's node is gone for good: Node object removed, pod deleted (no kubelet: grace 0)
    await world.admin.delete(Node, dead_node)
    await world.admin.delete(Pod, dead_pod, namespace=world.namespace, grace_period=0)
    before = passes(controller)
    await eventually(lambda: dead_vm not in world.provider.instances, "the dead node's VM deleted")
    await stand.eventually_async(lambda: world.gone(dead_peerpod), "the PeerPod deleted")
    # one pass may have been under way with the old picture; the next one cleaned up
    assert passes(controller) - before <= 2
    assert live_vm in world.provider.instances
    assert await world.peerpod_exists(live_peerpod)
    cleaned = controller.metrics.peerpods
    assert (
        cleaned.labels("cleaned-node-gone")._value.get() + cleaned.labels("cleaned-pod-gone")._value.get()
        >= 1
    )


@pytest.mark.asyncio
async def test_an_older_peerpod_of_the_same_pod_loses_its_vm(world: World, controller: Controller) -> None:
    """The Go controller's rule: the pod got a new sandbox, so the older PeerPod's VM is dead weight."""
    node = await world.node()
    pod_name, old_peerpod, old_vm = await world.peer_pod(node)
    pod = await world.admin.get(Pod, pod_name, namespace=world.namespace)
    first = await world.created_at(old_peerpod)
    # creation times have one-second resolution: the next sandbox's PeerPod must be strictly newer
    await eventually(lambda: dt.datetime.now(dt.UTC).replace(microsecond=0) > first, "the next second")
    _, new_peerpod, new_vm = await world.peer_pod(node, pod=pod)
    await eventually(lambda: old_vm not in world.provider.instances, "the older sandbox's VM deleted")
    await stand.eventually_async(lambda: world.gone(old_peerpod), "the older PeerPod deleted")
    await asyncio.wait_for(wait_passes(controller, 2), 30)
    assert new_vm in world.provider.instances and await world.peerpod_exists(new_peerpod)
    assert controller.metrics.peerpods.labels("cleaned-superseded")._value.get() == 1


@pytest.mark.asyncio
async def test_peerpod_being_deleted_without_instance_id_finds_its_vm_by_tags(
    world: World, controller: Controller
) -> None:
    """The daemon crashed between the cloud create and recording the id: the owner tags find the VM."""
    node = await world.node()
    _, peerpod, vm = await world.peer_pod(node, record_instance=False)
    await world.admin.delete(PeerPod, peerpod, namespace=world.namespace)  # held by the finalizer
    assert await world.peerpod_exists(peerpod)
    await eventually(lambda: vm not in world.provider.instances, "the VM deleted")
    await stand.eventually_async(lambda: world.gone(peerpod), "the PeerPod deleted")


@pytest.mark.asyncio
async def test_instances_of_gone_nodes_are_swept_others_kept(world: World, controller: Controller) -> None:
    node = await world.node()
    kept = await world.instance(node, "s-live")
    other_cluster = await world.instance("ghost-node", "s-other", cluster="c2")
    orphan = await world.instance("ghost-node", "s-orphan")
    await eventually(lambda: orphan not in world.provider.instances, "the orphan of a gone node deleted")
    await asyncio.wait_for(wait_passes(controller, 2), 30)
    assert kept in world.provider.instances and other_cluster in world.provider.instances


@pytest.mark.asyncio
async def test_grace_period_protects_instances_of_missing_nodes(
    world: World, controller_client: AsyncClient
) -> None:
    c = Controller(
        controller_settings(CONTROLLER_ORPHAN_GRACE_PERIOD="1h"), controller_client, world.provider
    )
    orphan = await world.instance("ghost-node", "s-orphan")
    await c.start()
    try:
        await asyncio.wait_for(wait_passes(c, 3), 30)
        assert orphan in world.provider.instances
    finally:
        await c.close()


@pytest.mark.asyncio
async def test_one_leader_works_and_a_successor_takes_over(
    world: World, controller_client: AsyncClient
) -> None:
    settings = controller_settings()
    lease = settings.lease_name
    first = Controller(settings, controller_client, world.provider)
    second = Controller(settings, controller_client, world.provider)
    await first.start()
    try:
        await asyncio.wait_for(wait_passes(first, 1), 30)
        await second.start()
        try:
            await asyncio.wait_for(wait_passes(first, 3), 30)
            assert passes(second) == 0 and not second.is_leader
            got = await world.admin.get(Lease, lease, namespace=CONTROLLER_NS)
            assert got.spec is not None and got.spec.holderIdentity == first.identity
            await first.close()  # releases the Lease: no need to wait for it to expire
            await asyncio.wait_for(wait_passes(second, 1), 30)
            got = await world.admin.get(Lease, lease, namespace=CONTROLLER_NS)
            assert got.spec is not None and got.spec.holderIdentity == second.identity
            assert (got.spec.leaseTransitions or 0) >= 1
        finally:
            await second.close()
    finally:
        await first.close()
        await world.admin.delete(Lease, lease, namespace=CONTROLLER_NS)


def _run_check(kubeconfig: Path, namespace: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "KUBECONFIG": str(kubeconfig),
        "CLOUD_PROVIDER": "fake",
        "PEERPODS_NAMESPACE": namespace,
        "STATE_DIR": str(kubeconfig.parent / "state"),
    }
    return subprocess.run(
        [sys.executable, "-m", "cloud_api_adaptor", "controller", "--check"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_check_names_what_rbac_denies(
    kube_cluster: KubeCluster, controller_rbac: None, tmp_path: Path
) -> None:
    """``controller --check`` as the controller passes; as the daemon's account it names the missing rules."""
    ok = _run_check(kubeconfig_for(kube_cluster, "controller", tmp_path), CONTROLLER_NS)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "rbac" in ok.stdout and "all allowed" in ok.stdout
    assert "peerpods awaiting cleanup" in ok.stdout
    denied = _run_check(kubeconfig_for(kube_cluster, "webhook", tmp_path), CONTROLLER_NS)
    assert denied.returncode == 1, denied.stdout + denied.stderr
    assert "denied: list peerpods" in denied.stdout and "list nodes" in denied.stdout


@pytest.mark.asyncio
async def test_daemon_gone_for_good_after_start_vm(
    kube_cluster: KubeCluster,
    kube_client: AsyncClient,
    kube_namespace: str,
    controller_client: AsyncClient,
    short_tmp: Path,
) -> None:
    """A real daemon creates the PeerPod and the VM through StartVM, then stops for good (its node is
    deleted, and so is the pod): the controller deletes the VM and the PeerPod within a period."""
    await stand.apply_daemon_rbac(kube_client)
    node = f"node-{secrets.token_hex(3)}"
    await stand.create_node(kube_client, node)
    provider = FakeProvider(FakeConfig(fixed_ip=ipaddress.ip_address("127.0.0.1")))
    async with stand.forwarder_stand_in() as port:
        daemon = await stand.start(stand.daemon_settings(short_tmp, kube_cluster, node, port), provider)
        try:
            uid = await stand.create_pod(kube_client, kube_namespace, "web", node)
            sid = secrets.token_hex(16)
            await kata.create_vm(
                daemon.settings.socket, sid, stand.pod_annotations("web", kube_namespace, uid)
            )
            await kata.start_vm(daemon.settings.socket, sid, timeout=60)
            [instance_id] = provider.instances

            async def recorded() -> bool:
                items = await stand.peerpods(kube_client, kube_namespace)
                # the outbox is idle once the state is recorded too (closing mid-request leaks a socket)
                return (
                    bool(items)
                    and items[0]["spec"]["instanceID"] == instance_id
                    and items[0].get("status", {}).get("state") == "running"
                )

            await stand.eventually_async(recorded, "the PeerPod to carry the instance id")
        finally:
            await daemon.aclose()  # no StopVM: the daemon is gone with its node
    assert instance_id in provider.instances

    controller = Controller(controller_settings(), controller_client, provider)
    await controller.start()
    try:
        await asyncio.wait_for(wait_passes(controller, 1), 30)
        assert instance_id in provider.instances  # pod and node still there: nothing to do
        await kube_client.delete(Node, node)
        await kube_client.delete(Pod, "web", namespace=kube_namespace, grace_period=0)
        before = passes(controller)

        async def cleaned() -> bool:
            return instance_id not in provider.instances and not await stand.peerpods(
                kube_client, kube_namespace
            )

        await stand.eventually_async(cleaned, "the VM and the PeerPod deleted by the controller")
        assert passes(controller) - before <= 2
    finally:
        await controller.close()


@pytest.mark.asyncio
async def test_a_deletion_is_acted_on_at_once_not_at_the_next_period(
    world: World, controller_client: AsyncClient
) -> None:
    """With a one-hour period, the watch wakes the controller when a PeerPod starts being deleted."""
    c = Controller(controller_settings(CONTROLLER_RECONCILE_PERIOD="1h"), controller_client, world.provider)
    await c.start()
    try:
        await asyncio.wait_for(wait_passes(c, 1), 30)
        node = await world.node()
        _, peerpod, vm = await world.peer_pod(node)
        await world.admin.delete(PeerPod, peerpod, namespace=world.namespace)
        await eventually(lambda: vm not in world.provider.instances, "the VM deleted on the watch event")
        await stand.eventually_async(lambda: world.gone(peerpod), "the PeerPod deleted")
    finally:
        await c.close()


@pytest.mark.asyncio
async def test_a_pod_started_during_a_pass_keeps_its_vm(world: World, controller_client: AsyncClient) -> None:
    """A pod and its PeerPod created while a pass is under way are never taken for orphans."""
    c = Controller(controller_settings(CONTROLLER_WATCH="false"), controller_client, world.provider)
    node = await world.node()
    started: dict[str, str] = {}
    list_peerpods = c.peerpods.list_peerpods

    async def racing() -> list[Any]:
        if not started:  # the pod, its PeerPod and its VM appear just as the pass begins
            started["vm"] = (await world.peer_pod(node))[2]
        return await list_peerpods()

    c.peerpods.list_peerpods = racing  # type: ignore[method-assign]
    assert await c.reconcile_once()
    assert started["vm"] in world.provider.instances
    assert c.metrics.peerpods.labels("kept")._value.get() == 1
