"""The VM side: the pod interface rebuilt in the VM's pod namespace from the pod-network object."""

from __future__ import annotations

import dataclasses
import ipaddress
import secrets
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from cloud_api_adaptor.apf import ApfConfig
from cloud_api_adaptor.errors import FailedPrecondition
from cloud_api_adaptor.podnetwork import (
    Neighbor,
    NeighborState,
    PodNetworkConfig,
    Route,
    RouteProtocol,
    RouteScope,
    add_named_netns,
    delete_named_netns,
    forwarder_network_setup,
    setup_pod_node,
    teardown_pod_node,
)
from cloud_api_adaptor.podnetwork.netlink import Link, Netlink, RouteEntry, in_netns
from cloud_api_adaptor.podnetwork.notrack import IptablesNotrack

pytestmark = pytest.mark.root

NOTRACK = IptablesNotrack()
CALICO = PodNetworkConfig(
    pod_ip=ipaddress.IPv4Interface("203.0.113.7/32"),
    pod_hw_addr="66:2f:1d:00:00:07",
    interface="eth0",
    worker_node_ip=ipaddress.IPv4Interface("192.0.2.1/24"),
    # The gateway route comes first here: setup must add the on-link route before it.
    routes=(
        Route(
            dst=ipaddress.IPv4Network("0.0.0.0/0"),
            gw=ipaddress.IPv4Address("169.254.1.1"),
            dev="eth0",
            protocol=RouteProtocol.STATIC,
        ),
        Route(
            dst=ipaddress.IPv4Network("169.254.1.1/32"),
            dev="eth0",
            protocol=RouteProtocol.STATIC,
            scope=RouteScope.LINK,
        ),
    ),
    neighbors=(
        Neighbor(
            ip=ipaddress.IPv4Address("169.254.1.1"),
            hw_addr="ee:ee:ee:ee:ee:ee",
            dev="eth0",
            state=NeighborState.PERMANENT,
        ),
    ),
    mtu=1500,
    vxlan_port=4789,
    vxlan_id=555000,
)
# A PTP-style pod: a /24 address but no subnet route on the worker.
PTP = dataclasses.replace(
    CALICO,
    pod_ip=ipaddress.IPv4Interface("198.51.100.10/24"),
    routes=(
        Route(
            dst=ipaddress.IPv4Network("0.0.0.0/0"),
            gw=ipaddress.IPv4Address("198.51.100.1"),
            dev="eth0",
            protocol=RouteProtocol.BOOT,
        ),
        Route(dst=ipaddress.IPv4Network("198.51.100.1/32"), dev="eth0", protocol=RouteProtocol.BOOT),
    ),
    neighbors=(),
)


@dataclasses.dataclass
class Vm:
    vm: str
    pod: str


@pytest_asyncio.fixture
async def vm() -> AsyncIterator[Vm]:
    """A namespace standing in for the VM (with its underlay address) and one for its pod namespace."""
    prefix = f"caa{secrets.token_hex(3)}"
    try:
        vm_ns = await add_named_netns(f"{prefix}-vm")
        pod_ns = await add_named_netns(f"{prefix}-vmpod")

        def underlay(nl: Netlink) -> None:
            index = nl.add_veth("ul0", "ul0p")
            nl.set_link(index, up=True)
            nl.add_address(index, ipaddress.IPv4Interface("192.0.2.2/24"))

        await in_netns(vm_ns, underlay)
        yield Vm(vm_ns, pod_ns)
    finally:
        await delete_named_netns(f"{prefix}-vm")
        await delete_named_netns(f"{prefix}-vmpod")


def snapshot(nl: Netlink) -> tuple[Link | None, list[str], list[RouteEntry], list[tuple[str, str, int]]]:
    link = nl.link("eth0")
    addrs = [str(a.interface) for a in nl.addresses(link.index)] if link else []
    neigh = [(str(n.ip), n.mac, n.state) for n in nl.neighbors()]
    return link, addrs, nl.routes(), neigh


@pytest.mark.asyncio
async def test_a_calico_style_pod_gets_its_interface_routes_in_order_and_neighbours(vm: Vm) -> None:
    await setup_pod_node(CALICO, vm.pod, vm_netns=vm.vm, notrack=NOTRACK)

    link, addrs, routes, neigh = await in_netns(vm.pod, snapshot)
    assert link is not None and link.kind == "vxlan" and link.is_up
    assert link.vxlan is not None and (link.vxlan.vni, str(link.vxlan.group), link.vxlan.port) == (
        555000,
        "192.0.2.1",
        4789,
    )
    assert (link.mac, link.mtu) == ("66:2f:1d:00:00:07", 1450)
    assert addrs == ["203.0.113.7/32"]
    assert {(str(r.dst), str(r.gateway), r.scope) for r in routes} == {
        ("0.0.0.0/0", "169.254.1.1", 0),
        ("169.254.1.1/32", "None", 253),
    }
    assert ("169.254.1.1", "ee:ee:ee:ee:ee:ee", 0x80) in neigh
    vm_links = await in_netns(vm.vm, lambda nl: [lk.name for lk in nl.links()])
    assert "vxlan0" not in vm_links
    assert any("vni:555000" in r for r in await in_netns(vm.vm, lambda nl: NOTRACK.rules()))


