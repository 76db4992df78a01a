"""The stand of the pod VM image tests: a private libvirtd whose network namespace is the node.

::

    root ns: the test             node ns (PrivateLibvirtd's): libvirtd, dnsmasq, the daemon
                                   bridge <br> V.1/24 (isolated libvirt network, DHCP only)
                                     |-- pod VM domains (qemu), each V.x by DHCP
                                   veths to the pod namespaces (P.16k+1/28 on the node side)
                                   veth to the peer namespace (Q.1/24)
    pod-k ns: P.16k+10/28, default route via the node            peer ns: Q.10/24

Nothing is linked to the root namespace: the node namespace has no default route and no
interface but lo, the bridge and the veths above, so neither the daemon nor a VM can reach
anything outside the stand.  The libvirt network has no ``<forward>`` (isolated).  V, P and
Q are three /24s of 198.18.0.0/15 (the benchmarking range) that nothing in the root
namespace routes or holds when the stand is made.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import secrets
import select
import shutil
import signal
import subprocess
import threading
import time
import tty
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import libvirt
from caa_provider_libvirt.testing import PrivateLibvirtd

STAND_NETWORKS = ipaddress.IPv4Network("198.18.0.0/15")
BASE_VOLUME = "podvm-base.qcow2"


def ip(*args: str, ns: str | None = None, check: bool = True) -> str:
    argv = ["ip", *(["-n", ns] if ns else []), *args]
    done = subprocess.run(argv, check=False, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout


def root_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 destination and address the root namespace knows (all routing tables)."""
    found = []
    for route in json.loads(ip("-j", "-4", "route", "show", "table", "all") or "[]"):
        if route.get("dst", "default") != "default":
            found.append(ipaddress.IPv4Network(route["dst"], strict=False))
    for link in json.loads(ip("-j", "-4", "addr", "show") or "[]"):
        for info in link.get("addr_info", []):
            found.append(ipaddress.IPv4Network(f"{info['local']}/{info['prefixlen']}", strict=False))
    return found


def pick_networks(count: int) -> list[ipaddress.IPv4Network]:
    """``count`` /24s of 198.18.0.0/15 overlapping nothing the root namespace routes or holds."""
    taken = root_networks()
    candidates = [
        net for net in STAND_NETWORKS.subnets(new_prefix=24) if not any(net.overlaps(t) for t in taken)
    ]
    if len(candidates) < count:
        raise RuntimeError(f"fewer than {count} free /24s left in {STAND_NETWORKS}")
    return random.sample(candidates, count)


def host(net: ipaddress.IPv4Network, number: int) -> ipaddress.IPv4Interface:
    return ipaddress.IPv4Interface(f"{net.network_address + number}/{net.prefixlen}")


@dataclass
class ConsoleLine:
    at: float  # time.monotonic() when the line arrived
    text: str


@dataclass
class DomainConsole:
    name: str
    running_at: float  # when the domain was first seen running
    pty: str = ""
    lines: list[ConsoleLine] = field(default_factory=list)
    received: int = 0  # bytes
    opened_at: float = 0.0
    reopened: int = 0

    def find(self, marker: str) -> ConsoleLine | None:
        return next((line for line in self.lines if marker in line.text), None)


