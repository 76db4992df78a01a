"""Where a local VM lives: its own namespaces on a veth (netns), or the host's on a loopback address.

The mode is chosen once, when the provider is built (``placement_for``); every
difference between the two lives here, behind one small interface, so the
provider's create and delete steps read the same in both modes.

- ``NetnsPlacement`` (root): each VM gets network, mount and UTS namespaces and a
  /30 block of LOCAL_VM_SUBNET on a veth pair; the VM-side programs run with the
  pod VM image's real default paths; the node's pod-network tunnel endpoint is the
  subnet's reserved last address on ``lo``.
- ``LoopbackPlacement`` (no root): VMs share the host's namespaces, each on its own
  127.x address with per-VM paths under its directory; no tunnel.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cloud_api_adaptor.errors import PermanentProviderError, TemporaryProviderError
from cloud_api_adaptor.localvm import addressing
from cloud_api_adaptor.localvm.config import LocalConfig, agent_socket_path
from cloud_api_adaptor.localvm.records import VmRecord

logger = logging.getLogger(__name__)

#: the VM's own paths in netns mode (the pod VM image's defaults)
VM_AGENT_SOCKET = "/run/kata-containers/agent.sock"
VM_POD_NETNS = "/run/netns/podns"
_LOOPBACK_PROBES = 256


@dataclass(frozen=True)
class GuestPaths:
    """How a VM's programs are started: their arguments and where the VM's files are."""

    agent_socket: str
    process_user_data: tuple[str, ...]
    forwarder: tuple[str, ...]
    #: the cidata directory the launcher mounts at /media/cidata (netns); None: passed by path
    cidata_dir: str | None
    #: the address the launcher puts on the VM's end of the veth (netns); None: loopback
    vm_address: str | None


class Placement(Protocol):
    """The mode-specific steps of a local VM's life."""

    mode: str

    def tunnel_endpoint(self) -> ipaddress.IPv4Address | None: ...

    def place(self, record: VmRecord, records: Sequence[VmRecord]) -> VmRecord:
        """The record with the VM's addresses (and links) chosen, given every VM we know."""

    def guest_paths(self, record: VmRecord, vm_dir: Path) -> GuestPaths: ...

    def plug(self, record: VmRecord) -> None:
        """Connect a launched VM to the host (its pid is known)."""

    def released(self, record: VmRecord, remaining: Callable[[], Sequence[VmRecord]]) -> None:
        """After a VM is gone: release what the host held for it."""


def placement_for(config: LocalConfig, work_dir: Path, forwarder_port: int) -> Placement:
    if config.mode == "netns":
        return NetnsPlacement(config, forwarder_port)
    return LoopbackPlacement(config, work_dir, forwarder_port)


def netns_name(vm_id: str) -> str:
    """Also the host-side veth name: at most 15 bytes, as link names must be."""
    return f"caa-{vm_id.removeprefix('local-')}"


