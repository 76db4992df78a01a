"""Worker side of the pod network tunnel: inspect the pod namespace, set up and tear down the VXLAN.

The pod's namespace on the worker keeps its CNI veth (the cluster routes the
pod IP to it), but nothing runs there: a VXLAN device ``vxlan1`` in the same
namespace carries every frame to the pod VM and back, and two tc redirects join
the pod interface and ``vxlan1`` in both directions.  The VXLAN device is
created in the *host* namespace (so its UDP socket, and hence the underlay
traffic, lives there) and then moved into the pod namespace.

Every step is idempotent and teardown removes exactly what setup adds, so a
retried StartVM, a restarted daemon or a repeated StopVM never fails on
"already exists" and never leaves a link, filter or rule behind:

- the VXLAN is first created as ``ppvx<VNI>`` in the host namespace (a name
  derived from the VNI, so a leftover from a crash is found and deleted) and
  moved and renamed to ``vxlan1`` in one request;
- a ``vxlan1`` whose VNI, remote or port differ (an earlier attempt with
  another VM address) is replaced; one that matches is kept;
- tc: the redirect filters are replaced unless exactly the right one is there;
- NOTRACK rules: see ``notrack``.

``host_netns`` (a path) says where "the host" is; None is the daemon's own
namespace.  Tests and the local provider run the worker side in a namespace
of their own this way.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cloud_api_adaptor.errors import FailedPrecondition, InvalidInput
from cloud_api_adaptor.podnetwork.models import (
    TUNNEL_VXLAN,
    Neighbor,
    NeighborState,
    PodNetworkConfig,
    Route,
    RouteProtocol,
    RouteScope,
)
from cloud_api_adaptor.podnetwork.netlink import (
    NUD_PERMANENT,
    RTN_UNICAST,
    Link,
    Netlink,
    NetlinkFailure,
    RouteEntry,
    VxlanInfo,
    in_netns,
    is_exists,
)
from cloud_api_adaptor.podnetwork.netns import NamespaceNotFound, run_in_netns
from cloud_api_adaptor.podnetwork.notrack import NotrackBackend, detect_notrack
from cloud_api_adaptor.wire import VXLAN_MIN_ID, VXLAN_PORT

logger = logging.getLogger(__name__)

NETNS_FIELD = "networkNamespacePath"
POD_VXLAN_NAME = "vxlan1"
TC_PRIO = 1
"""Priority of our redirect filters: first, before anything else on the interface."""
_COPIED_PROTOCOLS = frozenset(
    {RouteProtocol.KERNEL, RouteProtocol.BOOT, RouteProtocol.STATIC, RouteProtocol.DHCP}
)
_KNOWN_PROTOCOLS = {p.value: p for p in RouteProtocol}
_KNOWN_SCOPES = {s.value: s for s in RouteScope}
_SUFFIX_RE = re.compile(r"^(.*?)(\d+)$")


@dataclass(frozen=True)
class WorkerNodeSettings:
    """Worker-side tunnel settings (from the daemon's network settings)."""

    tunnel_type: str = TUNNEL_VXLAN
    vxlan_port: int = VXLAN_PORT
    """UDP port of the tunnel (VXLAN_PORT)."""
    vxlan_min_id: int = VXLAN_MIN_ID
    """First VNI (VXLAN_MIN_ID); only used to fill in the informational ``index``."""
    host_interface: str = ""
    """HOST_INTERFACE: the tunnel's interface on the worker; empty means the default route's."""
    dedicated: bool | None = None
    """None: dedicated when HOST_INTERFACE differs from the primary interface (Go rule); else forced."""
    host_netns: str | None = None
    """Path of the namespace that acts as the host; None is this process's namespace."""
    external_net_via_pod_vm: bool = False
    """EXTERNAL_NETWORK_VIA_PODVM, passed on to the pod VM."""
    pod_subnet_cidrs: tuple[ipaddress.IPv4Network, ...] = ()
    """POD_SUBNET_CIDRS: extra routes via the pod's gateway (experimental in Go)."""


@dataclass(frozen=True)
class HostEndpoint:
    """The worker's end of the tunnel."""

    interface: str
    address: ipaddress.IPv4Interface
    dedicated: bool


def choose_primary_interface(default_route_devices: Sequence[str]) -> str | None:
    """The primary interface among those carrying a default route, in kernel order.

    The Go rule: the first one wins, and a later one replaces it only if it has
    the same alphabetic prefix and a smaller numeric suffix (``ens0`` beats
    ``ens1``; names without a number count as the largest).
    """
    best: str | None = None
    for name in default_route_devices:
        if best is None:
            best = name
            continue
        best_prefix, best_num = _split_suffix(best)
        prefix, num = _split_suffix(name)
        if prefix == best_prefix and num < best_num:
            best = name
    return best


def tunnel_destination(
    vm_ips: Sequence[str | ipaddress.IPv4Address | ipaddress.IPv6Address], dedicated: bool
) -> ipaddress.IPv4Address:
    """The VM address the worker's VXLAN points at: the first, or the second in dedicated mode."""
    if dedicated and len(vm_ips) < 2:
        raise InvalidInput("instance.ips", "dedicated tunnel missing destination address")
    if not vm_ips:
        raise InvalidInput("instance.ips", "instance IP is not available")
    raw = vm_ips[1] if dedicated else vm_ips[0]
    try:
        addr = ipaddress.ip_address(str(raw))
    except ValueError as exc:
        raise InvalidInput("instance.ips", f"{raw!r} is not an IP address") from exc
    if not isinstance(addr, ipaddress.IPv4Address):
        raise InvalidInput("instance.ips", f"the pod network tunnel needs an IPv4 VM address, got {addr}")
    return addr


class WorkerNode:
    """Inspect, set up and tear down the worker side of pod tunnels on one node."""

    def __init__(self, settings: WorkerNodeSettings, *, notrack: NotrackBackend | None = None) -> None:
        if settings.tunnel_type != TUNNEL_VXLAN:
            raise InvalidInput("TUNNEL_TYPE", f'unknown tunnel type: "{settings.tunnel_type}"')
        self._settings = settings
        self._notrack = notrack

    @property
    def settings(self) -> WorkerNodeSettings:
        return self._settings

    def _backend(self) -> NotrackBackend:
        if self._notrack is None:
            self._notrack = detect_notrack()
        return self._notrack

    # ---- CreateVM ------------------------------------------------------------------------

    async def host_endpoint(self) -> HostEndpoint:
        """The worker's tunnel interface and address in the host namespace."""
        return await in_netns(self._settings.host_netns, self._read_host_endpoint, what="host-endpoint")

    def _read_host_endpoint(self, nl: Netlink) -> HostEndpoint:
        where = self._settings.host_netns or "host"
        links = {link.index: link for link in nl.links()}
        defaults = [links[r.oif].name for r in nl.routes() if r.is_default and r.oif in links]
        primary = choose_primary_interface(defaults)
        chosen = self._settings.host_interface or primary
        if not chosen:
            raise FailedPrecondition(f'failed to identify primary interface on network namespace "{where}"')
        link = next((lk for lk in links.values() if lk.name == chosen), None)
        if link is None:
            raise FailedPrecondition(
                f"host interface {chosen} (HOST_INTERFACE) not found in namespace {where}"
            )
        addrs = nl.addresses(link.index)
        if not addrs:
            raise FailedPrecondition(f"host interface {chosen} has no IPv4 address (namespace {where})")
        if self._settings.dedicated is not None:
            dedicated = self._settings.dedicated
        else:
            dedicated = bool(self._settings.host_interface) and primary is not None and chosen != primary
        return HostEndpoint(chosen, addrs[0].interface, dedicated)

    async def inspect(self, netns_path: str, vni: int) -> PodNetworkConfig:
        """Read the pod namespace into the ``pod-network`` object for apf.json.

        ``InvalidInput(networkNamespacePath)`` for an empty or missing namespace;
        ``FailedPrecondition`` (naming the namespace) when it has no default
        route or not exactly one IPv4 address on its primary interface.
        """
        if not netns_path:
            raise InvalidInput(NETNS_FIELD, "an empty networkNamespacePath means no pod network tunnel")
        host = await self.host_endpoint()
        try:
            return await in_netns(
                netns_path, lambda nl: self._read_pod(nl, netns_path, vni, host), what="inspect"
            )
        except NamespaceNotFound as exc:
            raise InvalidInput(NETNS_FIELD, f"failed to inspect netns {netns_path}: {exc}") from exc

    def _read_pod(self, nl: Netlink, path: str, vni: int, host: HostEndpoint) -> PodNetworkConfig:
        links = {link.index: link for link in nl.links()}
        routes = nl.routes()
        default_routes = [r for r in routes if r.is_default and r.oif in links]
        primary_name = choose_primary_interface([links[r.oif].name for r in default_routes])
        if primary_name is None:
            raise FailedPrecondition(f'failed to identify primary interface on network namespace "{path}"')
        primary = next(lk for lk in links.values() if lk.name == primary_name)
        addrs = nl.addresses(primary.index)
        if len(addrs) != 1:
            raise FailedPrecondition(
                f"network namespace {path}: interface {primary.name} has {len(addrs)} IPv4 addresses, "
                "expected exactly one"
            )
        copied = _copy_routes(routes, links)
        gateway = next((r.gateway for r in default_routes if r.oif == primary.index and r.gateway), None)
        for cidr in self._settings.pod_subnet_cidrs:
            copied.append(Route(dst=cidr, gw=gateway, dev=primary.name, protocol=RouteProtocol.STATIC))
        neighbors = tuple(
            Neighbor(ip=n.ip, hw_addr=n.mac, dev=links[n.index].name, state=NeighborState.PERMANENT)
            for n in nl.neighbors()
            if n.state & NUD_PERMANENT and n.mac and n.index in links
        )
        return PodNetworkConfig(
            pod_ip=addrs[0].interface,
            pod_hw_addr=primary.mac,
            interface=primary.name,
            worker_node_ip=host.address,
            tunnel_type=TUNNEL_VXLAN,
            routes=tuple(copied),
            neighbors=neighbors,
            mtu=primary.mtu,
            index=max(vni - self._settings.vxlan_min_id, 0),
            vxlan_port=self._settings.vxlan_port,
            vxlan_id=vni,
            dedicated=host.dedicated,
            external_net_via_pod_vm=self._settings.external_net_via_pod_vm,
        )

    # ---- StartVM -------------------------------------------------------------------------

    async def setup(
        self,
        netns_path: str,
        vm_ips: Sequence[str | ipaddress.IPv4Address | ipaddress.IPv6Address],
        config: PodNetworkConfig,
    ) -> None:
        """Create the tunnel to the VM and join it to the pod interface; idempotent."""
        _check_config(config)
        dst = tunnel_destination(vm_ips, config.dedicated)
        vni, port = config.vxlan_id, config.effective_vxlan_port
        host_ns = self._settings.host_netns
        backend = self._backend()
        await run_in_netns(host_ns, lambda: backend.ensure(vni, dst, port), what="notrack")
        try:
            reuse = await in_netns(
                netns_path, lambda nl: _prepare_pod_vxlan(nl, config.interface, vni, dst, port), what="setup"
            )
            if not reuse:
                await in_netns(
                    host_ns, lambda nl: _create_pod_vxlan(nl, vni, dst, port, netns_path), what="setup"
                )
            await in_netns(netns_path, lambda nl: _join(nl, config.interface), what="setup")
        except NamespaceNotFound as exc:
            raise FailedPrecondition(f"setting up pod network tunnel on netns {netns_path}: {exc}") from exc
        logger.info("pod tunnel up: netns %s, vni %d, remote %s:%d", netns_path, vni, dst, port)

    # ---- StopVM --------------------------------------------------------------------------

    async def teardown(self, netns_path: str, config: PodNetworkConfig) -> None:
        """Remove the filters, the VXLAN and the NOTRACK rules; missing pieces are fine."""
        vni = config.vxlan_id
        if netns_path:
            try:
                await in_netns(netns_path, lambda nl: _unjoin(nl, config.interface), what="teardown")
            except NamespaceNotFound:
                logger.debug("teardown: netns %s is already gone", netns_path)
        if vni:
            await in_netns(
                self._settings.host_netns, lambda nl: _delete_named(nl, _host_name(vni)), what="teardown"
            )
            backend = self._backend()
            await run_in_netns(self._settings.host_netns, lambda: backend.remove(vni), what="notrack")
        logger.info("pod tunnel down: netns %s, vni %d", netns_path, vni)


class WorkerNodeNetwork:
    """``hypervisor.ports.PodNetworkPort`` over a ``WorkerNode``: apf.json mappings in and out."""

    def __init__(self, node: WorkerNode) -> None:
        self.node = node

    async def inspect(self, netns_path: str, vni: int) -> dict[str, Any]:
        return (await self.node.inspect(netns_path, vni)).to_json_obj()

    async def setup(self, netns_path: str, vm_ips: Sequence[str], pod_network: Mapping[str, Any]) -> None:
        await self.node.setup(netns_path, vm_ips, PodNetworkConfig.from_json_obj(pod_network))

    async def teardown(self, netns_path: str, pod_network: Mapping[str, Any]) -> None:
        await self.node.teardown(netns_path, PodNetworkConfig.from_json_obj(pod_network))


# ---- steps, each run inside one namespace ------------------------------------------------


def _check_config(config: PodNetworkConfig) -> None:
    if config.tunnel_type != TUNNEL_VXLAN:
        raise InvalidInput("pod-network.tunnel-type", f'unknown tunnel type: "{config.tunnel_type}"')
    if not config.vxlan_id:
        raise InvalidInput("pod-network.vxlan-id", "pod-network.vxlan-id is missing")


def _host_name(vni: int) -> str:
    return f"ppvx{vni}"


def _matches(link: Link, vni: int, dst: ipaddress.IPv4Address, port: int) -> bool:
    return link.vxlan == VxlanInfo(vni, dst, port)


def _prepare_pod_vxlan(nl: Netlink, interface: str, vni: int, dst: ipaddress.IPv4Address, port: int) -> bool:
    """True if the pod namespace already has the right ``vxlan1``; a wrong one is deleted."""
    if nl.link(interface) is None:
        raise FailedPrecondition(f"network namespace {nl.where} has no interface {interface}")
    existing = nl.link(POD_VXLAN_NAME)
    if existing is None:
        return False
    if _matches(existing, vni, dst, port):
        return True
    logger.info("replacing %s in %s (was %s)", POD_VXLAN_NAME, nl.where, existing.vxlan)
    _remove_redirects(nl, existing)
    nl.delete_link(existing.index)
    return False


def _create_pod_vxlan(nl: Netlink, vni: int, dst: ipaddress.IPv4Address, port: int, pod_netns: str) -> None:
    """In the host namespace: create the VXLAN and hand it to the pod namespace as ``vxlan1``."""
    name = _host_name(vni)
    _delete_named(nl, name)
    try:
        index = nl.add_vxlan(name, vni, dst, port)
    except NetlinkFailure as exc:
        if is_exists(exc):
            raise FailedPrecondition(
                f"VXLAN network identifier {vni} (port {port}) is already used by another device on this node"
            ) from exc
        raise
    try:
        nl.move_link(index, pod_netns, POD_VXLAN_NAME)
    except BaseException:
        nl.delete_link(index)
        raise


def _join(nl: Netlink, interface: str) -> None:
    """In the pod namespace: ``vxlan1`` up, and every frame redirected both ways."""
    pod, vx = nl.link(interface), nl.link(POD_VXLAN_NAME)
    if pod is None or vx is None:
        raise FailedPrecondition(
            f"network namespace {nl.where} lost {interface if pod is None else POD_VXLAN_NAME}"
        )
    if not vx.is_up:
        nl.set_link(vx.index, up=True)
    for src, dst in ((pod, vx), (vx, pod)):
        nl.ensure_ingress(src.index)
        filters, _ = nl.ingress_filters(src.index)
        if len(filters) == 1 and filters[0].prio == TC_PRIO and filters[0].target == dst.index:
            continue
        for prio in sorted({f.prio for f in filters} | {TC_PRIO}):
            nl.delete_filters(src.index, prio)
        nl.add_redirect(src.index, dst.index, TC_PRIO)


def _remove_redirects(nl: Netlink, link: Link) -> None:
    """Delete every redirect filter on the link's ingress, then the ingress qdisc if that left it empty."""
    filters, prios = nl.ingress_filters(link.index)
    redirect_prios = {f.prio for f in filters}
    for prio in redirect_prios:
        nl.delete_filters(link.index, prio)
    if prios and prios == len(redirect_prios) and nl.ingress_kind(link.index) == "ingress":
        nl.delete_ingress(link.index)


def _unjoin(nl: Netlink, interface: str) -> None:
    """In the pod namespace: drop the redirects and ``vxlan1``; the pod's own veth stays."""
    vx = nl.link(POD_VXLAN_NAME)
    pod = nl.link(interface)
    if pod is not None:
        _remove_redirects(nl, pod)
    if vx is not None and vx.kind == "vxlan":
        nl.delete_link(vx.index)


def _delete_named(nl: Netlink, name: str) -> None:
    link = nl.link(name)
    if link is not None:
        logger.info("deleting leftover link %s in %s", name, nl.where)
        nl.delete_link(link.index)


def _copy_routes(routes: Sequence[RouteEntry], links: Mapping[int, Link]) -> list[Route]:
    """The main-table unicast routes the VM side re-creates, sorted like the Go worker (by destination)."""
    out = []
    for r in routes:
        protocol = _KNOWN_PROTOCOLS.get(r.protocol)
        if r.type != RTN_UNICAST or r.multipath or protocol not in _COPIED_PROTOCOLS or r.oif not in links:
            logger.debug("not copying route %s (protocol %s, type %s)", r.dst, r.protocol, r.type)
            continue
        out.append(
            Route(
                dst=r.dst,
                gw=r.gateway,
                dev=links[r.oif].name,
                protocol=protocol or RouteProtocol.UNSPEC,
                scope=_KNOWN_SCOPES.get(r.scope, RouteScope.UNIVERSE),
            )
        )
    out.sort(key=lambda rt: (rt.destination.network_address, rt.destination.prefixlen))
    return out


def _split_suffix(name: str) -> tuple[str, int]:
    m = _SUFFIX_RE.match(name)
    if m is None:
        return name, sys.maxsize
    return m.group(1), int(m.group(2))
