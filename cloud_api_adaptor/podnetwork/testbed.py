"""Namespaces standing in for a worker node, a pod, a pod VM and a peer: the tunnel on one machine.

Used by the integration tests and the tunnel benchmark (and usable by an
end-to-end test of the local provider).  Everything lives in namespaces this
module creates, with documentation addresses only, and nothing is linked to
the machine's own namespace, so no packet can leave::

    peer (203.0.113.10) --veth-- node --veth-- pod (198.51.100.10/24, the CNI side)
                                  |  \\--veth-- plain (198.18.0.10, the no-tunnel baseline)
                                  |
                     underlay veth 192.0.2.1 <-> 192.0.2.2
                                  |
                                 vm --(VXLAN moved in)-- vmpod (the pod's IP again)

The node has no default route; the worker side uses ``HOST_INTERFACE=ul0``.
"""

from __future__ import annotations

import asyncio
import copy
import ipaddress
import secrets
import socket
from dataclasses import dataclass, field
from typing import Any

from cloud_api_adaptor.podnetwork.netlink import Netlink, in_netns
from cloud_api_adaptor.podnetwork.netns import (
    add_named_netns,
    delete_named_netns,
    run_in_netns,
    socket_in_netns,
)
from cloud_api_adaptor.podnetwork.notrack import NotrackBackend
from cloud_api_adaptor.podnetwork.workernode import WorkerNodeSettings

NODE_UNDERLAY = ipaddress.IPv4Interface("192.0.2.1/24")
VM_UNDERLAY = ipaddress.IPv4Interface("192.0.2.2/24")
POD_GATEWAY = ipaddress.IPv4Interface("198.51.100.1/24")
POD_IP = ipaddress.IPv4Interface("198.51.100.10/24")
PEER_GATEWAY = ipaddress.IPv4Interface("203.0.113.1/24")
PEER_IP = ipaddress.IPv4Interface("203.0.113.10/24")
PLAIN_GATEWAY = ipaddress.IPv4Interface("198.18.0.1/24")
PLAIN_IP = ipaddress.IPv4Interface("198.18.0.10/24")
UNDERLAY_LINK = "ul0"
POD_INTERFACE = "eth0"
_ROLES = ("node", "pod", "vm", "vmpod", "peer", "plain")


@dataclass
class Testbed:
    """Paths of the namespaces; ``aclose`` deletes them all (and every link inside)."""

    __test__ = False  # not a pytest test class
    prefix: str
    paths: dict[str, str] = field(default_factory=dict)

    @property
    def node(self) -> str:
        return self.paths["node"]

    @property
    def pod(self) -> str:
        return self.paths["pod"]

    @property
    def vm(self) -> str:
        return self.paths["vm"]

    @property
    def vmpod(self) -> str:
        return self.paths["vmpod"]

    @property
    def peer(self) -> str:
        return self.paths["peer"]

    @property
    def plain(self) -> str:
        return self.paths["plain"]

    def names(self) -> list[str]:
        return [f"{self.prefix}-{role}" for role in self.paths]

    def worker_settings(self, **overrides: object) -> WorkerNodeSettings:
        """Worker settings for this node: the underlay interface, not dedicated."""
        values: dict[str, object] = {
            "host_interface": UNDERLAY_LINK,
            "host_netns": self.node,
            "dedicated": False,
        }
        values.update(overrides)
        return WorkerNodeSettings(**values)  # type: ignore[arg-type]

    @classmethod
    async def create(cls, *, prefix: str | None = None, underlay_mtu: int = 1500) -> Testbed:
        """Build the namespaces and links; on failure, remove whatever was made."""
        bed = cls(prefix or f"caa{secrets.token_hex(3)}")
        try:
            for role in _ROLES:
                bed.paths[role] = await add_named_netns(f"{bed.prefix}-{role}")
            await bed._wire(underlay_mtu)
        except BaseException:
            await bed.aclose()
            raise
        return bed

    async def aclose(self) -> None:
        """Delete every namespace of the bed (idempotent)."""
        for name in self.names():
            await delete_named_netns(name)

    async def leftovers(self, notrack: NotrackBackend | None = None) -> list[str]:
        """What a tunnel left behind: VXLAN links, ingress qdiscs or filters, NOTRACK rules.

        Empty after a clean teardown; the namespaces' own veths do not count.
        """

        def scan(nl: Netlink) -> list[str]:
            found = []
            for link in nl.links():
                if link.kind == "vxlan":
                    found.append(f"{nl.where}: vxlan link {link.name} ({link.vxlan})")
                    continue
                kind = nl.ingress_kind(link.index)
                if kind is not None:
                    filters, prios = nl.ingress_filters(link.index)
                    found.append(f"{nl.where}: {kind} qdisc on {link.name} ({prios} filter prios, {filters})")
            return found

        found: list[str] = []
        for path in self.paths.values():
            found += await in_netns(path, scan)
        if notrack is not None:
            for path in (self.node, self.vm):
                found += [f"{path}: {rule}" for rule in await run_in_netns(path, notrack.rules)]
        return found

    async def _wire(self, underlay_mtu: int) -> None:
        for path in self.paths.values():
            await in_netns(path, _lo_up)
        await run_in_netns(self.node, _enable_forwarding)

        def node_side(nl: Netlink) -> dict[str, str]:
            macs = {}
            for name, peer_ns, addr, mtu in (
                ("pod0-n", self.pod, POD_GATEWAY, 1500),
                (UNDERLAY_LINK, self.vm, NODE_UNDERLAY, underlay_mtu),
                ("peer0-n", self.peer, PEER_GATEWAY, 1500),
                ("plain0-n", self.plain, PLAIN_GATEWAY, 1500),
            ):
                index = nl.add_veth(name, f"{name}-p", peer_ns)
                nl.set_link(index, mtu=mtu, up=True)
                nl.add_address(index, addr)
                link = nl.link(name)
                macs[name] = link.mac if link else ""
            return macs

        macs = await in_netns(self.node, node_side)
        await in_netns(
            self.vm, lambda nl: _peer_end(nl, "ul0-p", UNDERLAY_LINK, VM_UNDERLAY, None, underlay_mtu)
        )
        await in_netns(
            self.pod, lambda nl: _peer_end(nl, "pod0-n-p", POD_INTERFACE, POD_IP, POD_GATEWAY, 1500)
        )
        await in_netns(
            self.peer, lambda nl: _peer_end(nl, "peer0-n-p", POD_INTERFACE, PEER_IP, PEER_GATEWAY, 1500)
        )
        await in_netns(
            self.plain, lambda nl: _peer_end(nl, "plain0-n-p", POD_INTERFACE, PLAIN_IP, PLAIN_GATEWAY, 1500)
        )

        def pod_neighbor(nl: Netlink) -> None:  # a permanent ARP entry, as some CNIs add
            eth = nl.link(POD_INTERFACE)
            assert eth is not None
            nl.replace_neighbor(POD_GATEWAY.ip, macs["pod0-n"], eth.index)

        await in_netns(self.pod, pod_neighbor)


