"""Fixtures for tests against a real Kubernetes API server (tests/k8s/cluster.py).

One control plane per test session (starting one takes 3-4 s; CRDs are installed once,
before kube-controller-manager starts, see ../shared/reference/kubernetes-in-tests.md):

- ``kube_cluster``: etcd + kube-apiserver, the deploy/ CRDs established, RuntimeClass
  ``kata-remote``; skipped with the reason when the binaries cannot be built here;
- ``kube_controller_manager``: also garbage collection (owner references) and namespaces;
- ``kube_namespace``: a fresh namespace per test; its pods are deleted afterwards (no
  kubelet finishes them), and webhook configurations tests left are removed (a
  leftover failurePolicy=Fail webhook whose server is gone breaks every later pod create);
- ``kube_client``: an admin lightkube ``AsyncClient``.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import cast

import pytest
import pytest_asyncio
import yaml
from lightkube import AsyncClient, Client, KubeConfig
from lightkube.core.exceptions import ApiError
from lightkube.generic_resource import create_resources_from_crd
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.admissionregistration_v1 import (
    MutatingWebhookConfiguration,
    ValidatingWebhookConfiguration,
)
from lightkube.resources.apiextensions_v1 import CustomResourceDefinition
from lightkube.resources.core_v1 import Namespace, Pod
from lightkube.resources.node_v1 import RuntimeClass

from cloud_api_adaptor.testing.eventually import eventually_sync
from tests.k8s.cluster import (
    BUILD_TIMEOUT,
    ROOT,
    KubeCluster,
    KubeUnavailable,
    binaries_cached,
    kube_binaries,
)

HERE = Path(__file__).resolve().parent
CRD_FILES = sorted((ROOT / "deploy" / "kustomize" / "base").glob("*crd*.yaml"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """On a machine without the binaries, the first test's setup builds them (minutes, once):
    give these tests room for it (``make test`` builds them beforehand, see ``make kube``)."""
    if binaries_cached():
        return
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.timeout(BUILD_TIMEOUT + 300))


def crd_documents() -> list[dict[str, object]]:
    docs: list[dict[str, object]] = []
    for path in CRD_FILES:
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def _install_crds(client: Client) -> None:
    for doc in crd_documents():
        crd = cast(CustomResourceDefinition, CustomResourceDefinition.from_dict(doc))
        client.create(crd)
        create_resources_from_crd(crd)
        name = crd.metadata.name if crd.metadata else ""

        def established(name: str = str(name)) -> bool:
            got = client.get(CustomResourceDefinition, name)
            conditions = got.status.conditions if got.status else None
            return any(c.type == "Established" and c.status == "True" for c in conditions or ())

        eventually_sync(established, f"CRD {name} established", interval=0.1)


@pytest.fixture(scope="session")
def kube_cluster() -> Iterator[KubeCluster]:
    try:
        binaries = kube_binaries()
    except KubeUnavailable as exc:
        pytest.skip(f"no Kubernetes control plane: {exc}")
    cluster = KubeCluster(binaries)
    cluster.start()
    try:
        client = Client(KubeConfig.from_file(cluster.kubeconfig), field_manager="caa-tests")
        try:
            _install_crds(client)
            client.create(RuntimeClass(metadata=ObjectMeta(name="kata-remote"), handler="kata-remote"))
        finally:
            client.close()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def kube_controller_manager(kube_cluster: KubeCluster) -> KubeCluster:
    kube_cluster.start_controller_manager()
    return kube_cluster


@pytest.fixture(scope="session")
def kube_admin(kube_cluster: KubeCluster) -> Iterator[Client]:
    """A synchronous admin client, for fixtures and sync tests."""
    client = Client(KubeConfig.from_file(kube_cluster.kubeconfig), field_manager="caa-tests")
    try:
        yield client
    finally:
        client.close()


@pytest_asyncio.fixture
async def kube_client(kube_cluster: KubeCluster) -> AsyncIterator[AsyncClient]:
    client = AsyncClient(KubeConfig.from_file(kube_cluster.kubeconfig), field_manager="caa-tests")
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def kube_namespace(kube_admin: Client) -> Iterator[str]:
    name = f"t-{secrets.token_hex(4)}"
    kube_admin.create(Namespace(metadata=ObjectMeta(name=name)))
    try:
        yield name
    finally:
        _clean_namespace(kube_admin, name)


def _clean_namespace(client: Client, namespace: str) -> None:
    for mutating in client.list(MutatingWebhookConfiguration):
        if mutating.metadata and mutating.metadata.name:
            client.delete(MutatingWebhookConfiguration, mutating.metadata.name)
    for validating in client.list(ValidatingWebhookConfiguration):
        if validating.metadata and validating.metadata.name:
            client.delete(ValidatingWebhookConfiguration, validating.metadata.name)
    for pod in client.list(Pod, namespace=namespace):
        if pod.metadata and pod.metadata.name:
            try:
                client.delete(Pod, pod.metadata.name, namespace=namespace, grace_period=0)
            except ApiError as exc:
                if exc.status.code != 404:
                    raise
    client.delete(Namespace, namespace)


def kubeconfig_for(cluster: KubeCluster, user: str, directory: Path) -> Path:
    """A kubeconfig for one of the static service-account identities (cluster.SERVICE_ACCOUNT_USERS)."""
    return cluster.write_kubeconfig(user, directory / f"{user}.kubeconfig")
