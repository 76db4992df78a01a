"""VM side of the pod network tunnel: rebuild the pod's interface inside the VM's pod namespace.

agent-protocol-forwarder calls ``setup_pod_node`` (or the ``forwarder_network_setup``
hook) with apf.json's ``pod-network`` object before it listens.  The VXLAN is
created in the VM's own namespace (its UDP socket, and so the underlay traffic,
stays there), pointed at the worker, then moved into the pod namespace under
the pod interface's name with the pod's MAC and IP: to the containers it looks
like the interface the CNI gave the pod on the worker.

Choices that matter:
- MTU = min(pod MTU, ``mtu_cap``); 1450 leaves room for the 50 bytes of VXLAN
  over a 1500-byte underlay, raise it for jumbo-frame networks;
- for a pod IP that is not /32 the kernel's subnet route is deleted (PTP/GKE-
  style CNIs have none on the worker; the copied routes bring it back if the
  pod had it), then gateway-less routes go in before routes with a gateway
  (Calico's default route needs its on-link gateway route first);
- every step is idempotent, so a restarted forwarder re-runs it safely;
- ``external-net-via-pod-vm`` (moving a second NIC into the pod) is not
  supported yet: it is logged and skipped.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping
from typing import Any, Protocol

from cloud_api_adaptor.errors import FailedPrecondition, InvalidInput
from cloud_api_adaptor.podnetwork.models import (
    TUNNEL_VXLAN,
    PodNetworkConfig,
    RouteProtocol,
    RouteScope,
)
from cloud_api_adaptor.podnetwork.netlink import (
    NUD_PERMANENT,
    Netlink,
    NetlinkFailure,
    VxlanInfo,
    in_netns,
    is_exists,
)
from cloud_api_adaptor.podnetwork.netns import NamespaceNotFound, run_in_netns
from cloud_api_adaptor.podnetwork.notrack import NotrackBackend, detect_notrack

logger = logging.getLogger(__name__)

DEFAULT_POD_NAMESPACE = "/run/netns/podns"
DEFAULT_MTU_CAP = 1450
VM_VXLAN_NAME = "vxlan0"


class HasPodNetwork(Protocol):
    """What the hook needs from the forwarder's ``ApfConfig``."""

    @property
    def pod_network(self) -> Mapping[str, Any] | None: ...


async def forwarder_network_setup(
    apf: HasPodNetwork,
    pod_namespace: str = DEFAULT_POD_NAMESPACE,
    *,
    vm_netns: str | None = None,
    mtu_cap: int = DEFAULT_MTU_CAP,
    notrack: NotrackBackend | bool = True,
) -> None:
    """The forwarder's ``network_setup`` hook: build the tunnel from apf.json, if it has one.

    The keyword arguments are those of ``setup_pod_node`` (bind them with
    ``functools.partial`` for a configurable MTU cap).
    """
    if apf.pod_network is None:
        logger.info("apf.json has no pod-network object: no pod network tunnel")
        return
    config = PodNetworkConfig.from_json_obj(apf.pod_network)
    await setup_pod_node(config, pod_namespace, vm_netns=vm_netns, mtu_cap=mtu_cap, notrack=notrack)


async def setup_pod_node(
    config: PodNetworkConfig,
    pod_namespace: str = DEFAULT_POD_NAMESPACE,
    *,
    vm_netns: str | None = None,
    mtu_cap: int = DEFAULT_MTU_CAP,
    notrack: NotrackBackend | bool = True,
) -> None:
    """Create the VM end of the tunnel and the pod interface in ``pod_namespace`` (a path).

    ``vm_netns`` is the namespace acting as the VM's own (None: this process's);
    ``notrack`` True detects iptables/nftables, False skips the NOTRACK rules.
    A missing pod namespace is a ``FailedPrecondition`` (the VM image creates it).
    """
    if config.tunnel_type != TUNNEL_VXLAN:
        raise InvalidInput("pod-network.tunnel-type", f'unknown tunnel type: "{config.tunnel_type}"')
    if not config.vxlan_id:
        raise InvalidInput("pod-network.vxlan-id", "pod-network.vxlan-id is missing")
    if mtu_cap < 68:
        raise InvalidInput("mtu_cap", f"MTU cap {mtu_cap} is below the IPv4 minimum of 68")
    vni, port, group = config.vxlan_id, config.effective_vxlan_port, config.worker_node_ip.ip
    mtu = min(config.mtu, mtu_cap) if config.mtu > 0 else mtu_cap

    backend = _notrack_backend(notrack)
    if backend is not None:
        await run_in_netns(vm_netns, lambda: backend.ensure(vni, group, port), what="notrack")
    try:
        reuse = await in_netns(pod_namespace, lambda nl: _prepare(nl, config.interface, vni, group, port))
        if not reuse:
            await in_netns(
                vm_netns, lambda nl: _create(nl, config.interface, vni, group, port, pod_namespace)
            )
        await in_netns(pod_namespace, lambda nl: _configure(nl, config, mtu), what="pod-interface")
    except NamespaceNotFound as exc:
        raise FailedPrecondition(f"pod namespace: {exc}") from exc
    if config.external_net_via_pod_vm:
        logger.warning(
            "external-net-via-pod-vm is not supported yet: the pod's external traffic uses the tunnel"
        )
    logger.info(
        "pod interface %s (%s, mtu %d) up in %s; tunnel vni %d to %s:%d",
        config.interface,
        config.pod_ip,
        mtu,
        pod_namespace,
        vni,
        group,
        port,
    )


