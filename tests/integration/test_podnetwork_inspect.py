"""CreateVM's view of the pod namespace: what inspect reads, and how bad namespaces are reported."""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from cloud_api_adaptor.errors import FailedPrecondition, InvalidInput
from cloud_api_adaptor.podnetwork import (
    Neighbor,
    NeighborState,
    Route,
    RouteProtocol,
    RouteScope,
    WorkerNode,
    WorkerNodeSettings,
    add_named_netns,
    delete_named_netns,
)
from cloud_api_adaptor.podnetwork.netlink import Netlink, in_netns
from cloud_api_adaptor.podnetwork.testbed import NODE_UNDERLAY, POD_GATEWAY, POD_IP, Testbed

pytestmark = pytest.mark.root

NetnsFactory = Callable[[Callable[[Netlink], None]], Awaitable[str]]


@pytest_asyncio.fixture
async def bed() -> AsyncIterator[Testbed]:
    testbed = await Testbed.create()
    try:
        yield testbed
    finally:
        await testbed.aclose()


@pytest_asyncio.fixture
async def make_netns() -> AsyncIterator[NetnsFactory]:
    """Namespaces holding a veth pair ``eth0``/``eth0p`` (both ends inside), shaped by a callback."""
    names: list[str] = []

    async def make(shape: Callable[[Netlink], None]) -> str:
        name = f"caa{secrets.token_hex(3)}-x"
        names.append(name)
        path = await add_named_netns(name)

        def build(nl: Netlink) -> None:
            index = nl.add_veth("eth0", "eth0p")
            peer = nl.link("eth0p")
            assert peer is not None
            nl.set_link(peer.index, up=True)
            nl.set_link(index, up=True)
            shape(nl)

        await in_netns(path, build)
        return path

    try:
        yield make
    finally:
        for name in names:
            await delete_named_netns(name)


def eth0(nl: Netlink) -> int:
    link = nl.link("eth0")
    assert link is not None
    return link.index


def addresses(*cidrs: str) -> Callable[[Netlink], None]:
    def shape(nl: Netlink) -> None:
        for cidr in cidrs:
            nl.add_address(eth0(nl), ipaddress.IPv4Interface(cidr))

    return shape


def default_via(gateway: str | None, *cidrs: str) -> Callable[[Netlink], None]:
    def shape(nl: Netlink) -> None:
        addresses(*cidrs)(nl)
        gw = ipaddress.IPv4Address(gateway) if gateway else None
        nl.replace_route(ipaddress.IPv4Network("0.0.0.0/0"), oif=eth0(nl), gateway=gw, scope=0 if gw else 253)

    return shape


@pytest.mark.asyncio
async def test_inspect_reads_the_pod_interface_routes_and_permanent_neighbours(bed: Testbed) -> None:
    node = WorkerNode(bed.worker_settings(vxlan_min_id=555000))
    pod_eth0 = await in_netns(bed.pod, lambda nl: nl.link("eth0"))
    gateway_mac = await in_netns(bed.node, lambda nl: nl.link("pod0-n"))
    assert pod_eth0 is not None and gateway_mac is not None

    config = await node.inspect(bed.pod, 555007)

    assert (config.pod_ip, config.interface, config.mtu) == (POD_IP, "eth0", 1500)
    assert config.pod_hw_addr == pod_eth0.mac
    assert config.worker_node_ip == NODE_UNDERLAY
    assert (config.vxlan_id, config.index, config.vxlan_port, config.tunnel_type) == (
        555007,
        7,
        4789,
        "vxlan",
    )
    assert not config.dedicated and not config.external_net_via_pod_vm
    assert config.routes == (
        Route(
            dst=ipaddress.IPv4Network("0.0.0.0/0"), gw=POD_GATEWAY.ip, dev="eth0", protocol=RouteProtocol.BOOT
        ),
        Route(dst=POD_IP.network, gw=None, dev="eth0", protocol=RouteProtocol.KERNEL, scope=RouteScope.LINK),
    )
    assert config.neighbors == (
        Neighbor(ip=POD_GATEWAY.ip, hw_addr=gateway_mac.mac, dev="eth0", state=NeighborState.PERMANENT),
    )