def _lo_up(nl: Netlink) -> None:
    lo = nl.link("lo")
    if lo is not None:
        nl.set_link(lo.index, up=True)


def _enable_forwarding() -> None:
    with open("/proc/sys/net/ipv4/ip_forward", "w", encoding="ascii") as f:
        f.write("1\n")


def _peer_end(
    nl: Netlink,
    old: str,
    new: str,
    addr: ipaddress.IPv4Interface,
    gateway: ipaddress.IPv4Interface | None,
    mtu: int,
) -> None:
    link = nl.link(old)
    assert link is not None, f"{old} missing in {nl.where}"
    nl.rename_link(link.index, new)
    nl.set_link(link.index, mtu=mtu, up=True)
    nl.add_address(link.index, addr)
    if gateway is not None:
        nl.replace_route(ipaddress.IPv4Network("0.0.0.0/0"), oif=link.index, gateway=gateway.ip, protocol=3)


# ---- TCP helpers: servers and clients living in a namespace --------------------------------


async def start_echo_server(netns: str, host: str, port: int = 0) -> tuple[asyncio.Server, int]:
    """A TCP server in ``netns`` that echoes each connection's bytes back; returns it and its port."""
    sock = await socket_in_netns(netns)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(16)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()
            await writer.wait_closed()

    server = await asyncio.start_server(echo, sock=sock)
    return server, sock.getsockname()[1]


async def open_connection_in(
    netns: str, host: str, port: int, timeout: float = 10.0
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection from inside ``netns``."""
    sock = await socket_in_netns(netns)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (host, port)), timeout)
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock)


async def echo_roundtrip(netns: str, host: str, port: int, payload: bytes, timeout: float = 10.0) -> bytes:
    """Send ``payload`` from ``netns`` to an echo server and return what came back."""
    reader, writer = await open_connection_in(netns, host, port, timeout)
    try:
        writer.write(payload)
        await writer.drain()
        writer.write_eof()
        return await asyncio.wait_for(reader.read(-1), timeout)
    finally:
        writer.close()
        await writer.wait_closed()


def go_daemon_rendering(pod_network: dict[str, Any]) -> dict[str, Any]:
    """The same object as the Go daemon v0.22 writes it.

    Addresses it read from netlink as 16 bytes come out IPv4-mapped (keeping the
    IPv4 prefix length), empty gateways as ``""``, no neighbours as null.
    """
    go = copy.deepcopy(pod_network)

    def mapped(text: str) -> str:
        return f"::ffff:{text}" if text else text

    for route in go.get("routes") or []:
        route["dst"] = mapped(route.get("dst") or "0.0.0.0/0")
        route["gw"] = mapped(route.get("gw") or "")
    for neighbor in go.get("neighbors") or []:
        neighbor["ip"] = mapped(neighbor["ip"])
    go["neighbors"] = go.get("neighbors") or None
    go["podip"] = mapped(go["podip"])
    go["worker-node-ip"] = mapped(go["worker-node-ip"])
    return go
