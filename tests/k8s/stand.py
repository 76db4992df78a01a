"""A daemon in this process (fake provider) wired to the test's API server, as a real
node would be: its own least-privilege identity (deploy/'s ClusterRole), a Node object,
pods bound to it, and a stand-in forwarder on 127.0.0.1 that accepts the agent channel."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import httpx2
import yaml
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.generic_resource import create_namespaced_resource
from lightkube.models.core_v1 import Container, PodSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, Node, Pod
from lightkube.resources.rbac_authorization_v1 import ClusterRole, ClusterRoleBinding, Role, RoleBinding
from lightkube.types import PatchType

from cloud_api_adaptor import kata_client as kata
from cloud_api_adaptor.daemon import Daemon, start_daemon
from cloud_api_adaptor.hypervisor.requests import ANN_SANDBOX_UID
from cloud_api_adaptor.options import load
from cloud_api_adaptor.provider import CreateRequest, Instance
from cloud_api_adaptor.settings import Settings
from cloud_api_adaptor.testing.fake_provider import FakeConfig, FakeProvider
from tests.k8s.cluster import ROOT, KubeCluster, free_port

PeerPod = create_namespaced_resource("confidentialcontainers.org", "v1alpha1", "PeerPod", "peerpods")
RBAC_FILE = ROOT / "deploy" / "kustomize" / "base" / "rbac.yaml"


DAEMON_NAMESPACE = "confidential-containers-system"


async def apply_daemon_rbac(client: AsyncClient) -> None:
    """deploy/'s roles and bindings for the daemon (idempotent across tests)."""
    kinds: dict[str, Any] = {
        "ClusterRole": ClusterRole,
        "ClusterRoleBinding": ClusterRoleBinding,
        "Role": Role,
        "RoleBinding": RoleBinding,
    }
    with contextlib.suppress(ApiError):
        await client.create(Namespace(metadata=ObjectMeta(name=DAEMON_NAMESPACE)))
    for doc in yaml.safe_load_all(RBAC_FILE.read_text()):
        kind = kinds[doc["kind"]]
        namespaced = doc["kind"] in {"Role", "RoleBinding"}
        if namespaced:
            doc["metadata"]["namespace"] = DAEMON_NAMESPACE
        with contextlib.suppress(ApiError):
            if namespaced:
                await client.delete(kind, doc["metadata"]["name"], namespace=DAEMON_NAMESPACE)
            else:
                await client.delete(kind, doc["metadata"]["name"])
        await client.create(kind.from_dict(doc))


async def create_node(client: AsyncClient, name: str) -> None:
    """A Node as a kubelet would register it: capacity, and allocatable derived from it
    (without a kubelet nothing derives allocatable, which the scheduler reads)."""
    await client.create(Node(metadata=ObjectMeta(name=name)))
    resources = {"cpu": "8", "memory": "32Gi", "pods": "110"}
    status = {"status": {"capacity": resources, "allocatable": resources}}
    await client.patch(Node.Status, name, status, patch_type=PatchType.MERGE)


async def create_pod(client: AsyncClient, namespace: str, name: str, node: str) -> str:
    """A peer pod bound to ``node`` (no scheduler, no kubelet); returns its UID."""
    pod = Pod(
        metadata=ObjectMeta(name=name, namespace=namespace),
        spec=PodSpec(
            nodeName=node,
            runtimeClassName="kata-remote",
            containers=[Container(name="app", image="registry.invalid/app:1")],
        ),
    )
    created = await client.create(pod)
    assert created.metadata is not None and created.metadata.uid
    return created.metadata.uid


class SpyingProvider(FakeProvider):
    """Records, at each create, the PeerPods the API server held for the pod's namespace."""

    def __init__(self, client: AsyncClient, namespace: str) -> None:
        super().__init__(FakeConfig(fixed_ip=ipaddress.ip_address("127.0.0.1")))
        self._client = client
        self._namespace = namespace
        #: per create, the PeerPods then (None: the API server did not answer)
        self.peerpods_at_create: list[list[dict[str, Any]] | None] = []

    async def create_instance(self, request: CreateRequest) -> Instance:
        try:
            seen: list[dict[str, Any]] | None = await peerpods(self._client, self._namespace)
        except httpx2.HTTPError:
            seen = None
        self.peerpods_at_create.append(seen)
        return await super().create_instance(request)


@contextlib.asynccontextmanager
async def forwarder_stand_in() -> AsyncIterator[int]:
    """Accepts TCP connections and holds them: StartVM's agent channel is up (TLS disabled)."""
    held: list[asyncio.StreamWriter] = []

    async def accept(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        held.append(w)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        for w in held:
            w.close()
        await server.wait_closed()


def daemon_settings(
    root: Path, cluster: KubeCluster, node: str, forwarder_port: int, extra: Mapping[str, str] | None = None
) -> Settings:
    kubeconfig = cluster.write_kubeconfig("daemon", root / "daemon.kubeconfig")
    env = {
        "CLOUD_PROVIDER": "fake",
        "REMOTE_HYPERVISOR_ENDPOINT": str(root / "hv.sock"),
        "PODS_DIR": str(root / "pods"),
        "STATE_DIR": str(root / "state"),
        "PROBE_PORT": str(free_port()),
        "FORWARDER_PORT": str(forwarder_port),
        "PROXY_TIMEOUT": "20s",
        "NODE_NAME": node,
        "KUBERNETES_API": "on",
        "KUBECONFIG": str(kubeconfig),
        "POD_UID": f"daemon-{uuid.uuid4().hex[:8]}",
        **(extra or {}),
    }
    return load(Settings, env, {"disable-tls": "true"})


async def start(settings: Settings, provider: FakeProvider) -> Daemon:
    return await start_daemon(settings, None, provider=provider)


def pod_annotations(pod: str, namespace: str, uid: str) -> dict[str, str]:
    return {**kata.kata_annotations(pod, namespace), ANN_SANDBOX_UID: uid}


async def eventually_async(
    check: Callable[[], Awaitable[Any]], what: str, timeout: float = 30.0, interval: float = 0.05
) -> Any:
    """``testing.eventually`` for an async check (the API client lives on the test's loop)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:.0f}s waiting for {what} (last: {value!r})")
        await asyncio.sleep(interval)


def as_dict(obj: Any) -> dict[str, Any]:
    """A lightkube object as plain JSON data."""
    data: dict[str, Any] = obj.to_dict()
    return data


async def peerpods(client: AsyncClient, namespace: str) -> list[dict[str, Any]]:
    return [as_dict(p) async for p in client.list(PeerPod, namespace=namespace)]
