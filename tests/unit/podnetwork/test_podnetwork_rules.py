"""Pure decisions of the tunnel code: primary interface, tunnel destination, backend choice, input checks."""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping
from typing import Any

import pytest

from cloud_api_adaptor.errors import FailedPrecondition, InvalidInput
from cloud_api_adaptor.podnetwork import (
    PodNetworkConfig,
    WorkerNode,
    WorkerNodeSettings,
    choose_primary_interface,
    forwarder_network_setup,
    setup_pod_node,
)
from cloud_api_adaptor.podnetwork.notrack import (
    IptablesNotrack,
    NftablesNotrack,
    _comment_of,
    _nft_matches,
    comment_for,
    detect_notrack,
)
from cloud_api_adaptor.podnetwork.workernode import tunnel_destination

CONFIG = PodNetworkConfig(
    pod_ip=ipaddress.IPv4Interface("198.51.100.10/24"),
    pod_hw_addr="02:00:00:00:00:0a",
    interface="eth0",
    worker_node_ip=ipaddress.IPv4Interface("192.0.2.1/24"),
    mtu=1500,
    vxlan_port=4789,
    vxlan_id=555000,
)


@pytest.mark.parametrize(
    ("devices", "primary"),
    [
        ([], None),
        (["eth0"], "eth0"),
        (["ens1", "ens0"], "ens0"),
        (["ens0", "ens1"], "ens0"),
        (["eth1", "ens0"], "eth1"),  # another prefix never replaces the first
        (["bond", "bond0"], "bond0"),  # no number counts as the largest
        (["wlan", "eth0"], "wlan"),
        (["ens10", "ens9", "ens2"], "ens2"),
    ],
)
def test_primary_interface_follows_the_go_rule(devices: list[str], primary: str | None) -> None:
    assert choose_primary_interface(devices) == primary


def test_the_tunnel_points_at_the_first_vm_address_or_the_second_when_dedicated() -> None:
    ips: list[str | ipaddress.IPv4Address] = ["192.0.2.2", ipaddress.IPv4Address("192.0.2.3")]
    assert tunnel_destination(ips, dedicated=False) == ipaddress.IPv4Address("192.0.2.2")
    assert tunnel_destination(ips, dedicated=True) == ipaddress.IPv4Address("192.0.2.3")


@pytest.mark.parametrize(
    ("ips", "dedicated", "message"),
    [
        ([], False, "instance IP is not available"),
        (["192.0.2.2"], True, "dedicated tunnel missing destination address"),
        (["2001:db8::2"], False, "IPv4"),
        (["vm.example"], False, "not an IP address"),
    ],
)
def test_unusable_vm_addresses_are_invalid_input(ips: list[str], dedicated: bool, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        tunnel_destination(ips, dedicated)


def test_notrack_backend_prefers_iptables_then_nftables() -> None:
    assert isinstance(detect_notrack(lambda name: f"/usr/sbin/{name}"), IptablesNotrack)
    assert isinstance(
        detect_notrack(lambda name: "/usr/sbin/nft" if name == "nft" else None), NftablesNotrack
    )
    with pytest.raises(FailedPrecondition, match="neither iptables nor nft"):
        detect_notrack(lambda name: None)


def test_iptables_rules_are_recognised_by_their_go_comment() -> None:
    rule = ["-A", "peerpod-OUTPUT", "-d", "192.0.2.2/32", "-m", "comment", "--comment", comment_for(555000)]
    assert _comment_of(rule) == "peerpod [vni:555000]"
    assert _comment_of(["-A", "peerpod-OUTPUT", "-j", "NOTRACK"]) is None


def test_nft_json_rules_are_read_as_payload_matches() -> None:
    rule: dict[str, Any] = {
        "expr": [
            {
                "match": {
                    "op": "==",
                    "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                    "right": "192.0.2.2",
                }
            },
            {
                "match": {
                    "op": "==",
                    "left": {"payload": {"protocol": "udp", "field": "dport"}},
                    "right": 4789,
                }
            },
            {"notrack": None},
        ]
    }
    assert _nft_matches(rule) == {("ip", "daddr", "192.0.2.2"), ("udp", "dport", 4789)}


def test_only_vxlan_is_a_known_tunnel_type() -> None:
    with pytest.raises(InvalidInput, match='unknown tunnel type: "geneve"'):
        WorkerNode(WorkerNodeSettings(tunnel_type="geneve"))


@pytest.mark.asyncio
async def test_an_empty_namespace_path_means_no_tunnel_and_is_refused_by_inspect() -> None:
    with pytest.raises(InvalidInput) as err:
        await WorkerNode(WorkerNodeSettings()).inspect("", 555000)
    assert err.value.field == "networkNamespacePath"


@pytest.mark.asyncio
async def test_setup_refuses_a_config_without_vni_or_with_another_tunnel_type() -> None:
    node = WorkerNode(WorkerNodeSettings())
    with pytest.raises(InvalidInput, match="vxlan-id"):
        await node.setup("/run/netns/none", ["192.0.2.2"], dataclasses.replace(CONFIG, vxlan_id=0))
    with pytest.raises(InvalidInput, match="unknown tunnel type"):
        await setup_pod_node(dataclasses.replace(CONFIG, tunnel_type="gre"), "/run/netns/none")
    with pytest.raises(InvalidInput, match="MTU cap"):
        await setup_pod_node(CONFIG, "/run/netns/none", mtu_cap=10)


@dataclasses.dataclass(frozen=True)
class _Apf:
    pod_network: Mapping[str, Any] | None


@pytest.mark.asyncio
async def test_the_forwarder_hook_does_nothing_without_a_pod_network_object() -> None:
    await forwarder_network_setup(_Apf(None), "/run/netns/does-not-exist")


@pytest.mark.asyncio
async def test_the_forwarder_hook_rejects_a_malformed_pod_network_object() -> None:
    obj = CONFIG.to_json_obj()
    obj["mtu"] = "big"
    with pytest.raises(InvalidInput) as err:
        await forwarder_network_setup(_Apf(obj), "/run/netns/does-not-exist")
    assert err.value.field == "pod-network.mtu"
