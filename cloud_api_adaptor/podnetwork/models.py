"""The ``pod-network`` object of apf.json: what the worker learned about the pod's network.

The worker fills it in at CreateVM (``workernode.inspect``) and the pod VM
rebuilds the pod interface from it (``podnode.setup_pod_node``).  The JSON keys
and encodings are the Go adaptor's (``tunneler.Config``), so a Go forwarder
reads what we write and the other way round:

- prefixes and addresses are text (``"198.51.100.10/24"``); a missing gateway
  is ``""`` (Go's zero ``netip.Addr``; ``omitempty`` never drops it);
- route protocol and scope, and neighbour state, are names; the zero values
  (``unspec``, ``universe``, ``none``) are left out, as Go's ``omitempty`` does;
- an empty route or neighbour list is ``null`` (Go's nil slice);
- ``vxlan-port`` and ``vxlan-id`` are left out when 0.

Decoding is strict about types (the error names the field, e.g.
``pod-network.routes[1].gw``) and ignores unknown keys, as Go does.  Only IPv4
is modelled: the Go worker reads IPv4 addresses and routes only.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from cloud_api_adaptor.errors import InvalidInput
from cloud_api_adaptor.jsontypes import json_type_name
from cloud_api_adaptor.wire import VXLAN_PORT

FIELD = "pod-network"
TUNNEL_VXLAN = "vxlan"

MAX_VNI = (1 << 24) - 1

_E = TypeVar("_E", bound=enum.Enum)
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


class RouteProtocol(enum.Enum):
    """rtnetlink route protocol (``rtm_protocol``), named as on the wire."""

    UNSPEC = 0
    REDIRECT = 1
    KERNEL = 2
    BOOT = 3
    STATIC = 4
    DHCP = 16

    @property
    def wire(self) -> str:
        return self.name.lower()


class RouteScope(enum.Enum):
    """rtnetlink route scope (``rtm_scope``), named as on the wire."""

    UNIVERSE = 0
    SITE = 200
    LINK = 253
    HOST = 254
    NOWHERE = 255

    @property
    def wire(self) -> str:
        return self.name.lower()


class NeighborState(enum.Enum):
    """Neighbour (ARP) entry state (``ndm_state`` NUD_* bits), named as on the wire."""

    NONE = 0x00
    INCOMPLETE = 0x01
    REACHABLE = 0x02
    STALE = 0x04
    DELAY = 0x08
    PROBE = 0x10
    FAILED = 0x20
    NOARP = 0x40
    PERMANENT = 0x80

    @property
    def wire(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Route:
    """One IPv4 route of the pod namespace's main table.

    ``dst`` None is Go's zero prefix (``""``), applied as the default route;
    ``gw`` None means an on-link route.
    """

    dst: ipaddress.IPv4Network | None
    gw: ipaddress.IPv4Address | None = None
    dev: str = ""
    protocol: RouteProtocol = RouteProtocol.UNSPEC
    scope: RouteScope = RouteScope.UNIVERSE

    @property
    def destination(self) -> ipaddress.IPv4Network:
        """The destination to install (the zero prefix means the default route)."""
        return self.dst if self.dst is not None else ipaddress.IPv4Network("0.0.0.0/0")

    def to_json_obj(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "dst": str(self.dst) if self.dst is not None else "",
            "gw": str(self.gw) if self.gw is not None else "",
        }
        if self.dev:
            out["dev"] = self.dev
        if self.protocol is not RouteProtocol.UNSPEC:
            out["protocol"] = self.protocol.wire
        if self.scope is not RouteScope.UNIVERSE:
            out["scope"] = self.scope.wire
        return out

    @classmethod
    def from_json_obj(cls, obj: object, where: str) -> Route:
        m = _object(obj, where)
        return cls(
            dst=_opt_network(m.get("dst"), f"{where}.dst"),
            gw=_opt_address(m.get("gw"), f"{where}.gw"),
            dev=_str(m.get("dev", ""), f"{where}.dev"),
            protocol=_enum(RouteProtocol, m.get("protocol"), f"{where}.protocol", RouteProtocol.UNSPEC),
            scope=_enum(RouteScope, m.get("scope"), f"{where}.scope", RouteScope.UNIVERSE),
        )


@dataclass(frozen=True)
class Neighbor:
    """One IPv4 neighbour (ARP) entry; the worker copies the permanent ones."""

    ip: ipaddress.IPv4Address | None
    hw_addr: str = ""
    dev: str = ""
    state: NeighborState = NeighborState.NONE

    def __post_init__(self) -> None:
        if self.hw_addr:
            object.__setattr__(self, "hw_addr", normalize_mac(self.hw_addr, "hw-addr"))

    def to_json_obj(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ip": str(self.ip) if self.ip is not None else ""}
        if self.hw_addr:
            out["hw-addr"] = self.hw_addr
        if self.dev:
            out["dev"] = self.dev
        if self.state is not NeighborState.NONE:
            out["state"] = self.state.wire
        return out

    @classmethod
    def from_json_obj(cls, obj: object, where: str) -> Neighbor:
        m = _object(obj, where)
        hw = _str(m.get("hw-addr", ""), f"{where}.hw-addr")
        return cls(
            ip=_opt_address(m.get("ip"), f"{where}.ip"),
            hw_addr=normalize_mac(hw, f"{where}.hw-addr") if hw else "",
            dev=_str(m.get("dev", ""), f"{where}.dev"),
            state=_enum(NeighborState, m.get("state"), f"{where}.state", NeighborState.NONE),
        )


@dataclass(frozen=True)
class PodNetworkConfig:
    """The ``pod-network`` object of apf.json (Go ``tunneler.Config``)."""

    pod_ip: ipaddress.IPv4Interface
    """The pod's address with its prefix length, as on the pod interface."""
    pod_hw_addr: str
    """The pod interface's MAC, lower-case, colon-separated."""
    interface: str
    """The pod interface's name (e.g. ``eth0``); the VM side gives its tunnel this name."""
    worker_node_ip: ipaddress.IPv4Interface
    """The worker's tunnel endpoint address with its prefix length."""
    tunnel_type: str = TUNNEL_VXLAN
    routes: tuple[Route, ...] = ()
    neighbors: tuple[Neighbor, ...] = ()
    mtu: int = 0
    """The pod interface's MTU in bytes (the VM side caps it)."""
    index: int = 0
    """The pod's index on the worker (VNI minus the first VNI); informational."""
    vxlan_port: int = 0
    """VXLAN UDP port; 0 means the default, 4789."""
    vxlan_id: int = 0
    """VXLAN network identifier (VNI)."""
    dedicated: bool = False
    """The tunnel runs over a dedicated interface: the worker dials the VM's second address."""
    external_net_via_pod_vm: bool = False
    """The VM's second NIC carries the pod's external traffic (AWS/Alibaba only)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "pod_hw_addr", normalize_mac(self.pod_hw_addr, f"{FIELD}.pod-hw-addr"))
        for name, value, low, high in (
            ("mtu", self.mtu, 0, 65535),
            ("index", self.index, 0, MAX_VNI),
            ("vxlan-port", self.vxlan_port, 0, 65535),
            ("vxlan-id", self.vxlan_id, 0, MAX_VNI),
        ):
            if not low <= value <= high:
                raise InvalidInput(f"{FIELD}.{name}", f"{FIELD}.{name}: {value} is outside {low}..{high}")

    @property
    def effective_vxlan_port(self) -> int:
        return self.vxlan_port or VXLAN_PORT

    def to_json_obj(self) -> dict[str, Any]:
        """The JSON object with Go's keys, order and omitempty rules."""
        out: dict[str, Any] = {
            "podip": str(self.pod_ip),
            "pod-hw-addr": self.pod_hw_addr,
            "interface": self.interface,
            "worker-node-ip": str(self.worker_node_ip),
            "tunnel-type": self.tunnel_type,
            "routes": [r.to_json_obj() for r in self.routes] or None,
            "neighbors": [n.to_json_obj() for n in self.neighbors] or None,
            "mtu": self.mtu,
            "index": self.index,
        }
        if self.vxlan_port:
            out["vxlan-port"] = self.vxlan_port
        if self.vxlan_id:
            out["vxlan-id"] = self.vxlan_id
        out["dedicated"] = self.dedicated
        out["external-net-via-pod-vm"] = self.external_net_via_pod_vm
        return out

    @classmethod
    def from_json_obj(cls, obj: object) -> PodNetworkConfig:
        """Decode the ``pod-network`` object; ``InvalidInput`` names the field at fault."""
        m = _object(obj, FIELD)
        for key in ("podip", "pod-hw-addr", "interface", "worker-node-ip"):
            if m.get(key) in (None, ""):
                raise InvalidInput(f"{FIELD}.{key}", f"{FIELD}.{key} is missing")
        return cls(
            pod_ip=_interface(m["podip"], f"{FIELD}.podip"),
            pod_hw_addr=_str(m["pod-hw-addr"], f"{FIELD}.pod-hw-addr"),
            interface=_str(m["interface"], f"{FIELD}.interface"),
            worker_node_ip=_interface(m["worker-node-ip"], f"{FIELD}.worker-node-ip"),
            tunnel_type=_str(m.get("tunnel-type", ""), f"{FIELD}.tunnel-type"),
            routes=tuple(
                Route.from_json_obj(r, f"{FIELD}.routes[{i}]")
                for i, r in enumerate(_list(m.get("routes"), f"{FIELD}.routes"))
            ),
            neighbors=tuple(
                Neighbor.from_json_obj(n, f"{FIELD}.neighbors[{i}]")
                for i, n in enumerate(_list(m.get("neighbors"), f"{FIELD}.neighbors"))
            ),
            mtu=_int(m.get("mtu", 0), f"{FIELD}.mtu"),
            index=_int(m.get("index", 0), f"{FIELD}.index"),
            vxlan_port=_int(m.get("vxlan-port", 0), f"{FIELD}.vxlan-port"),
            vxlan_id=_int(m.get("vxlan-id", 0), f"{FIELD}.vxlan-id"),
            dedicated=_bool(m.get("dedicated", False), f"{FIELD}.dedicated"),
            external_net_via_pod_vm=_bool(
                m.get("external-net-via-pod-vm", False), f"{FIELD}.external-net-via-pod-vm"
            ),
        )


