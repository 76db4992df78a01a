"""Issue 3 end to end: the daemon tunnels a pod's network into its local VM, between real namespaces.

Every namespace is the test's own and none is linked to the machine's, so no
packet can leave::

    peer 203.0.113.10 --veth-- node --veth-- pod-a 198.51.100.10/24 (CNI style, default via the node)
                                 |   \\-veth-- pod-b 192.0.2.10/24
          cloud-api-adaptor serve (local provider, netns mode) runs in node (nsenter --net)
                                 |
             caa-<id> veths, one /30 of LOCAL_VM_SUBNET 198.18.0.0/24 per VM
                                 |
              local VM (own netns and mount ns) -- its podns: the pod's IP again

The node's default route points at the peer: a tunnel that followed the
"primary interface" would use 203.0.113.1.  The local provider's endpoint is
198.18.0.254, on the node's ``lo``.  The test talks to the daemon's unix socket
as Kata does and reaches the VM's pod namespace through ``/proc/<VM pid>/root``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import json
import os
import secrets
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from cloud_api_adaptor import kata_client as kata
from cloud_api_adaptor.apf import DEFAULT_APF_CONFIG_PATH
from cloud_api_adaptor.hypervisor.models import SandboxRecord
from cloud_api_adaptor.podnetwork import PodNetworkConfig, add_named_netns, delete_named_netns, run_in_netns
from cloud_api_adaptor.podnetwork.netlink import Link, Netlink, in_netns
from cloud_api_adaptor.podnetwork.notrack import IptablesNotrack, NftablesNotrack
from cloud_api_adaptor.podnetwork.testbed import echo_roundtrip, start_echo_server
from cloud_api_adaptor.podnetwork.workernode import POD_VXLAN_NAME
from cloud_api_adaptor.ttrpc import RpcError
from cloud_api_adaptor.vm.provision import parse_cloud_config

pytestmark = pytest.mark.root

BIN = Path(sys.executable).parent / "cloud-api-adaptor"
VM_SUBNET = ipaddress.IPv4Network("198.18.0.0/24")
ENDPOINT = ipaddress.IPv4Address("198.18.0.254")
VXLAN_MIN_ID = 555000
PEER_IP = ipaddress.IPv4Interface("203.0.113.10/24")
PEER_GW = ipaddress.IPv4Interface("203.0.113.1/24")
#: pod name -> (pod IP, its gateway on the node)
PODS = {
    "pod-a": (ipaddress.IPv4Interface("198.51.100.10/24"), ipaddress.IPv4Interface("198.51.100.1/24")),
    "pod-b": (ipaddress.IPv4Interface("192.0.2.10/24"), ipaddress.IPv4Interface("192.0.2.1/24")),
}
#: the Go adaptor's tunneler.Config field names, in its order
GO_KEYS = [
    "podip",
    "pod-hw-addr",
    "interface",
    "worker-node-ip",
    "tunnel-type",
    "routes",
    "neighbors",
    "mtu",
    "index",
    "vxlan-port",
    "vxlan-id",
    "dedicated",
    "external-net-via-pod-vm",
]
PAYLOAD = os.urandom(128 * 1024)  # many full-size segments: MTU trouble would show
BOUND = 90.0  # a bound against hangs, not a performance assertion


# ---- namespaces ---------------------------------------------------------------------------------


@dataclass
class Bed:
    """The test's namespaces: node, pod-a, pod-b, peer."""

    prefix: str
    paths: dict[str, str] = field(default_factory=dict)

    @property
    def node(self) -> str:
        return self.paths["node"]

    @property
    def peer(self) -> str:
        return self.paths["peer"]

    @classmethod
    async def create(cls) -> Bed:
        bed = cls(f"tun{secrets.token_hex(3)}")
        try:
            for role in ("node", *PODS, "peer"):
                bed.paths[role] = await add_named_netns(f"{bed.prefix}-{role}")
            await bed._wire()
        except BaseException:
            await bed.aclose()
            raise
        return bed

    async def aclose(self) -> None:
        for role in list(self.paths):
            await delete_named_netns(f"{self.prefix}-{role}")

    async def _wire(self) -> None:
        for path in self.paths.values():
            await in_netns(path, _lo_up)
        await run_in_netns(self.node, _enable_forwarding)
        ends = [(f"{name[-1]}pod", self.paths[name], gw) for name, (_, gw) in PODS.items()]
        ends.append(("peer", self.peer, PEER_GW))

        def node_side(nl: Netlink) -> dict[str, str]:
            macs = {}
            for name, other, gateway in ends:
                index = nl.add_veth(f"{name}-n", f"{name}-p", other)
                nl.set_link(index, up=True)
                nl.add_address(index, gateway)
                link = nl.link(f"{name}-n")
                macs[name] = link.mac if link else ""
            # The decoy: a default route, so "the primary interface" would be peer-n.
            peer_n = nl.link("peer-n")
            assert peer_n is not None
            nl.replace_route(ipaddress.IPv4Network("0.0.0.0/0"), oif=peer_n.index, gateway=PEER_IP.ip)
            return macs

        macs = await in_netns(self.node, node_side)
        for name, other, gateway in ends:
            address = PEER_IP if name == "peer" else PODS[f"pod-{name[0]}"][0]
            await in_netns(
                other, functools.partial(_far_end, old=f"{name}-p", address=address, gateway=gateway)
            )
        # a permanent ARP entry for the gateway, as some CNIs add (it must reach the VM's pod namespace)
        gw_a = PODS["pod-a"][1].ip
        await in_netns(self.paths["pod-a"], lambda nl: _neighbor(nl, gw_a, macs["apod"]))