async def teardown_pod_node(
    config: PodNetworkConfig,
    pod_namespace: str = DEFAULT_POD_NAMESPACE,
    *,
    vm_netns: str | None = None,
    notrack: NotrackBackend | bool = True,
) -> None:
    """Undo ``setup_pod_node`` (a real VM never needs it; namespaces standing in for VMs do)."""
    try:
        await in_netns(pod_namespace, lambda nl: _delete_vxlan(nl, config.interface))
    except NamespaceNotFound:
        logger.debug("teardown: pod namespace %s is already gone", pod_namespace)
    await in_netns(vm_netns, lambda nl: _delete_vxlan(nl, VM_VXLAN_NAME))
    backend = _notrack_backend(notrack)
    if backend is not None and config.vxlan_id:
        await run_in_netns(vm_netns, lambda: backend.remove(config.vxlan_id), what="notrack")


def _notrack_backend(notrack: NotrackBackend | bool) -> NotrackBackend | None:
    if notrack is True:
        return detect_notrack()
    if notrack is False:
        return None
    return notrack


def _prepare(nl: Netlink, name: str, vni: int, group: ipaddress.IPv4Address, port: int) -> bool:
    """True if the pod namespace already has our tunnel under ``name``; a stale one is deleted."""
    link = nl.link(name)
    if link is None:
        return False
    if link.kind != "vxlan":
        raise FailedPrecondition(
            f"pod namespace {nl.where} already has a {link.kind or 'non-VXLAN'} interface {name}"
        )
    if link.vxlan == VxlanInfo(vni, group, port):
        return True
    logger.info("replacing %s in %s (was %s)", name, nl.where, link.vxlan)
    nl.delete_link(link.index)
    return False


def _create(nl: Netlink, name: str, vni: int, group: ipaddress.IPv4Address, port: int, pod_ns: str) -> None:
    """In the VM namespace: create ``vxlan0`` and move it into the pod namespace as ``name``."""
    _delete_vxlan(nl, VM_VXLAN_NAME)
    try:
        index = nl.add_vxlan(VM_VXLAN_NAME, vni, group, port)
    except NetlinkFailure as exc:
        if is_exists(exc):
            raise FailedPrecondition(
                f"VXLAN network identifier {vni} (port {port}) is already in use"
            ) from exc
        raise
    try:
        nl.move_link(index, pod_ns, name)
    except BaseException:
        nl.delete_link(index)
        raise


def _configure(nl: Netlink, config: PodNetworkConfig, mtu: int) -> None:
    """In the pod namespace: MAC, MTU, up, address, routes, neighbours."""
    lo = nl.link("lo")
    if lo is not None and not lo.is_up:
        nl.set_link(lo.index, up=True)
    link = nl.link(config.interface)
    if link is None:
        raise FailedPrecondition(f"pod namespace {nl.where} lost interface {config.interface}")
    nl.set_link(
        link.index,
        mac=config.pod_hw_addr if link.mac != config.pod_hw_addr else None,
        mtu=mtu if link.mtu != mtu else None,
    )
    if not link.is_up:
        nl.set_link(link.index, up=True)
    nl.add_address(link.index, config.pod_ip)
    if config.pod_ip.network.prefixlen != 32:
        nl.delete_route(config.pod_ip.network, oif=link.index, protocol=RouteProtocol.KERNEL.value)

    indexes = {lk.name: lk.index for lk in nl.links()}
    for route in sorted(config.routes, key=lambda r: r.gw is not None):  # stable: on-link routes first
        oif = indexes.get(route.dev or config.interface)
        if oif is None:
            logger.warning(
                "skipping route %s: no interface %s in the pod namespace", route.destination, route.dev
            )
            continue
        scope = RouteScope.LINK if route.gw is None else RouteScope.UNIVERSE
        protocol = route.protocol if route.protocol is not RouteProtocol.UNSPEC else RouteProtocol.BOOT
        nl.replace_route(
            route.destination, oif=oif, gateway=route.gw, protocol=protocol.value, scope=scope.value
        )
    for neigh in config.neighbors:
        oif = indexes.get(neigh.dev or config.interface)
        if neigh.ip is None or not neigh.hw_addr or oif is None:
            logger.warning("skipping neighbour %s (%s on %s)", neigh.ip, neigh.hw_addr, neigh.dev)
            continue
        nl.replace_neighbor(neigh.ip, neigh.hw_addr, oif, NUD_PERMANENT)


def _delete_vxlan(nl: Netlink, name: str) -> None:
    link = nl.link(name)
    if link is not None and link.kind == "vxlan":
        nl.delete_link(link.index)
