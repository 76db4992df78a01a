"""The control plane the Kubernetes tests run against: it starts, serves the CRDs,
survives an API-server restart (etcd keeps the objects), and collects garbage when
kube-controller-manager runs."""

from __future__ import annotations

from lightkube import Client
from lightkube.core.exceptions import ApiError
from lightkube.generic_resource import get_generic_resource
from lightkube.models.core_v1 import Container, PodSpec
from lightkube.models.meta_v1 import ObjectMeta, OwnerReference
from lightkube.resources.core_v1 import ConfigMap, Pod

from cloud_api_adaptor.testing.eventually import eventually_sync
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


def test_the_controller_manager_collects_objects_whose_owner_is_gone(
    kube_controller_manager: KubeCluster, kube_admin: Client, kube_namespace: str
) -> None:
    pod = kube_admin.create(
        Pod(
            metadata=ObjectMeta(name="owner", namespace=kube_namespace),
            spec=PodSpec(nodeName="nowhere", containers=[Container(name="c", image="registry.invalid/c:1")]),
        )
    )
    assert pod.metadata is not None and pod.metadata.uid
    owner = OwnerReference(apiVersion="v1", kind="Pod", name="owner", uid=pod.metadata.uid)
    kube_admin.create(
        ConfigMap(metadata=ObjectMeta(name="owned", namespace=kube_namespace, ownerReferences=[owner])),
        namespace=kube_namespace,
    )
    kube_admin.delete(Pod, "owner", namespace=kube_namespace, grace_period=0)

    def collected() -> bool:
        try:
            kube_admin.get(ConfigMap, "owned", namespace=kube_namespace)
        except ApiError as exc:
            return exc.status.code == 404
        return False

    eventually_sync(collected, "the garbage collector to delete the owned config map", timeout=60)
