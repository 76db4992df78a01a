"""The pod network tunnel end to end, between real network namespaces the test creates.

A "node" namespace (no route out) with a CNI-style veth into a "pod"
namespace, a "vm" namespace on an underlay veth, the VM's "vmpod" namespace
and a "peer" routed via the node (see ``podnetwork.testbed``).  The worker
side runs with ``host_netns`` = node, the VM side with ``vm_netns`` = vm.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from cloud_api_adaptor.apf import ApfConfig
from cloud_api_adaptor.errors import FailedPrecondition
from cloud_api_adaptor.podnetwork import (
    PodNetworkConfig,
    WorkerNode,
    WorkerNodeNetwork,
    delete_named_netns,
    setup_pod_node,
    teardown_pod_node,
)
from cloud_api_adaptor.podnetwork.netlink import Link, in_netns
from cloud_api_adaptor.podnetwork.notrack import IptablesNotrack, NftablesNotrack, NotrackBackend
from cloud_api_adaptor.podnetwork.testbed import (
    PEER_IP,
    POD_IP,
    VM_UNDERLAY,
    Testbed,
    echo_roundtrip,
    go_daemon_rendering,
    start_echo_server,
)
from cloud_api_adaptor.podnetwork.workernode import POD_VXLAN_NAME

pytestmark = pytest.mark.root

VNI = 555000
VM_IP = str(VM_UNDERLAY.ip)
PAYLOAD = os.urandom(256 * 1024)  # many full-size segments: MTU trouble would show


@pytest_asyncio.fixture
async def bed() -> AsyncIterator[Testbed]:
    testbed = await Testbed.create()
    try:
        yield testbed
    finally:
        await testbed.aclose()


@pytest.fixture(params=["iptables", "nftables"])
def backend(request: pytest.FixtureRequest) -> NotrackBackend:
    return IptablesNotrack() if request.param == "iptables" else NftablesNotrack()


async def assert_pod_reachable_both_ways(bed: Testbed) -> None:
    server, port = await start_echo_server(bed.vmpod, str(POD_IP.ip))
    async with server:
        assert await echo_roundtrip(bed.peer, str(POD_IP.ip), port, PAYLOAD) == PAYLOAD
    server, port = await start_echo_server(bed.peer, str(PEER_IP.ip))
    async with server:
        assert await echo_roundtrip(bed.vmpod, str(PEER_IP.ip), port, PAYLOAD) == PAYLOAD


async def link_in(path: str, name: str) -> Link | None:
    return await in_netns(path, lambda nl: nl.link(name))


async def both_sides_up(
    bed: Testbed, node: WorkerNode, config: PodNetworkConfig, backend: NotrackBackend
) -> None:
    await node.setup(bed.pod, [VM_IP], config)
    await setup_pod_node(config, bed.vmpod, vm_netns=bed.vm, notrack=backend)


async def both_sides_down(
    bed: Testbed, node: WorkerNode, config: PodNetworkConfig, backend: NotrackBackend
) -> None:
    await node.teardown(bed.pod, config)
    await teardown_pod_node(config, bed.vmpod, vm_netns=bed.vm, notrack=backend)


@pytest.mark.asyncio
async def test_the_pod_ip_lives_in_the_vm_and_talks_to_a_peer_both_ways(
    bed: Testbed, backend: NotrackBackend
) -> None:
    node = WorkerNode(bed.worker_settings(), notrack=backend)
    config = await node.inspect(bed.pod, VNI)
    await both_sides_up(bed, node, config, backend)

    await assert_pod_reachable_both_ways(bed)
    vx = await link_in(bed.pod, POD_VXLAN_NAME)
    assert vx is not None and vx.vxlan is not None
    assert (vx.vxlan.vni, str(vx.vxlan.group), vx.vxlan.port) == (VNI, VM_IP, 4789)
    vm_if = await link_in(bed.vmpod, "eth0")
    assert vm_if is not None and vm_if.kind == "vxlan"
    assert (vm_if.mac, vm_if.mtu) == (config.pod_hw_addr, 1450)
    assert any("192.0.2.2" in rule for rule in await bed.leftovers(backend))  # NOTRACK rules were there

    await both_sides_down(bed, node, config, backend)
    assert await bed.leftovers(backend) == []

    # The CNI veth stays: without the tunnel the worker's pod namespace answers again.
    server, port = await start_echo_server(bed.pod, str(POD_IP.ip))
    async with server:
        assert await echo_roundtrip(bed.peer, str(POD_IP.ip), port, b"plain") == b"plain"


@pytest.mark.asyncio
async def test_setup_twice_and_teardown_twice_change_nothing_the_second_time(bed: Testbed) -> None:
    backend = IptablesNotrack()
    node = WorkerNode(bed.worker_settings(), notrack=backend)
    config = await node.inspect(bed.pod, VNI)
    await both_sides_up(bed, node, config, backend)
    first = (await link_in(bed.pod, POD_VXLAN_NAME), await bed.leftovers(backend))
    await both_sides_up(bed, node, config, backend)
    restarted = WorkerNode(bed.worker_settings(), notrack=backend)  # a daemon restart re-runs setup
    await restarted.setup(bed.pod, [VM_IP], config)
    assert (await link_in(bed.pod, POD_VXLAN_NAME), await bed.leftovers(backend)) == first
    await assert_pod_reachable_both_ways(bed)

    await both_sides_down(bed, node, config, backend)
    await both_sides_down(bed, restarted, config, backend)
    assert await bed.leftovers(backend) == []


@pytest.mark.slow
@pytest.mark.asyncio
async def test_fifty_lifecycles_in_a_row_leave_nothing_behind(bed: Testbed) -> None:
    backend = IptablesNotrack()
    node = WorkerNode(bed.worker_settings(), notrack=backend)
    config = await node.inspect(bed.pod, VNI)
    for cycle in range(50):
        await both_sides_up(bed, node, config, backend)
        if cycle in (0, 49):
            await assert_pod_reachable_both_ways(bed)
        await both_sides_down(bed, node, config, backend)
    assert await bed.leftovers(backend) == []


@pytest.mark.asyncio
async def test_a_retry_towards_another_vm_address_replaces_the_tunnel(bed: Testbed) -> None:
    backend = IptablesNotrack()
    node = WorkerNode(bed.worker_settings(), notrack=backend)
    config = await node.inspect(bed.pod, VNI)
    await node.setup(bed.pod, ["192.0.2.99"], config)  # a first VM that never came up
    await both_sides_up(bed, node, config, backend)
    vx = await link_in(bed.pod, POD_VXLAN_NAME)
    assert vx is not None and vx.vxlan is not None and str(vx.vxlan.group) == VM_IP
    rules = await bed.leftovers(backend)
    assert not any("192.0.2.99" in r for r in rules)
    await assert_pod_reachable_both_ways(bed)
    await both_sides_down(bed, node, config, backend)
    assert await bed.leftovers(backend) == []


@pytest.mark.asyncio
async def test_a_vxlan_left_in_the_host_namespace_by_a_crash_is_cleaned_up(bed: Testbed) -> None:
    backend = IptablesNotrack()
    node = WorkerNode(bed.worker_settings(), notrack=backend)
    config = await node.inspect(bed.pod, VNI)
    await in_netns(bed.node, lambda nl: nl.add_vxlan(f"ppvx{VNI}", VNI, ipaddress.IPv4Address(VM_IP), 4789))
    await both_sides_up(bed, node, config, backend)
    assert await link_in(bed.node, f"ppvx{VNI}") is None
    await assert_pod_reachable_both_ways(bed)

    # ... and a crash between create and move, found by teardown.
    await in_netns(
        bed.node, lambda nl: nl.add_vxlan(f"ppvx{VNI + 1}", VNI + 1, ipaddress.IPv4Address(VM_IP), 4789)
    )
    await node.teardown("", dataclasses.replace(config, vxlan_id=VNI + 1))
    await both_sides_down(bed, node, config, backend)
    assert await bed.leftovers(backend) == []


@pytest.mark.asyncio
async def test_teardown_after_the_pod_namespace_is_gone_still_removes_the_rules(bed: Testbed) -> None:
    backend = NftablesNotrack()
    node = WorkerNode(bed.worker_settings(), notrack=backend)
    config = await node.inspect(bed.pod, VNI)
    await node.setup(bed.pod, [VM_IP], config)
    await delete_named_netns(f"{bed.prefix}-pod")
    del bed.paths["pod"]
    await node.teardown(f"/run/netns/{bed.prefix}-pod", config)
    assert await bed.leftovers(backend) == []


@pytest.mark.asyncio
async def test_two_pods_get_their_own_tunnels_and_rules(bed: Testbed) -> None:
    backend = IptablesNotrack()
    node = WorkerNode(bed.worker_settings(), notrack=backend)
    first = await node.inspect(bed.pod, VNI)
    second = await node.inspect(bed.plain, VNI + 1)  # the "plain" namespace plays a second pod
    await node.setup(bed.pod, [VM_IP], first)
    await node.setup(bed.plain, [VM_IP], second)
    await node.teardown(bed.pod, first)

    vx = await link_in(bed.plain, POD_VXLAN_NAME)
    assert vx is not None and vx.vxlan is not None and vx.vxlan.vni == VNI + 1
    rules = await bed.leftovers(backend)
    assert any(f"vni:{VNI + 1}" in r for r in rules) and not any(f"vni:{VNI}]" in r for r in rules)

    await node.teardown(bed.plain, second)
    assert await bed.leftovers(backend) == []


@pytest.mark.asyncio
async def test_the_same_vni_twice_on_one_node_is_a_clear_failed_precondition(bed: Testbed) -> None:
    backend = IptablesNotrack()
    node = WorkerNode(bed.worker_settings(), notrack=backend)
    first = await node.inspect(bed.pod, VNI)
    second = await node.inspect(bed.plain, VNI)
    await node.setup(bed.pod, [VM_IP], first)
    with pytest.raises(FailedPrecondition, match=f"VXLAN network identifier {VNI}"):
        await node.setup(bed.plain, ["192.0.2.3"], second)
    assert await link_in(bed.node, f"ppvx{VNI}") is None
    await node.teardown(bed.pod, first)
    await node.teardown(bed.plain, second)
    assert await bed.leftovers(backend) == []


@pytest.mark.asyncio
async def test_dedicated_mode_dials_the_vms_second_address(bed: Testbed) -> None:
    backend = IptablesNotrack()
    node = WorkerNode(bed.worker_settings(dedicated=True), notrack=backend)
    config = await node.inspect(bed.pod, VNI)
    assert config.dedicated
    await node.setup(bed.pod, ["192.0.2.77", VM_IP], config)
    await setup_pod_node(config, bed.vmpod, vm_netns=bed.vm, notrack=backend)
    vx = await link_in(bed.pod, POD_VXLAN_NAME)
    assert vx is not None and vx.vxlan is not None and str(vx.vxlan.group) == VM_IP
    await assert_pod_reachable_both_ways(bed)
    await both_sides_down(bed, node, config, backend)
    assert await bed.leftovers(backend) == []


@pytest.mark.asyncio
async def test_the_daemon_port_adapter_speaks_apf_json_mappings(bed: Testbed) -> None:
    backend = NftablesNotrack()
    port = WorkerNodeNetwork(WorkerNode(bed.worker_settings(), notrack=backend))
    pod_network = await port.inspect(bed.pod, VNI)
    assert pod_network["vxlan-id"] == VNI and pod_network["podip"] == str(POD_IP)
    await port.setup(bed.pod, [VM_IP], pod_network)
    await setup_pod_node(
        PodNetworkConfig.from_json_obj(pod_network), bed.vmpod, vm_netns=bed.vm, notrack=backend
    )
    await assert_pod_reachable_both_ways(bed)
    await port.teardown(bed.pod, pod_network)
    await teardown_pod_node(
        PodNetworkConfig.from_json_obj(pod_network), bed.vmpod, vm_netns=bed.vm, notrack=backend
    )
    assert await bed.leftovers(backend) == []


@pytest.mark.asyncio
async def test_the_testbed_removes_every_namespace_it_made() -> None:
    testbed = await Testbed.create()
    names = testbed.names()
    assert all(os.path.exists(f"/run/netns/{n}") for n in names)
    await testbed.aclose()
    await testbed.aclose()
    assert not any(os.path.exists(f"/run/netns/{n}") for n in names)


@pytest.mark.asyncio
async def test_an_apf_json_written_by_the_go_daemon_builds_the_vm_side_and_carries_traffic(
    bed: Testbed,
) -> None:
    """A node still running the Go daemon v0.22 with our pod VM image: IPv4-mapped routes and addresses."""
    backend = NftablesNotrack()
    port = WorkerNodeNetwork(WorkerNode(bed.worker_settings(), notrack=backend))
    pod_network = await port.inspect(bed.pod, VNI)
    go_rendered = go_daemon_rendering(pod_network)
    assert any(r["dst"].startswith("::ffff:") for r in go_rendered["routes"])
    apf = ApfConfig.from_json(
        json.dumps({"pod-namespace": "shop", "pod-name": "web", "pod-network": go_rendered}).encode()
    )
    assert apf.pod_network is not None
    vm_side = PodNetworkConfig.from_json_obj(apf.pod_network)
    await port.setup(bed.pod, [VM_IP], pod_network)
    await setup_pod_node(vm_side, bed.vmpod, vm_netns=bed.vm, notrack=backend)
    await assert_pod_reachable_both_ways(bed)
    await port.teardown(bed.pod, pod_network)
    await teardown_pod_node(vm_side, bed.vmpod, vm_netns=bed.vm, notrack=backend)
    assert await bed.leftovers(backend) == []
