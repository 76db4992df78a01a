"""`cloud-api-adaptor serve` as a process, configured only by environment like the DaemonSet:
KUBERNETES_API=on with a kubeconfig, a pod lifecycle through its socket leaves and then
releases a PeerPod, and SIGTERM (a restart, not an uninstall) keeps the node capacity."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from lightkube import AsyncClient
from lightkube.resources.core_v1 import Node

from cloud_api_adaptor import kata_client as kata
from cloud_api_adaptor.kube import node as node_capacity
from tests.integration.daemon_proc import DaemonProcess
from tests.k8s import stand
from tests.k8s.cluster import KubeCluster

pytestmark = pytest.mark.asyncio


async def test_serve_with_the_kubernetes_api_on(
    kube_cluster: KubeCluster, kube_client: AsyncClient, kube_namespace: str, short_tmp: Path
) -> None:
    await stand.apply_daemon_rbac(kube_client)
    node = f"node-{uuid.uuid4().hex[:6]}"
    await stand.create_node(kube_client, node)
    uid = await stand.create_pod(kube_client, kube_namespace, "api", node)
    async with stand.forwarder_stand_in() as port:
        daemon = DaemonProcess(
            short_tmp,
            {
                "FAKE_INSTANCE_IP": "127.0.0.1",
                "FORWARDER_PORT": str(port),
                "NODE_NAME": node,
                "KUBERNETES_API": "on",
                "KUBECONFIG": str(kube_cluster.write_kubeconfig("daemon", short_tmp / "daemon.kubeconfig")),
                "PEERPODS_LIMIT_PER_NODE": "4",
                "POD_UID": "serve-pod",
            },
            provider="fake",
            args=["-disable-tls"],
        )
        daemon.start()
        try:
            sid = uuid.uuid4().hex
            await kata.create_vm(daemon.socket, sid, stand.pod_annotations("api", kube_namespace, uid))
            await kata.start_vm(daemon.socket, sid, timeout=60)

            async def running() -> bool:
                items = await stand.peerpods(kube_client, kube_namespace)
                return bool(items) and items[0]["status"]["state"] == "running"

            await stand.eventually_async(running, "a running PeerPod")
            await kata.stop_vm(daemon.socket, sid)

            async def released() -> bool:
                return await stand.peerpods(kube_client, kube_namespace) == []

            await stand.eventually_async(released, "the PeerPod released")
        finally:
            assert daemon.stop() == 0, daemon.log.read_text()[-3000:]
    status = stand.as_dict(await kube_client.get(Node, node))
    assert status["status"]["capacity"][node_capacity.RESOURCE] == "4"
    assert status["metadata"]["annotations"][node_capacity.OWNER_ANNOTATION] == "serve-pod"