def _lo_up(nl: Netlink) -> None:
    lo = nl.link("lo")
    if lo is not None:
        nl.set_link(lo.index, up=True)


def _enable_forwarding() -> None:
    with open("/proc/sys/net/ipv4/ip_forward", "w", encoding="ascii") as f:
        f.write("1\n")


def _far_end(
    nl: Netlink, old: str, address: ipaddress.IPv4Interface, gateway: ipaddress.IPv4Interface
) -> None:
    link = nl.link(old)
    assert link is not None
    nl.rename_link(link.index, "eth0")
    nl.set_link(link.index, up=True)
    nl.add_address(link.index, address)
    nl.replace_route(ipaddress.IPv4Network("0.0.0.0/0"), oif=link.index, gateway=gateway.ip, protocol=3)


def _neighbor(nl: Netlink, ip: ipaddress.IPv4Address, mac: str) -> None:
    eth = nl.link("eth0")
    assert eth is not None
    nl.replace_neighbor(ip, mac, eth.index)


# ---- the daemon, inside the node namespace --------------------------------------------------------


class NodeDaemon:
    """``cloud-api-adaptor serve`` in the node namespace (``nsenter --net``); kill -9 and restart."""

    def __init__(self, root: Path, bed: Bed) -> None:
        self.root = root
        self.bed = bed
        self.socket = root / "hv.sock"
        self.state_dir = root / "state"
        self.log = root / "daemon.log"
        self.argv = ["nsenter", f"--net={bed.node}", str(BIN), "serve"]
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("CLOUD_", "LOCAL_", "AWS_"))},
            "CLOUD_PROVIDER": "local",
            "LOCAL_MODE": "netns",
            "LOCAL_VM_SUBNET": str(VM_SUBNET),
            "REMOTE_HYPERVISOR_ENDPOINT": str(self.socket),
            "PODS_DIR": str(root / "pods"),
            "STATE_DIR": str(self.state_dir),
            "PROBE_PORT": "8000",  # inside the node namespace: nothing else listens there
            "PROXY_TIMEOUT": "60s",
            "LOG_LEVEL": "debug",
        }
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        async with asyncio.timeout(BOUND):
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.tail()}")
                try:
                    await kata.version(self.socket)
                    return
                except RpcError:
                    await asyncio.sleep(0.05)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    # -- what the daemon and its provider keep on disk

    def sandbox(self, sid: str) -> SandboxRecord:
        return SandboxRecord.from_json((self.state_dir / "sandboxes" / f"{sid}.json").read_bytes())

    def vm_records(self) -> list[dict[str, Any]]:
        records = self.state_dir / "providers" / "local" / "records"
        return [json.loads(p.read_bytes()) for p in sorted(records.glob("local-*.json"))]

    def vm_of(self, sid: str) -> dict[str, Any]:
        (vm,) = [r for r in self.vm_records() if r["sandbox_id"] == sid]
        return vm


def vm_root(vm: dict[str, Any]) -> Path:
    """The VM's file system as the VM sees it (its mount namespace): through its launcher's /proc entry."""
    return Path(f"/proc/{vm['pid']}/root")


