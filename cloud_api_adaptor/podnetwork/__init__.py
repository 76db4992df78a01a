"""The pod network tunnel: the pod's IP lives in the VM, joined to the worker over VXLAN.

Worker side (daemon): ``WorkerNode.inspect`` at CreateVM (the ``pod-network``
object for apf.json), ``setup`` at StartVM, ``teardown`` at StopVM;
``WorkerNodeNetwork`` adapts it to ``hypervisor.ports.PodNetworkPort``.
VNIs come from ``allocate_vni``.  VM side (forwarder): ``setup_pod_node`` /
``forwarder_network_setup``.  Only ``netlink`` talks netlink; ``netns`` runs
code inside a namespace given by path; ``notrack`` keeps the NOTRACK rules.
"""

from cloud_api_adaptor.podnetwork.models import (
    Neighbor,
    NeighborState,
    PodNetworkConfig,
    Route,
    RouteProtocol,
    RouteScope,
)
from cloud_api_adaptor.podnetwork.netns import (
    NamespaceNotFound,
    add_named_netns,
    delete_named_netns,
    run_in_netns,
    socket_in_netns,
)
from cloud_api_adaptor.podnetwork.podnode import (
    DEFAULT_MTU_CAP,
    DEFAULT_POD_NAMESPACE,
    forwarder_network_setup,
    setup_pod_node,
    teardown_pod_node,
)
from cloud_api_adaptor.podnetwork.vni import allocate_vni
from cloud_api_adaptor.podnetwork.workernode import (
    HostEndpoint,
    WorkerNode,
    WorkerNodeNetwork,
    WorkerNodeSettings,
    choose_primary_interface,
)

__all__ = [
    "DEFAULT_MTU_CAP",
    "DEFAULT_POD_NAMESPACE",
    "HostEndpoint",
    "NamespaceNotFound",
    "Neighbor",
    "NeighborState",
    "PodNetworkConfig",
    "Route",
    "RouteProtocol",
    "RouteScope",
    "WorkerNode",
    "WorkerNodeNetwork",
    "WorkerNodeSettings",
    "add_named_netns",
    "allocate_vni",
    "choose_primary_interface",
    "delete_named_netns",
    "forwarder_network_setup",
    "run_in_netns",
    "setup_pod_node",
    "socket_in_netns",
    "teardown_pod_node",
]
