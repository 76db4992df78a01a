"""The only module that talks netlink: typed links, addresses, routes, neighbours and tc.

``Netlink`` wraps a synchronous pyroute2 ``IPRoute`` bound to one network
namespace; ``in_netns(path, fn)`` opens it inside the namespace on a fresh
thread (see ``netns``) and runs ``fn`` there, so a sequence of steps in one
namespace costs one thread and one socket.  Why the synchronous ``IPRoute`` on a
thread rather than ``AsyncIPRoute``: the socket must be created *inside* the
target namespace, which needs a thread that can ``setns`` (pyroute2's own
``netns=`` forks instead), and netlink requests are short, so nothing is gained
by interleaving them on the event loop.

pyroute2's ``NetlinkError`` (and ``OSError``) never leave this module: they
become ``NetlinkFailure`` carrying the errno and the operation; the
``is_exists``/``is_missing`` predicates let callers make steps idempotent.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.protocols import ETH_P_ALL

from cloud_api_adaptor.errors import FailedPrecondition
from cloud_api_adaptor.podnetwork.netns import run_in_netns

logger = logging.getLogger(__name__)
T = TypeVar("T")

IFF_UP = 0x1
RT_TABLE_MAIN = 254
RTN_UNICAST = 1
NUD_PERMANENT = 0x80
TC_H_INGRESS = 0xFFFF0000
_MIRRED_EGRESS_REDIRECT = 1
_MISSING = frozenset({errno.ENODEV, errno.ENOENT, errno.ESRCH, errno.EADDRNOTAVAIL})


class NetlinkFailure(FailedPrecondition):
    """The kernel refused a netlink request (``errno`` says why)."""

    def __init__(self, operation: str, err: int, detail: str = "") -> None:
        super().__init__(f"{operation}: {detail or os.strerror(err)} (errno {err})")
        self.operation = operation
        self.errno = err


def is_exists(exc: NetlinkFailure) -> bool:
    return exc.errno == errno.EEXIST


def is_missing(exc: NetlinkFailure) -> bool:
    return exc.errno in _MISSING


@dataclass(frozen=True)
class VxlanInfo:
    """The parameters that identify a VXLAN device."""

    vni: int
    group: ipaddress.IPv4Address | None
    port: int


@dataclass(frozen=True)
class Link:
    """A network interface as the kernel reports it."""

    index: int
    name: str
    kind: str
    mac: str
    mtu: int
    is_up: bool
    vxlan: VxlanInfo | None = None


@dataclass(frozen=True)
class Address:
    """An IPv4 address on an interface."""

    index: int
    interface: ipaddress.IPv4Interface


@dataclass(frozen=True)
class RouteEntry:
    """An IPv4 route (any table); ``gateway`` None is on-link."""

    dst: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address | None
    oif: int
    table: int
    protocol: int
    scope: int
    type: int
    multipath: bool = False

    @property
    def is_default(self) -> bool:
        return self.dst.prefixlen == 0


@dataclass(frozen=True)
class NeighborEntry:
    """An IPv4 neighbour (ARP) entry."""

    ip: ipaddress.IPv4Address
    mac: str
    index: int
    state: int


@dataclass(frozen=True)
class RedirectFilter:
    """A u32 filter on an ingress qdisc whose action redirects to ``target`` (0: the target is gone)."""

    prio: int
    target: int


class Netlink:
    """Typed netlink operations in one namespace (use through ``in_netns``)."""

    def __init__(self, ipr: Any, where: str) -> None:
        self._ipr = ipr
        self.where = where

    @contextmanager
    def _op(self, operation: str) -> Iterator[None]:
        try:
            yield
        except NetlinkError as exc:
            raise NetlinkFailure(f"{operation} (netns {self.where})", exc.code) from exc
        except OSError as exc:
            raise NetlinkFailure(f"{operation} (netns {self.where})", exc.errno or errno.EIO) from exc

    # ---- links ----------------------------------------------------------------------------

    def links(self) -> list[Link]:
        with self._op("list links"):
            return [_link(m) for m in self._ipr.get_links()]

    def link(self, name: str) -> Link | None:
        """The link called ``name``, or None (one request: a full dump costs much more to parse)."""
        try:
            with self._op(f"get link {name}"):
                msgs = self._ipr.link("get", ifname=name)
        except NetlinkFailure as exc:
            if is_missing(exc):
                return None
            raise
        return _link(msgs[0]) if msgs else None

    def add_vxlan(self, name: str, vni: int, group: ipaddress.IPv4Address, port: int) -> int:
        """Create a VXLAN device and return its index.

        ``group`` is the remote end: pyroute2 takes a unicast peer through the
        ``vxlan_group`` attribute (the kernel's IFLA_VXLAN_GROUP carries both).
        """
        with self._op(f"create vxlan {name} (vni {vni}, remote {group}, port {port})"):
            self._ipr.link(
                "add", ifname=name, kind="vxlan", vxlan_id=vni, vxlan_group=str(group), vxlan_port=port
            )
            return int(self._ipr.link_lookup(ifname=name)[0])

    def add_veth(self, name: str, peer: str, peer_netns: str | None = None) -> int:
        """Create a veth pair; the peer goes to ``peer_netns`` (a path) when given."""
        with self._op(f"create veth {name}/{peer}"):
            spec: dict[str, Any] = {"ifname": peer}
            fd = os.open(peer_netns, os.O_RDONLY | os.O_CLOEXEC) if peer_netns else None
            try:
                if fd is not None:
                    spec["net_ns_fd"] = fd
                self._ipr.link("add", ifname=name, kind="veth", peer=spec)
            finally:
                if fd is not None:
                    os.close(fd)
            return int(self._ipr.link_lookup(ifname=name)[0])

    def move_link(self, index: int, netns_path: str, new_name: str | None = None) -> None:
        """Move a link to another namespace, renaming it there in the same request."""
        with self._op(f"move link {index} to {netns_path}"):
            fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                kwargs: dict[str, Any] = {"index": index, "net_ns_fd": fd}
                if new_name:
                    kwargs["ifname"] = new_name
                self._ipr.link("set", **kwargs)
            finally:
                os.close(fd)

    def rename_link(self, index: int, name: str) -> None:
        """Rename a link (it must be down)."""
        with self._op(f"rename link {index} to {name}"):
            self._ipr.link("set", index=index, ifname=name)

    def set_link(
        self, index: int, *, up: bool | None = None, mtu: int | None = None, mac: str | None = None
    ) -> None:
        with self._op(f"set link {index}"):
            kwargs: dict[str, Any] = {}
            if mtu is not None:
                kwargs["mtu"] = mtu
            if mac is not None:
                kwargs["address"] = mac
            if up is not None:
                kwargs["state"] = "up" if up else "down"
            if kwargs:
                self._ipr.link("set", index=index, **kwargs)

    def delete_link(self, index: int) -> bool:
        """Delete a link; False if it was already gone."""
        try:
            with self._op(f"delete link {index}"):
                self._ipr.link("del", index=index)
        except NetlinkFailure as exc:
            if is_missing(exc):
                return False
            raise
        return True

    # ---- addresses ------------------------------------------------------------------------

    def addresses(self, index: int | None = None) -> list[Address]:
        with self._op("list addresses"):
            msgs = self._ipr.get_addr(family=socket.AF_INET)
        out = []
        for m in msgs:
            if index is not None and m["index"] != index:
                continue
            addr = m.get_attr("IFA_ADDRESS") or m.get_attr("IFA_LOCAL")
            out.append(Address(m["index"], ipaddress.IPv4Interface(f"{addr}/{m['prefixlen']}")))
        return out

    def add_address(self, index: int, iface: ipaddress.IPv4Interface) -> bool:
        """Add an address; False if it was already there."""
        try:
            with self._op(f"add address {iface} to link {index}"):
                self._ipr.addr("add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
        except NetlinkFailure as exc:
            if is_exists(exc):
                return False
            raise
        return True

    # ---- routes ---------------------------------------------------------------------------

    def routes(self, table: int | None = RT_TABLE_MAIN) -> list[RouteEntry]:
        """IPv4 routes of ``table`` (None: every table)."""
        with self._op("list routes"):
            msgs = self._ipr.get_routes(family=socket.AF_INET)
        out = []
        for m in msgs:
            tab = m.get_attr("RTA_TABLE") or m["table"]
            if table is not None and tab != table:
                continue
            gw = m.get_attr("RTA_GATEWAY")
            out.append(
                RouteEntry(
                    dst=ipaddress.IPv4Network(
                        f"{m.get_attr('RTA_DST') or '0.0.0.0'}/{m['dst_len']}", strict=False
                    ),
                    gateway=ipaddress.IPv4Address(gw) if gw else None,
                    oif=m.get_attr("RTA_OIF") or 0,
                    table=tab,
                    protocol=m["proto"],
                    scope=m["scope"],
                    type=m["type"],
                    multipath=m.get_attr("RTA_MULTIPATH") is not None,
                )
            )
        return out

    def replace_route(
        self,
        dst: ipaddress.IPv4Network,
        *,
        oif: int,
        gateway: ipaddress.IPv4Address | None = None,
        protocol: int = 3,
        scope: int = 0,
    ) -> None:
        """Add or overwrite a main-table route (idempotent)."""
        with self._op(f"replace route {dst} via {gateway or '-'} dev {oif}"):
            kwargs: dict[str, Any] = {
                "dst": str(dst),
                "oif": oif,
                "proto": protocol,
                "scope": scope,
                "table": RT_TABLE_MAIN,
            }
            if gateway is not None:
                kwargs["gateway"] = str(gateway)
            self._ipr.route("replace", **kwargs)

    def delete_route(self, dst: ipaddress.IPv4Network, *, oif: int, protocol: int | None = None) -> bool:
        """Delete a main-table route; False if there was none."""
        try:
            with self._op(f"delete route {dst} dev {oif}"):
                # scope "nowhere" is the kernel's wildcard when deleting
                kwargs: dict[str, Any] = {"dst": str(dst), "oif": oif, "table": RT_TABLE_MAIN, "scope": 255}
                if protocol is not None:
                    kwargs["proto"] = protocol
                self._ipr.route("del", **kwargs)
        except NetlinkFailure as exc:
            if is_missing(exc):
                return False
            raise
        return True

    # ---- neighbours -----------------------------------------------------------------------

    def neighbors(self) -> list[NeighborEntry]:
        with self._op("list neighbours"):
            msgs = self._ipr.get_neighbours(family=socket.AF_INET)
        out = []
        for m in msgs:
            dst = m.get_attr("NDA_DST")
            if not dst:
                continue
            out.append(
                NeighborEntry(
                    ipaddress.IPv4Address(dst), m.get_attr("NDA_LLADDR") or "", m["ifindex"], m["state"]
                )
            )
        return out

    def replace_neighbor(
        self, ip: ipaddress.IPv4Address, mac: str, index: int, state: int = NUD_PERMANENT
    ) -> None:
        with self._op(f"replace neighbour {ip} lladdr {mac} dev {index}"):
            self._ipr.neigh("replace", dst=str(ip), lladdr=mac, ifindex=index, state=state)

    # ---- tc: ingress qdisc and redirect filters -------------------------------------------

    def ensure_ingress(self, index: int) -> None:
        """Attach an ingress qdisc (an existing ingress or clsact qdisc is fine)."""
        try:
            with self._op(f"add ingress qdisc to link {index}"):
                self._ipr.tc("add", "ingress", index, "ffff:")
        except NetlinkFailure as exc:
            if not is_exists(exc):
                raise

    def ingress_kind(self, index: int) -> str | None:
        """``ingress`` or ``clsact`` if the link has a qdisc on its ingress hook, else None."""
        with self._op(f"list qdiscs of link {index}"):
            msgs = self._ipr.get_qdiscs(index=index)
        for m in msgs:
            kind = m.get_attr("TCA_KIND")
            if m["index"] == index and kind in ("ingress", "clsact"):
                return str(kind)
        return None

    def delete_ingress(self, index: int) -> bool:
        """Remove the ingress qdisc (and every filter on it); False if there was none."""
        try:
            with self._op(f"delete ingress qdisc of link {index}"):
                self._ipr.tc("del", "ingress", index, "ffff:")
        except NetlinkFailure as exc:
            if is_missing(exc) or exc.errno == errno.EINVAL:
                return False
            raise
        return True

    def ingress_filters(self, index: int) -> tuple[list[RedirectFilter], int]:
        """The u32 egress-redirect filters on the ingress qdisc, and how many filter prios there are."""
        if self.ingress_kind(index) is None:
            return [], 0
        with self._op(f"list ingress filters of link {index}"):
            msgs = list(self._ipr.get_filters(index=index, parent=TC_H_INGRESS))
        redirects = []
        prios = set()
        for m in msgs:
            prio = (m["info"] >> 16) & 0xFFFF
            prios.add(prio)
            if m.get_attr("TCA_KIND") != "u32":
                continue
            target = _redirect_target(m)
            if target is not None:
                redirects.append(RedirectFilter(prio, target))
        return redirects, len(prios)

    def add_redirect(self, index: int, target: int, prio: int) -> None:
        """Steal every frame arriving on ``index`` and send it out of ``target`` (u32 match-all + mirred)."""
        with self._op(f"add redirect filter {index} -> {target}"):
            self._ipr.tc(
                "add-filter",
                "u32",
                index,
                parent="ffff:",
                protocol=ETH_P_ALL,
                prio=prio,
                target=0,
                keys=["0x0/0x0+0"],
                action={"kind": "mirred", "direction": "egress", "action": "redirect", "ifindex": target},
            )

    def delete_filters(self, index: int, prio: int) -> bool:
        """Delete every filter at ``prio`` on the ingress qdisc; False if there were none."""
        try:
            with self._op(f"delete ingress filters prio {prio} of link {index}"):
                self._ipr.tc(
                    "del-filter", kind=None, index=index, parent="ffff:", prio=prio, protocol=ETH_P_ALL
                )
        except NetlinkFailure as exc:
            if is_missing(exc) or exc.errno == errno.EINVAL:
                return False
            raise
        return True


async def in_netns(path: str | None, fn: Callable[[Netlink], T], *, what: str = "netlink") -> T:
    """Open a ``Netlink`` inside the namespace at ``path`` (None: the caller's) and run ``fn``."""

    def run() -> T:
        try:
            ipr = IPRoute()
        except OSError as exc:
            raise NetlinkFailure(
                f"open netlink socket (netns {path or 'self'})", exc.errno or errno.EIO
            ) from exc
        try:
            return fn(Netlink(ipr, path or "self"))
        finally:
            ipr.close()

    return await run_in_netns(path, run, what=what)


def _link(m: Any) -> Link:
    info = m.get_attr("IFLA_LINKINFO")
    kind = ""
    vxlan = None
    if info is not None:
        kind = info.get_attr("IFLA_INFO_KIND") or ""
        data = info.get_attr("IFLA_INFO_DATA")
        if kind == "vxlan" and data is not None:
            group = data.get_attr("IFLA_VXLAN_GROUP")
            vxlan = VxlanInfo(
                vni=data.get_attr("IFLA_VXLAN_ID") or 0,
                group=ipaddress.IPv4Address(group) if group else None,
                port=data.get_attr("IFLA_VXLAN_PORT") or 0,
            )
    return Link(
        index=m["index"],
        name=m.get_attr("IFLA_IFNAME") or "",
        kind=kind,
        mac=(m.get_attr("IFLA_ADDRESS") or "").lower(),
        mtu=m.get_attr("IFLA_MTU") or 0,
        is_up=bool(m["flags"] & IFF_UP),
        vxlan=vxlan,
    )


def _redirect_target(m: Any) -> int | None:
    options = m.get_attr("TCA_OPTIONS")
    if options is None:
        return None
    acts = options.get_attr("TCA_U32_ACT")
    if acts is None:
        return None
    for _, act in acts.get("attrs", ()):
        if not hasattr(act, "get_attr") or act.get_attr("TCA_ACT_KIND") != "mirred":
            continue
        act_opts = act.get_attr("TCA_ACT_OPTIONS")
        parms = act_opts.get_attr("TCA_MIRRED_PARMS") if act_opts is not None else None
        if parms is not None and parms["eaction"] == _MIRRED_EGRESS_REDIRECT:
            return int(parms["ifindex"])
    return None