@pytest.mark.asyncio
async def test_pod_subnet_cidrs_become_routes_via_the_pod_gateway(bed: Testbed) -> None:
    extra = ipaddress.IPv4Network("198.18.128.0/17")
    node = WorkerNode(bed.worker_settings(pod_subnet_cidrs=(extra,), external_net_via_pod_vm=True))
    config = await node.inspect(bed.pod, 555000)
    assert Route(dst=extra, gw=POD_GATEWAY.ip, dev="eth0", protocol=RouteProtocol.STATIC) in config.routes
    assert config.external_net_via_pod_vm


@pytest.mark.asyncio
async def test_a_missing_namespace_is_invalid_input_naming_it(bed: Testbed, tmp_path: Path) -> None:
    node = WorkerNode(bed.worker_settings())
    missing = f"/run/netns/{bed.prefix}-nope"
    with pytest.raises(InvalidInput) as err:
        await node.inspect(missing, 555000)
    assert err.value.field == "networkNamespacePath"
    assert missing in str(err.value) and "does not exist" in str(err.value)

    not_a_netns = tmp_path / "netns"
    not_a_netns.write_text("")
    with pytest.raises(InvalidInput, match="is not a network namespace") as err:
        await node.inspect(str(not_a_netns), 555000)
    assert str(not_a_netns) in str(err.value)


@pytest.mark.asyncio
async def test_a_namespace_without_default_route_is_a_failed_precondition(
    bed: Testbed, make_netns: NetnsFactory
) -> None:
    path = await make_netns(addresses("198.51.100.20/24"))
    with pytest.raises(
        FailedPrecondition, match=f'failed to identify primary interface on network namespace "{path}"'
    ):
        await WorkerNode(bed.worker_settings()).inspect(path, 555000)


@pytest.mark.asyncio
@pytest.mark.parametrize("cidrs", [(), ("198.51.100.20/24", "198.51.100.21/24")], ids=["none", "two"])
async def test_not_exactly_one_ipv4_address_is_a_failed_precondition(
    bed: Testbed, make_netns: NetnsFactory, cidrs: tuple[str, ...]
) -> None:
    path = await make_netns(default_via(None, *cidrs))
    with pytest.raises(FailedPrecondition, match=f"has {len(cidrs)} IPv4 addresses") as err:
        await WorkerNode(bed.worker_settings()).inspect(path, 555000)
    assert path in str(err.value)


@pytest.mark.asyncio
async def test_the_host_endpoint_is_the_default_route_interface_unless_overridden(
    make_netns: NetnsFactory,
) -> None:
    def host(nl: Netlink) -> None:
        default_via("192.0.2.254", "192.0.2.1/24")(nl)
        peer = nl.link("eth0p")
        assert peer is not None
        nl.add_address(peer.index, ipaddress.IPv4Interface("203.0.113.1/24"))

    path = await make_netns(host)
    auto = await WorkerNode(WorkerNodeSettings(host_netns=path)).host_endpoint()
    assert (auto.interface, auto.address, auto.dedicated) == (
        "eth0",
        ipaddress.IPv4Interface("192.0.2.1/24"),
        False,
    )

    other = await WorkerNode(WorkerNodeSettings(host_netns=path, host_interface="eth0p")).host_endpoint()
    assert (other.interface, str(other.address), other.dedicated) == ("eth0p", "203.0.113.1/24", True)

    same = await WorkerNode(WorkerNodeSettings(host_netns=path, host_interface="eth0")).host_endpoint()
    assert not same.dedicated

    with pytest.raises(FailedPrecondition, match="wlan9"):
        await WorkerNode(WorkerNodeSettings(host_netns=path, host_interface="wlan9")).host_endpoint()


@pytest.mark.asyncio
async def test_a_host_without_default_route_needs_host_interface(make_netns: NetnsFactory) -> None:
    path = await make_netns(addresses("192.0.2.1/24"))
    with pytest.raises(FailedPrecondition, match="failed to identify primary interface"):
        await WorkerNode(WorkerNodeSettings(host_netns=path)).host_endpoint()
    endpoint = await WorkerNode(WorkerNodeSettings(host_netns=path, host_interface="eth0")).host_endpoint()
    assert (endpoint.interface, endpoint.dedicated) == ("eth0", False)
    with pytest.raises(FailedPrecondition, match="eth0p has no IPv4 address"):
        await WorkerNode(WorkerNodeSettings(host_netns=path, host_interface="eth0p")).host_endpoint()
