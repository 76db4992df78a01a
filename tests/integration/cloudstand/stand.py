"""The network stand of the daemon-level AWS tests: a node and a pod VM in namespaces of their own.

::

    root ns: test process, moto          node ns: the daemon                 vm ns: the pod VM
    <root_if> 203.0.113.a/30 ==veth== <node_up> 203.0.113.a+1/30
                                      <node_vm> 198.51.100.1/24 ==veth== <vm_if> instance IP/24

The daemon must reach two things: the EC2 endpoint (moto, served from the test
process on the root side of the /30) and the private IP moto gave the pod VM.
Nothing else is routed: the node and vm namespaces have no default route, so a
packet for any other address fails at once (ENETUNREACH) and can never leave
through the machine's own interfaces.  IPv6 is off on every test link.

The root-to-node link is a /30 taken from 203.0.113.0/24 that nothing in the root
namespace overlaps.  (192.0.2.0/30 is unusable: development and CI machines carry
192.0.2.2/24 on eth0 with their gateway at 192.0.2.1, and a /30 there would
hijack that gateway.)  moto's VPC uses 198.51.100.0/24; that range exists only
inside the stand's own namespaces.

Names are unique per stand; ``remove()`` deletes both namespaces, which destroys
the veth pairs with them.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import secrets
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

VM_SUBNET = ipaddress.IPv4Network("198.51.100.0/24")
#: the node's address on the vm link, far from the addresses moto hands out (.4 and up, in order)
NODE_VM_ADDRESS = ipaddress.IPv4Interface("198.51.100.254/24")
#: what a shared pod VM answers on (see ``NodeStand.answer_on``): every address moto will hand out
SHARED_VM_RANGE = ipaddress.IPv4Network("198.51.100.0/25")
LINK_POOL = ipaddress.IPv4Network("203.0.113.0/24")


class StandError(RuntimeError):
    pass


def ip(*args: str, ns: str | None = None, check: bool = True) -> str:
    """Run iproute2 (in ``ns`` if given); its stdout, or StandError with its stderr."""
    argv = ["ip", *(["-n", ns] if ns else []), *args]
    done = subprocess.run(argv, check=False, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise StandError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout


def netns_exec(ns: str, argv: Sequence[str]) -> list[str]:
    """``argv`` run inside ``ns`` (``ip`` execs it in place: the pid is the program's)."""
    return ["ip", "netns", "exec", ns, *argv]


def _sysctl(ns: str | None, key: str, value: str) -> None:
    """Write a net sysctl of ``ns`` (/proc/sys/net is per namespace: the writer's own)."""
    path = "/proc/sys/" + key.replace(".", "/")
    if ns is None:
        with open(path, "w") as f:
            f.write(value)
        return
    argv = netns_exec(ns, ["sh", "-c", 'echo "$1" > "$2"', "sh", value, path])
    done = subprocess.run(argv, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise StandError(f"{key}={value} in {ns}: {done.stderr.strip()}")


def root_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 destination and address the root namespace knows (all routing tables)."""
    found: list[ipaddress.IPv4Network] = []
    for route in json.loads(ip("-j", "-4", "route", "show", "table", "all") or "[]"):
        dst = route.get("dst", "default")
        if dst != "default":
            found.append(ipaddress.IPv4Network(dst, strict=False))
    for link in json.loads(ip("-j", "-4", "addr", "show") or "[]"):
        for info in link.get("addr_info", []):
            found.append(ipaddress.IPv4Network(f"{info['local']}/{info['prefixlen']}", strict=False))
    return found


def pick_link() -> ipaddress.IPv4Network:
    """A free /30 in LINK_POOL: overlapping nothing the root namespace routes or holds."""
    taken = root_networks()
    candidates = list(LINK_POOL.subnets(new_prefix=30))
    random.shuffle(candidates)
    for net in candidates:
        if not any(net.overlaps(other) for other in taken):
            return net
    raise StandError(f"no free /30 left in {LINK_POOL}")


@dataclass(frozen=True)
class NodeStand:
    tag: str
    link: ipaddress.IPv4Network

    @property
    def node_ns(self) -> str:
        return f"caa-aws-{self.tag}-node"

    @property
    def vm_ns(self) -> str:
        return f"caa-aws-{self.tag}-vm"

    # interface names: at most 15 bytes
    @property
    def root_if(self) -> str:
        return f"aw{self.tag}r"

    @property
    def node_up_if(self) -> str:
        return f"aw{self.tag}n"

    @property
    def node_vm_if(self) -> str:
        return f"aw{self.tag}m"

    @property
    def vm_if(self) -> str:
        return f"aw{self.tag}v"

    @property
    def root_ip(self) -> ipaddress.IPv4Address:
        """The root side of the link: where the daemon finds the EC2 endpoint."""
        return self.link.network_address + 1

    @property
    def node_ip(self) -> ipaddress.IPv4Address:
        return self.link.network_address + 2

    @classmethod
    def create(cls) -> NodeStand:
        stand = cls(secrets.token_hex(4), pick_link())
        try:
            stand._build()
        except BaseException:
            stand.remove()
            raise
        return stand

    def _build(self) -> None:
        prefix = str(self.link.prefixlen)
        ip("netns", "add", self.node_ns)
        ip("netns", "add", self.vm_ns)
        for ns in (self.node_ns, self.vm_ns):
            _sysctl(ns, "net.ipv6.conf.all.disable_ipv6", "1")
            _sysctl(ns, "net.ipv6.conf.default.disable_ipv6", "1")
            ip("link", "set", "lo", "up", ns=ns)
        ip(*f"link add {self.root_if} type veth peer name {self.node_up_if} netns {self.node_ns}".split())
        _sysctl(None, f"net.ipv6.conf.{self.root_if}.disable_ipv6", "1")
        _sysctl(self.node_ns, f"net.ipv6.conf.{self.node_up_if}.disable_ipv6", "1")
        ip("addr", "add", f"{self.root_ip}/{prefix}", "dev", self.root_if)
        ip("link", "set", self.root_if, "up")
        ip("addr", "add", f"{self.node_ip}/{prefix}", "dev", self.node_up_if, ns=self.node_ns)
        ip("link", "set", self.node_up_if, "up", ns=self.node_ns)
        vm_pair = f"link add {self.node_vm_if} type veth peer name {self.vm_if} netns {self.vm_ns}"
        ip(*vm_pair.split(), ns=self.node_ns)
        _sysctl(self.node_ns, f"net.ipv6.conf.{self.node_vm_if}.disable_ipv6", "1")
        _sysctl(self.vm_ns, f"net.ipv6.conf.{self.vm_if}.disable_ipv6", "1")
        ip("addr", "add", str(NODE_VM_ADDRESS), "dev", self.node_vm_if, ns=self.node_ns)
        ip("link", "set", self.node_vm_if, "up", ns=self.node_ns)
        ip("link", "set", self.vm_if, "up", ns=self.vm_ns)

    # -- the pod VM side -----------------------------------------------------------------------------------

    def add_vm_address(self, address: ipaddress.IPv4Address) -> None:
        """Give the pod VM the private IP the cloud assigned to it."""
        if address not in VM_SUBNET:
            raise StandError(f"{address} is outside the stand's VM subnet {VM_SUBNET}")
        # "replace": a later instance may get the address of a terminated one
        ip("addr", "replace", f"{address}/{VM_SUBNET.prefixlen}", "dev", self.vm_if, ns=self.vm_ns)

    def answer_on(self, network: ipaddress.IPv4Network) -> None:
        """Make the vm namespace own every address of ``network`` (a local route: "AnyIP").

        One pod VM then stands in for many instances (benchmarks): whatever IP moto
        assigns, the node's packets for it reach the one forwarder.
        """
        if not network.subnet_of(VM_SUBNET) or NODE_VM_ADDRESS.ip in network:
            raise StandError(f"{network} must be inside {VM_SUBNET} and exclude {NODE_VM_ADDRESS.ip}")
        ip("route", "add", "local", str(network), "dev", "lo", ns=self.vm_ns)

    def vm_addresses(self) -> list[str]:
        shown = json.loads(ip("-j", "-4", "addr", "show", "dev", self.vm_if, ns=self.vm_ns) or "[]")
        return [info["local"] for link in shown for info in link.get("addr_info", [])]

    # -- inspection ----------------------------------------------------------------------------------------

    def routes(self, ns: str) -> list[str]:
        """The IPv4 routes of ``ns`` (main table), as ``ip route`` prints them."""
        return [line.strip() for line in ip("-4", "route", "show", ns=ns).splitlines() if line.strip()]

    def pids(self, ns: str) -> list[int]:
        """Processes living in ``ns``."""
        return [int(p) for p in ip("netns", "pids", ns, check=False).split()]

    def leftovers(self) -> list[str]:
        """Anything of this stand still present (empty once removed)."""
        left = [ns for ns in (self.node_ns, self.vm_ns) if os.path.exists(f"/run/netns/{ns}")]
        if ip("link", "show", "dev", self.root_if, check=False):
            left.append(f"link {self.root_if}")
        return left

    def remove(self) -> None:
        """Delete both namespaces (and with them the veth pairs)."""
        for ns in (self.vm_ns, self.node_ns):
            if not os.path.exists(f"/run/netns/{ns}"):
                continue
            # the namespace is the stand's own: whatever still runs in it was started by this test
            for pid in self.pids(ns):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            ip("netns", "del", ns, check=False)
        ip("link", "del", self.root_if, check=False)