class NetnsPlacement:
    mode = "netns"

    def __init__(self, config: LocalConfig, forwarder_port: int) -> None:
        self._config = config
        self._port = forwarder_port
        #: serialises "add the tunnel endpoint" (plug) with "no VM left: remove it" (teardown)
        self._endpoint_lock = threading.Lock()

    def tunnel_endpoint(self) -> ipaddress.IPv4Address | None:
        """The reserved last address of LOCAL_VM_SUBNET, on ``lo`` while any VM exists.

        Every VM reaches it through its default route, so the tunnel never
        touches the machine's real interfaces.
        """
        return addressing.tunnel_endpoint(self._config.subnet)

    def place(self, record: VmRecord, records: Sequence[VmRecord]) -> VmRecord:
        block = addressing.allocate_block(self._config.subnet, self._used_blocks(records))
        name = netns_name(record.id)
        return record.evolve(
            address=str(block.vm),
            host_address=str(block.host),
            prefixlen=block.prefixlen,
            block=block.index,
            netns=name,
            host_ifname=name,
        )

    def _used_blocks(self, records: Sequence[VmRecord]) -> set[int]:
        """Blocks of our records, plus any the kernel already numbers (another daemon, a stale link)."""
        from cloud_api_adaptor.localvm import netns

        subnet = self._config.subnet
        used = {r.block for r in records if r.block is not None}
        used |= addressing.reserved_blocks(subnet)  # the tunnel endpoint's
        try:
            addresses = netns.host_ipv4_addresses()
        except Exception as exc:  # netlink trouble must not hide behind allocation
            raise TemporaryProviderError(f"cannot list host addresses: {exc}") from exc
        for _, iface in addresses:
            index = addressing.block_of(subnet, iface.ip)
            if index is not None:
                used.add(index)
        return used

    def guest_paths(self, record: VmRecord, vm_dir: Path) -> GuestPaths:
        programs = self._config.programs
        return GuestPaths(
            agent_socket=VM_AGENT_SOCKET,
            process_user_data=(*programs.process_user_data, "provision-files"),
            forwarder=(
                *programs.forwarder,
                "-listen",
                f"0.0.0.0:{self._port}",
                "-kata-agent-socket",
                VM_AGENT_SOCKET,
                "-pod-namespace",
                VM_POD_NETNS,
            ),
            cidata_dir=str(vm_dir / "cidata"),
            vm_address=record.address,
        )

    def plug(self, record: VmRecord) -> None:
        from pyroute2.netlink.exceptions import NetlinkError

        from cloud_api_adaptor.localvm import netns

        assert record.host_ifname and record.host_address and record.prefixlen and record.pid
        try:
            self._ensure_endpoint()
            netns.plug_veth(
                record.host_ifname, record.pid, ipaddress.IPv4Address(record.host_address), record.prefixlen
            )
        except (OSError, NetlinkError) as exc:
            raise PermanentProviderError(f"cannot plug local VM {record.id} into the host: {exc}") from exc

    def _ensure_endpoint(self) -> None:
        """Before a VM is plugged in: the tunnel endpoint on ``lo`` (idempotent)."""
        from cloud_api_adaptor.localvm import netns

        endpoint = addressing.tunnel_endpoint(self._config.subnet)
        if endpoint is None:
            return
        with self._endpoint_lock:
            if netns.ensure_local_address(endpoint):
                logger.info("tunnel endpoint %s/32 added to lo", endpoint)

    def released(self, record: VmRecord, remaining: Callable[[], Sequence[VmRecord]]) -> None:
        """Once no VM is left, take the tunnel endpoint off ``lo`` (the next plug adds it again).

        "No VM" counts another daemon's too: any other address of the subnet here keeps it.
        """
        from pyroute2.netlink.exceptions import NetlinkError

        from cloud_api_adaptor.localvm import netns

        endpoint = addressing.tunnel_endpoint(self._config.subnet)
        if record.mode != "netns" or endpoint is None:
            return
        with self._endpoint_lock:
            if remaining():
                return
            try:
                others = [a for _, a in netns.host_ipv4_addresses() if a.ip in self._config.subnet]
                if any(a.ip != endpoint for a in others):
                    return
                if netns.remove_local_address(endpoint):
                    logger.info("tunnel endpoint %s/32 removed from lo (no VM left)", endpoint)
            except (OSError, NetlinkError) as exc:
                logger.warning("cannot remove tunnel endpoint %s from lo: %s", endpoint, exc)


class LoopbackPlacement:
    mode = "loopback"

    def __init__(self, config: LocalConfig, work_dir: Path, forwarder_port: int) -> None:
        self._config = config
        self._work_dir = work_dir
        self._port = forwarder_port

    def tunnel_endpoint(self) -> ipaddress.IPv4Address | None:
        """Loopback VMs share the host's namespaces and cannot carry a tunnel."""
        return None

    def place(self, record: VmRecord, records: Sequence[VmRecord]) -> VmRecord:
        used = {ipaddress.IPv4Address(r.address) for r in records if r.address}
        candidates = addressing.loopback_candidates(str(self._work_dir), used)
        for _, address in zip(range(_LOOPBACK_PROBES), candidates, strict=False):
            if _port_free(address, self._port):
                return record.evolve(address=str(address))
        raise TemporaryProviderError(
            f"no loopback address with port {self._port} free after {_LOOPBACK_PROBES} tries"
        )

    def guest_paths(self, record: VmRecord, vm_dir: Path) -> GuestPaths:
        programs = self._config.programs
        root = vm_dir / "root"
        sock = str(agent_socket_path(self._work_dir, record.id))
        return GuestPaths(
            agent_socket=sock,
            process_user_data=(
                *programs.process_user_data,
                "provision-files",
                "--root",
                str(root),
                "--cidata-dir",
                str(vm_dir / "cidata"),
            ),
            forwarder=(
                *programs.forwarder,
                "-config",
                str(root / "run" / "peerpod" / "apf.json"),
                "-listen",
                f"{record.address}:{self._port}",
                "-kata-agent-socket",
                sock,
                "-pod-namespace",
                str(root / "run" / "netns" / "podns"),
            ),
            cidata_dir=None,
            vm_address=None,
        )

    def plug(self, record: VmRecord) -> None:
        return None

    def released(self, record: VmRecord, remaining: Callable[[], Sequence[VmRecord]]) -> None:
        return None


def _port_free(address: ipaddress.IPv4Address, port: int) -> bool:
    """Whether a listener could bind ``address:port`` now (as the forwarder will, with SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((str(address), port))
        except OSError:
            return False
    return True
