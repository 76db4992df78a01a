"""Builds the worker side of the pod network tunnel from settings and the provider.

Where the worker's end of the tunnel is:

- a cloud provider's VMs reach the node over the node's own network, so the
  tunnel uses the node's primary interface (the default route's) or
  ``HOST_INTERFACE``, as the Go adaptor does (a different interface means
  dedicated mode);
- a provider implementing ``TunnelEndpointProvider`` (the local provider) owns
  the endpoint: its VMs hang off a subnet of its own, so the worker address in
  apf.json and the VXLAN's underlay are that provider's address, never the
  machine's real interface (and never dedicated);
- such a provider without an endpoint (local VMs in loopback mode) cannot carry
  a tunnel: a CreateVM with a network namespace is refused, naming why.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from cloud_api_adaptor.errors import FailedPrecondition
from cloud_api_adaptor.hypervisor.ports import PodNetworkPort
from cloud_api_adaptor.podnetwork.workernode import (
    HostEndpoint,
    WorkerNode,
    WorkerNodeNetwork,
    WorkerNodeSettings,
)
from cloud_api_adaptor.provider import Provider, TunnelEndpointProvider
from cloud_api_adaptor.settings import Settings

logger = logging.getLogger(__name__)

#: the interface name reported for a provider-owned endpoint (informational only)
PROVIDER_ENDPOINT_INTERFACE = "lo"


class ProviderEndpointWorkerNode(WorkerNode):
    """A ``WorkerNode`` whose tunnel address is given by the provider instead of detected."""

    def __init__(self, settings: WorkerNodeSettings, address: ipaddress.IPv4Address) -> None:
        super().__init__(settings)
        self.address = address

    async def host_endpoint(self) -> HostEndpoint:
        return HostEndpoint(
            PROVIDER_ENDPOINT_INTERFACE, ipaddress.IPv4Interface(f"{self.address}/32"), dedicated=False
        )


class UnavailablePodNetwork:
    """No tunnel possible: a namespace path is refused with the reason; setup/teardown are no-ops."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    async def inspect(self, netns_path: str, vni: int) -> dict[str, Any]:
        raise FailedPrecondition(f"failed to inspect netns {netns_path}: {self.reason}")

    async def setup(self, netns_path: str, vm_ips: Sequence[str], pod_network: Mapping[str, Any]) -> None:
        return None

    async def teardown(self, netns_path: str, pod_network: Mapping[str, Any]) -> None:
        return None


def worker_node_settings(settings: Settings, host_netns: str | None = None) -> WorkerNodeSettings:
    net = settings.network
    return WorkerNodeSettings(
        tunnel_type=net.tunnel_type,
        vxlan_port=net.vxlan_port,
        vxlan_min_id=net.vxlan_min_id,
        host_interface=net.host_interface,
        external_net_via_pod_vm=net.external_net_via_pod_vm,
        pod_subnet_cidrs=net.pod_subnet_cidrs,
        host_netns=host_netns,
    )


def build_pod_network(
    settings: Settings, provider: Provider | None = None, *, host_netns: str | None = None
) -> PodNetworkPort:
    """The daemon's ``PodNetworkPort``; the provider decides where the worker's end is (see above).

    ``host_netns`` (a path) is the namespace acting as the worker node; None, the
    daemon's own.  Tests and benchmarks pass one of theirs.
    """
    base = worker_node_settings(settings, host_netns)
    if not isinstance(provider, TunnelEndpointProvider):
        return WorkerNodeNetwork(WorkerNode(base))
    endpoint = provider.tunnel_endpoint()
    if endpoint is None:
        reason = f"the {settings.provider} provider's VMs cannot carry a pod network tunnel"
        if settings.provider == "local":
            reason += " in loopback mode (run as root for LOCAL_MODE=netns)"
        logger.info("pod network tunnel unavailable: %s", reason)
        return UnavailablePodNetwork(reason)
    if not isinstance(endpoint, ipaddress.IPv4Address):
        return UnavailablePodNetwork(f"the tunnel endpoint {endpoint} is not an IPv4 address")
    if settings.network.host_interface:
        logger.warning(
            "HOST_INTERFACE=%s is ignored: the %s provider's tunnel endpoint is %s",
            settings.network.host_interface,
            settings.provider,
            endpoint,
        )
    node_settings = WorkerNodeSettings(
        tunnel_type=base.tunnel_type,
        vxlan_port=base.vxlan_port,
        vxlan_min_id=base.vxlan_min_id,
        dedicated=False,
        host_netns=host_netns,
    )
    logger.info("pod network tunnel endpoint: %s (from the %s provider)", endpoint, settings.provider)
    return WorkerNodeNetwork(ProviderEndpointWorkerNode(node_settings, endpoint))