@pytest.mark.asyncio
async def test_a_non_32_pod_ip_loses_the_kernel_subnet_route_it_did_not_have_on_the_worker(vm: Vm) -> None:
    await setup_pod_node(PTP, vm.pod, vm_netns=vm.vm, notrack=NOTRACK)
    _, addrs, routes, _ = await in_netns(vm.pod, snapshot)
    assert addrs == ["198.51.100.10/24"]
    assert {str(r.dst) for r in routes} == {"0.0.0.0/0", "198.51.100.1/32"}


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("pod_mtu", "cap", "expected"), [(1500, 1450, 1450), (1400, 1450, 1400), (1500, 8950, 1500)]
)
async def test_the_mtu_is_the_pods_capped_for_the_tunnel(
    vm: Vm, pod_mtu: int, cap: int, expected: int
) -> None:
    await setup_pod_node(
        dataclasses.replace(CALICO, mtu=pod_mtu), vm.pod, vm_netns=vm.vm, mtu_cap=cap, notrack=False
    )
    link = await in_netns(vm.pod, lambda nl: nl.link("eth0"))
    assert link is not None and link.mtu == expected


@pytest.mark.asyncio
async def test_setup_is_idempotent_and_follows_a_changed_worker_address(vm: Vm) -> None:
    await setup_pod_node(CALICO, vm.pod, vm_netns=vm.vm, notrack=NOTRACK)
    first = await in_netns(vm.pod, snapshot)
    await setup_pod_node(CALICO, vm.pod, vm_netns=vm.vm, notrack=NOTRACK)
    assert await in_netns(vm.pod, snapshot) == first

    moved = dataclasses.replace(CALICO, worker_node_ip=ipaddress.IPv4Interface("192.0.2.9/24"))
    await setup_pod_node(moved, vm.pod, vm_netns=vm.vm, notrack=NOTRACK)
    link = await in_netns(vm.pod, lambda nl: nl.link("eth0"))
    assert link is not None and link.vxlan is not None and str(link.vxlan.group) == "192.0.2.9"
    rules = await in_netns(vm.vm, lambda nl: NOTRACK.rules())
    assert not any("192.0.2.1/32" in r for r in rules) and any("192.0.2.9/32" in r for r in rules)

    await teardown_pod_node(moved, vm.pod, vm_netns=vm.vm, notrack=NOTRACK)
    await teardown_pod_node(moved, vm.pod, vm_netns=vm.vm, notrack=NOTRACK)
    assert await in_netns(vm.pod, lambda nl: nl.link("eth0")) is None
    assert await in_netns(vm.vm, lambda nl: NOTRACK.rules()) == []


@pytest.mark.asyncio
async def test_an_interface_of_another_kind_in_the_pod_namespace_is_not_replaced(vm: Vm) -> None:
    await in_netns(vm.pod, lambda nl: nl.add_veth("eth0", "eth0p"))
    with pytest.raises(FailedPrecondition, match="already has a veth interface eth0"):
        await setup_pod_node(CALICO, vm.pod, vm_netns=vm.vm, notrack=False)


@pytest.mark.asyncio
async def test_a_missing_pod_namespace_is_a_failed_precondition(vm: Vm) -> None:
    with pytest.raises(FailedPrecondition, match="does not exist"):
        await setup_pod_node(CALICO, vm.pod + "-missing", vm_netns=vm.vm, notrack=False)
    assert "vxlan0" not in await in_netns(vm.vm, lambda nl: [lk.name for lk in nl.links()])


@pytest.mark.asyncio
async def test_the_forwarder_hook_builds_the_tunnel_from_apf_json(vm: Vm) -> None:
    apf = ApfConfig.from_json(ApfConfig(pod_namespace="default", pod_network=CALICO.to_json_obj()).to_json())
    await forwarder_network_setup(apf, vm.pod, vm_netns=vm.vm, notrack=False)
    link = await in_netns(vm.pod, lambda nl: nl.link("eth0"))
    assert link is not None and link.mac == CALICO.pod_hw_addr