def vm_podns(vm: dict[str, Any]) -> str:
    return str(vm_root(vm) / "run" / "netns" / "podns")


@pytest_asyncio.fixture
async def bed() -> AsyncIterator[Bed]:
    b = await Bed.create()
    try:
        yield b
    finally:
        await b.aclose()


@pytest_asyncio.fixture
async def daemon(bed: Bed, short_tmp: Path) -> AsyncIterator[NodeDaemon]:
    d = NodeDaemon(short_tmp, bed)
    try:
        await d.start()
        yield d
    finally:
        d.stop()
        # Whatever a failed test left running: remove the VMs as the daemon would.
        for vm in d.vm_records():
            with contextlib.suppress(ProcessLookupError, TypeError):
                os.killpg(vm["pid"], signal.SIGKILL)
            if vm.get("netns"):
                await delete_named_netns(vm["netns"])


# ---- helpers --------------------------------------------------------------------------------------


def new_id() -> str:
    return uuid.uuid4().hex + uuid.uuid4().hex


async def run_pod(daemon: NodeDaemon, bed: Bed, pod: str) -> str:
    """CreateVM with the pod's namespace, StartVM; returns the sandbox id once the agent answers."""
    sid = new_id()
    await kata.create_vm(daemon.socket, sid, kata.kata_annotations(pod), netns=bed.paths[pod])
    try:
        await kata.start_vm(daemon.socket, sid, timeout=BOUND)
    except BaseException:
        print(daemon.tail())
        raise
    return sid


async def assert_traffic_both_ways(daemon: NodeDaemon, sid: str, pod: str) -> None:
    """Peer -> pod IP (server in the VM's pod namespace), and VM's pod namespace -> peer."""
    pod_ip = str(PODS[pod][0].ip)
    podns = vm_podns(daemon.vm_of(sid))
    server, port = await start_echo_server(podns, pod_ip)
    async with server:
        assert await echo_roundtrip(daemon.bed.peer, pod_ip, port, PAYLOAD) == PAYLOAD
    server, port = await start_echo_server(daemon.bed.peer, str(PEER_IP.ip))
    async with server:
        assert await echo_roundtrip(podns, str(PEER_IP.ip), port, PAYLOAD) == PAYLOAD


async def pod_vxlan(bed: Bed, pod: str) -> Link | None:
    return await in_netns(bed.paths[pod], lambda nl: nl.link(POD_VXLAN_NAME))


async def leftovers(bed: Bed, vm_netns: set[str]) -> list[str]:
    """VXLAN links, ingress qdiscs, NOTRACK rules, VM links and namespaces, the endpoint address."""

    def scan(nl: Netlink) -> list[str]:
        found = []
        for link in nl.links():
            if link.kind == "vxlan" or link.name.startswith("caa-"):
                found.append(f"{nl.where}: link {link.name} ({link.kind})")
            if nl.ingress_kind(link.index) is not None:
                found.append(f"{nl.where}: ingress qdisc on {link.name}")
        found += [f"{nl.where}: address {a.interface}" for a in nl.addresses() if a.interface.ip in VM_SUBNET]
        return found

    found: list[str] = []
    for path in bed.paths.values():
        found += await in_netns(path, scan)
    for backend in (IptablesNotrack(), NftablesNotrack()):
        found += [f"node: {rule}" for rule in await run_in_netns(bed.node, backend.rules)]
    found += [f"netns {name} still exists" for name in vm_netns if Path("/run/netns", name).exists()]
    return found