class ConsoleRecorder:
    """Reads the serial console of every domain from the moment it runs.

    Each domain's serial port is a pty (its path is in the live domain XML); one thread
    opens the terminal side of every new domain's pty and reads them all, stamping each
    line with its arrival.  qemu notices a reader within a second, so at most the first
    second of firmware output is missed.
    """

    def __init__(self, uri: str) -> None:
        self._conn = libvirt.open(uri)
        self.consoles: dict[str, DomainConsole] = {}
        self._readers: dict[int, tuple[DomainConsole, bytearray]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="consoles", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                with contextlib.suppress(libvirt.libvirtError):
                    for dom in self._conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
                        if dom.UUIDString() not in self.consoles:
                            with contextlib.suppress(libvirt.libvirtError, OSError):
                                self._attach(dom)
                ready, _, _ = select.select(list(self._readers), [], [], 0.05)
                for fd in ready:
                    self._drain(fd)
                self._reopen_silent()
        finally:
            for fd in list(self._readers):
                os.close(fd)
            self._readers.clear()

    def _attach(self, dom: Any) -> None:
        source = ET.fromstring(dom.XMLDesc(0)).find("./devices/serial/source")
        path = source.get("path") if source is not None else None
        if not path:
            return  # not started far enough to have its pty: next round
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(fd)
        console = DomainConsole(dom.name(), time.monotonic(), path, opened_at=time.monotonic())
        self.consoles[dom.UUIDString()] = console
        self._readers[fd] = (console, bytearray())

    def _reopen_silent(self, after: float = 5.0) -> None:
        """Open again the pty of a console that gave nothing yet.

        Seen here: of several domains started together, some consoles stay silent for
        the whole boot on the first open, and give their output once opened again.
        """
        now = time.monotonic()
        for fd, (console, pending) in list(self._readers.items()):
            if console.received or now - console.opened_at < after:
                continue
            with contextlib.suppress(OSError):
                again = os.open(console.pty, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
                tty.setraw(again)
                del self._readers[fd]
                os.close(fd)
                self._readers[again] = (console, pending)
                console.opened_at = now
                console.reopened += 1

    def _drain(self, fd: int) -> None:
        console, pending = self._readers[fd]
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:  # EIO: the domain is gone, its pty closed
            data = b""
        if not data:
            del self._readers[fd]
            os.close(fd)
            return
        console.received += len(data)
        pending += data
        *complete, rest = bytes(pending).split(b"\n")
        pending[:] = rest
        now = time.monotonic()
        for raw in complete:
            console.lines.append(ConsoleLine(now, raw.decode(errors="replace").rstrip("\r")))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        with contextlib.suppress(libvirt.libvirtError):
            self._conn.close()


class PodvmStand:
    """libvirtd + an isolated DHCP network + a pool with the image, pod and peer namespaces."""

    def __init__(self, image: Path, pods: int) -> None:
        self.tag = secrets.token_hex(3)
        self.libvirtd = PrivateLibvirtd(kvm=os.environ.get("CAA_PODVM_ACCEL", "auto") != "tcg")
        self.vm_network, self.pod_network, peer_network = pick_networks(3)
        self.peer_ip, self.peer_gateway = host(peer_network, 10), host(peer_network, 1)
        self.network = f"caa-podvm-{self.tag}"
        self.bridge = f"pv{self.tag}"
        self.pool = f"caa-podvm-{self.tag}"
        self.pool_dir = self.libvirtd.run_dir / "pool"
        self.pods = [f"caa-pv{self.tag}-pod{i}" for i in range(pods)]
        self.peer = f"caa-pv{self.tag}-peer"
        self.conn: Any = None
        self.consoles: ConsoleRecorder | None = None
        #: "kvm" when the domains run with KVM, else "tcg" (the daemon is told LIBVIRT_DOMAIN_TYPE=qemu)
        self.accel = "tcg"
        #: why KVM is not used although /dev/kvm opens ("" when it is used or absent)
        self.kvm_problem = ""
        try:
            self._build(image)
        except BaseException:
            self.close()
            raise

    @property
    def node(self) -> str:
        return self.libvirtd.netns

    @property
    def node_path(self) -> str:
        return f"/run/netns/{self.node}"

    def pod_path(self, index: int) -> str:
        return f"/run/netns/{self.pods[index]}"

    def pod_address(self, index: int) -> tuple[ipaddress.IPv4Interface, ipaddress.IPv4Interface]:
        """Pod ``index``'s IP and its gateway on the node: one /28 of the pod /24 each."""
        subnet = list(self.pod_network.subnets(new_prefix=28))[index]
        return host(subnet, 10), host(subnet, 1)

    @property
    def peer_path(self) -> str:
        return f"/run/netns/{self.peer}"

    def _build(self, image: Path) -> None:
        self.libvirtd.start()
        libvirt.registerErrorHandler(lambda _c, _e: None, None)
        self.conn = libvirt.open(self.libvirtd.uri)
        if self.libvirtd.accel == "kvm":
            self.kvm_problem = self._probe_kvm()
            self.accel = "tcg" if self.kvm_problem else "kvm"
        gateway, first, last = (self.vm_network.network_address + n for n in (1, 10, 99))
        self.conn.networkCreateXML(
            f"<network><name>{self.network}</name><bridge name='{self.bridge}' stp='off' delay='0'/>"
            "<dns enable='no'/>"
            f"<ip address='{gateway}' prefix='24'><dhcp>"
            f"<range start='{first}' end='{last}'/>"
            "</dhcp></ip></network>"
        )
        self.pool_dir.mkdir(mode=0o755)
        # a copy, not a link: libvirt may chown the files of the domains' disk chains
        shutil.copyfile(image, self.pool_dir / BASE_VOLUME)
        pool = self.conn.storagePoolCreateXML(
            f"<pool type='dir'><name>{self.pool}</name><target><path>{self.pool_dir}</path></target></pool>",
            0,
        )
        pool.refresh(0)
        self._wire()
        self.consoles = ConsoleRecorder(self.libvirtd.uri)

    def _probe_kvm(self, bound: float = 15.0) -> str:
        """ "" if a KVM domain with the provider's CPU mode runs its firmware here, else the reason.

        /dev/kvm can open and make VMs while qemu still cannot run a guest on it (nested KVM
        without the MSRs host-model asks for): start a diskless domain and wait for SeaBIOS's
        banner on its serial console.
        """
        xml = (
            "<domain type='kvm'><name>caa-kvm-probe</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>"
            "<os><type arch='x86_64'>hvm</type><bios useserial='yes'/></os><cpu mode='host-model'/>"
            "<devices><serial type='pty'><target port='0'/></serial>"
            "<console type='pty'><target type='serial' port='0'/></console></devices></domain>"
        )
        try:
            dom = self.conn.createXML(xml, 0)
        except libvirt.libvirtError as exc:
            return f"a KVM domain does not start: {str(exc).splitlines()[-1]}"
        stream = self.conn.newStream(libvirt.VIR_STREAM_NONBLOCK)
        seen = b""
        try:
            dom.openConsole(None, stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
            deadline = time.monotonic() + bound
            while b"SeaBIOS" not in seen and time.monotonic() < deadline:
                data = stream.recv(4096)
                if isinstance(data, bytes) and data:
                    seen += data
                else:
                    time.sleep(0.05)
        finally:
            with contextlib.suppress(libvirt.libvirtError):
                stream.abort()
            with contextlib.suppress(libvirt.libvirtError):
                dom.destroy()
        return "" if b"SeaBIOS" in seen else f"a KVM domain's firmware printed nothing in {bound:.0f} s"

    def _wire(self) -> None:
        node = self.node
        subprocess.run(
            ["ip", "netns", "exec", node, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"], check=True
        )
        ends = [(name, *self.pod_address(i), f"p{i}{self.tag}") for i, name in enumerate(self.pods)]
        ends.append((self.peer, self.peer_ip, self.peer_gateway, f"pe{self.tag}"))
        for ns, address, gateway, link in ends:
            ip("netns", "add", ns)
            ip("link", "set", "lo", "up", ns=ns)
            ip("link", "add", f"{link}n", "netns", node, "type", "veth", "peer", "name", "eth0", "netns", ns)
            ip("addr", "add", str(gateway), "dev", f"{link}n", ns=node)
            ip("link", "set", f"{link}n", "up", ns=node)
            ip("addr", "add", str(address), "dev", "eth0", ns=ns)
            ip("link", "set", "eth0", "up", ns=ns)
            ip("route", "add", "default", "via", str(gateway.ip), "dev", "eth0", ns=ns)

    # -- inspection ----------------------------------------------------------------------------------

    def network_xml(self) -> ET.Element:
        return ET.fromstring(self.conn.networkLookupByName(self.network).XMLDesc(0))

    def volumes(self) -> set[str]:
        pool = self.conn.storagePoolLookupByName(self.pool)
        pool.refresh(0)
        return set(pool.listVolumes())

    def domains(self) -> list[str]:
        return [d.name() for d in self.conn.listAllDomains()]

    def qemu_pids(self) -> list[int]:
        """Processes in the node namespace other than the daemons the stand started."""
        mine = {self.libvirtd.pid_of("libvirtd"), self.libvirtd.pid_of("virtlogd"), self.libvirtd.shell_pid}
        found = []
        for pid in self.libvirtd.netns_pids():
            if pid in mine:
                continue
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().startswith("qemu"):
                    found.append(pid)
        return found

    def routes(self, ns: str) -> list[str]:
        return [line.strip() for line in ip("-4", "route", "show", ns=ns).splitlines() if line.strip()]

    def leftovers(self) -> list[str]:
        """What of the stand is still on the machine (empty after ``close``)."""
        left = [ns for ns in (*self.pods, self.peer, self.node) if Path("/run/netns", ns).exists()]
        if self.libvirtd.run_dir.exists():
            left.append(str(self.libvirtd.run_dir))
        return left

    def close(self) -> None:
        if self.consoles is not None:
            self.consoles.close()
            self.consoles = None
        if self.conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                for dom in self.conn.listAllDomains():  # whatever a failed test left
                    with contextlib.suppress(libvirt.libvirtError):
                        dom.destroy()
                    with contextlib.suppress(libvirt.libvirtError):
                        dom.undefine()
            with contextlib.suppress(libvirt.libvirtError):
                self.conn.close()
            self.conn = None
        for ns in (*self.pods, self.peer):
            if Path("/run/netns", ns).exists():
                for pid in ip("netns", "pids", ns, check=False).split():
                    with contextlib.suppress(ProcessLookupError, ValueError):
                        os.kill(int(pid), signal.SIGKILL)
                ip("netns", "del", ns, check=False)
        self.libvirtd.stop()
