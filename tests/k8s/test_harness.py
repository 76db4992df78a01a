"""The control plane the Kubernetes tests run against: it starts, serves the CRDs, and
survives an API-server restart (etcd keeps the objects)."""

from __future__ import annotations

from lightkube import Client
from lightkube.generic_resource import get_generic_resource
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import ConfigMap

from tests.k8s.cluster import KubeCluster


def test_crd_served_and_objects_survive_an_apiserver_restart(
    kube_cluster: KubeCluster, kube_admin: Client, kube_namespace: str
) -> None:
    peerpod = get_generic_resource("confidentialcontainers.org/v1alpha1", "PeerPod")  # type: ignore[no-untyped-call]
    assert peerpod is not None
    assert list(kube_admin.list(peerpod, namespace=kube_namespace)) == []
    kube_admin.create(ConfigMap(metadata=ObjectMeta(name="kept"), data={"a": "b"}), namespace=kube_namespace)
    kube_cluster.stop_apiserver()
    kube_cluster.start_apiserver()
    got = kube_admin.get(ConfigMap, "kept", namespace=kube_namespace)
    assert got.data == {"a": "b"}