# ---- tests ----------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_pod_is_reached_at_its_ip_in_the_vm_and_reaches_out_and_stop_vm_leaves_nothing(
    daemon: NodeDaemon,
) -> None:
    bed = daemon.bed
    sid = await run_pod(daemon, bed, "pod-a")
    record, vm = daemon.sandbox(sid), daemon.vm_of(sid)
    assert record.vni == VXLAN_MIN_ID

    # What the daemon rendered into the userdata is what the VM provisioned and its forwarder read:
    # apf.json whose pod-network object has the Go field names, in Go's order, and round-trips.
    files = {f.path: f.data for f in parse_cloud_config(record.userdata.encode())}
    provisioned = (vm_root(vm) / "run" / "peerpod" / "apf.json").read_bytes()
    assert files[DEFAULT_APF_CONFIG_PATH] == provisioned
    network = json.loads(provisioned)["pod-network"]
    assert list(network) == GO_KEYS
    assert PodNetworkConfig.from_json_obj(network).to_json_obj() == network
    assert network == record.pod_network
    assert network["podip"] == str(PODS["pod-a"][0])
    assert network["worker-node-ip"] == f"{ENDPOINT}/32"  # the provider's, not the decoy peer-n's
    assert (network["vxlan-id"], network["vxlan-port"], network["dedicated"]) == (VXLAN_MIN_ID, 4789, False)
    gateway = await in_netns(bed.node, lambda nl: nl.link("apod-n"))
    assert gateway is not None
    assert network["neighbors"] == [
        {"ip": str(PODS["pod-a"][1].ip), "hw-addr": gateway.mac, "dev": "eth0", "state": "permanent"}
    ]

    # Worker side: vxlan1 in the pod namespace, pointed at the VM.
    vx = await pod_vxlan(bed, "pod-a")
    assert vx is not None and vx.vxlan is not None
    assert (vx.vxlan.vni, str(vx.vxlan.group), vx.vxlan.port) == (VXLAN_MIN_ID, vm["address"], 4789)

    # VM side: the pod's interface rebuilt in the VM's pod namespace, a VXLAN pointed at the endpoint.
    eth0 = await in_netns(vm_podns(vm), lambda nl: nl.link("eth0"))
    assert eth0 is not None and eth0.kind == "vxlan" and eth0.vxlan is not None
    assert (eth0.vxlan.vni, eth0.vxlan.group, eth0.mac, eth0.mtu) == (
        VXLAN_MIN_ID,
        ENDPOINT,
        network["pod-hw-addr"],
        1450,
    )

    await assert_traffic_both_ways(daemon, sid, "pod-a")

    vm_netns = {vm["netns"]}
    await kata.stop_vm(daemon.socket, sid)
    assert await leftovers(bed, vm_netns) == []
    assert daemon.vm_records() == []


@pytest.mark.asyncio
async def test_two_pods_at_once_get_different_vnis_and_each_carries_its_own_traffic(
    daemon: NodeDaemon,
) -> None:
    bed = daemon.bed
    sids = dict(zip(PODS, await asyncio.gather(*(run_pod(daemon, bed, pod) for pod in PODS)), strict=True))
    vnis = {pod: daemon.sandbox(sid).vni for pod, sid in sids.items()}
    assert sorted(v for v in vnis.values() if v is not None) == [VXLAN_MIN_ID, VXLAN_MIN_ID + 1]
    for pod, sid in sids.items():
        vx = await pod_vxlan(bed, pod)
        assert vx is not None and vx.vxlan is not None
        assert (vx.vxlan.vni, str(vx.vxlan.group)) == (vnis[pod], daemon.vm_of(sid)["address"])
    for pod, sid in sids.items():
        await assert_traffic_both_ways(daemon, sid, pod)

    vm_netns = {daemon.vm_of(sid)["netns"] for sid in sids.values()}
    await asyncio.gather(*(kata.stop_vm(daemon.socket, sid) for sid in sids.values()))
    assert await leftovers(bed, vm_netns) == []


@pytest.mark.asyncio
async def test_a_tunnelled_sandbox_keeps_its_vni_and_its_traffic_across_a_kill_9_restart(
    daemon: NodeDaemon,
) -> None:
    bed = daemon.bed
    sid = await run_pod(daemon, bed, "pod-a")
    vni = daemon.sandbox(sid).vni
    vm = daemon.vm_of(sid)

    daemon.kill9()
    await daemon.start()
    assert daemon.sandbox(sid).vni == vni
    assert daemon.vm_of(sid)["pid"] == vm["pid"]  # the same VM, never restarted
    vx = await pod_vxlan(bed, "pod-a")
    assert vx is not None and vx.vxlan is not None and vx.vxlan.vni == vni
    await assert_traffic_both_ways(daemon, sid, "pod-a")

    # A pod created after the restart does not collide with the recovered one (Go would reuse 555000).
    other = await run_pod(daemon, bed, "pod-b")
    assert daemon.sandbox(other).vni == VXLAN_MIN_ID + 1 != vni
    await assert_traffic_both_ways(daemon, other, "pod-b")

    vm_netns = {vm["netns"], daemon.vm_of(other)["netns"]}
    await kata.stop_vm(daemon.socket, sid)
    assert await pod_vxlan(bed, "pod-a") is None
    await kata.stop_vm(daemon.socket, other)
    assert await leftovers(bed, vm_netns) == []