def normalize_mac(value: str, where: str) -> str:
    """Lower-case ``aa:bb:cc:dd:ee:ff`` (Go's ``net.HardwareAddr.String``); ``-`` separators accepted."""
    mac = value.strip().lower().replace("-", ":")
    if not _MAC_RE.match(mac):
        raise InvalidInput(where, f"{where}: {value!r} is not a 6-byte MAC address")
    return mac


# ---- strict JSON field readers --------------------------------------------------------------


def _wrong(where: str, expected: str, value: object) -> InvalidInput:
    return InvalidInput(where, f"{where}: expected {expected}, got {json_type_name(value)}")


def _object(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _wrong(where, "an object", value)
    return value


def _list(value: object, where: str) -> Sequence[object]:
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        raise _wrong(where, "an array", value)
    return value


def _str(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise _wrong(where, "a string", value)
    return value


def _int(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _wrong(where, "an integer", value)
    return value


def _bool(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise _wrong(where, "a boolean", value)
    return value


def _ipv4(text: str) -> ipaddress.IPv4Address:
    """An IPv4 address, also written IPv4-mapped (``::ffff:10.0.0.1``, how Go's netip renders
    addresses it read from netlink as 16 bytes); ValueError otherwise."""
    try:
        return ipaddress.IPv4Address(text)
    except ValueError:
        mapped = ipaddress.IPv6Address(text).ipv4_mapped
        if mapped is None:
            raise
        return mapped


def _ipv4_prefix(text: str) -> tuple[ipaddress.IPv4Address, int]:
    """Address and IPv4 prefix length of ``a/n``; an IPv4-mapped address keeps an IPv4 length
    (``::ffff:0.0.0.0/0``, as the Go daemon writes it) or has its 96 mapping bits taken off."""
    address, slash, length_text = text.partition("/")
    if not slash or not length_text.isdigit():  # netip.ParsePrefix needs the length too
        raise ValueError(text)
    ip, length = _ipv4(address), int(length_text)
    if ":" in address and length > 32:
        length -= 96
    if not 0 <= length <= 32:
        raise ValueError(text)
    return ip, length


def _interface(value: object, where: str) -> ipaddress.IPv4Interface:
    text = _str(value, where)
    try:
        ip, length = _ipv4_prefix(text)
        return ipaddress.IPv4Interface((ip, length))
    except ValueError as exc:
        raise InvalidInput(where, f"{where}: {text!r} is not an IPv4 address with a prefix length") from exc


def _opt_network(value: object, where: str) -> ipaddress.IPv4Network | None:
    text = _str("" if value is None else value, where)
    if not text:
        return None
    try:
        ip, length = _ipv4_prefix(text)
        return ipaddress.IPv4Network((ip, length), strict=False)
    except ValueError as exc:
        raise InvalidInput(where, f"{where}: {text!r} is not an IPv4 prefix") from exc


def _opt_address(value: object, where: str) -> ipaddress.IPv4Address | None:
    text = _str("" if value is None else value, where)
    if not text:
        return None
    try:
        return _ipv4(text)
    except ValueError as exc:
        raise InvalidInput(where, f"{where}: {text!r} is not an IPv4 address") from exc


def _enum(kind: type[_E], value: object, where: str, default: _E) -> _E:
    if value is None or value == "":
        return default
    text = _str(value, where)
    for member in kind:
        if member.name.lower() == text:
            return member
    names = ", ".join(m.name.lower() for m in kind)
    raise InvalidInput(where, f"{where}: unknown value {text!r} (one of {names})")
