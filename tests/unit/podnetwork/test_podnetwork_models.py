"""The apf.json ``pod-network`` object: Go's field names, encodings and omitempty rules, both ways."""

from __future__ import annotations

import copy
import ipaddress
import json
from typing import Any

import pytest

from cloud_api_adaptor.errors import InvalidInput
from cloud_api_adaptor.podnetwork.models import (
    Neighbor,
    NeighborState,
    PodNetworkConfig,
    Route,
    RouteProtocol,
    RouteScope,
)
from cloud_api_adaptor.podnetwork.testbed import go_daemon_rendering

# Written by hand in the Go adaptor's encoding (tunneler.Config marshalled by encoding/json).
GOLDEN = """{
    "podip": "198.51.100.10/24",
    "pod-hw-addr": "0a:58:c6:33:64:0a",
    "interface": "eth0",
    "worker-node-ip": "192.0.2.1/24",
    "tunnel-type": "vxlan",
    "routes": [
        {
            "dst": "0.0.0.0/0",
            "gw": "198.51.100.1",
            "dev": "eth0",
            "protocol": "boot"
        },
        {
            "dst": "198.51.100.0/24",
            "gw": "",
            "dev": "eth0",
            "protocol": "kernel",
            "scope": "link"
        }
    ],
    "neighbors": [
        {
            "ip": "198.51.100.1",
            "hw-addr": "ee:ee:ee:ee:ee:ee",
            "dev": "eth0",
            "state": "permanent"
        }
    ],
    "mtu": 1500,
    "index": 3,
    "vxlan-port": 4789,
    "vxlan-id": 555003,
    "dedicated": false,
    "external-net-via-pod-vm": false
}"""

# What a Go adaptor writes for a /32 pod without permanent neighbours (Calico style).
GOLDEN_CALICO = """{
    "podip": "203.0.113.7/32",
    "pod-hw-addr": "66:2f:1d:00:00:07",
    "interface": "eth0",
    "worker-node-ip": "192.0.2.1/24",
    "tunnel-type": "vxlan",
    "routes": [
        {
            "dst": "0.0.0.0/0",
            "gw": "169.254.1.1",
            "dev": "eth0",
            "protocol": "static"
        },
        {
            "dst": "169.254.1.1/32",
            "gw": "",
            "dev": "eth0",
            "protocol": "static",
            "scope": "link"
        }
    ],
    "neighbors": null,
    "mtu": 1450,
    "index": 0,
    "vxlan-id": 555000,
    "dedicated": true,
    "external-net-via-pod-vm": true
}"""


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=4)


@pytest.mark.parametrize("golden", [GOLDEN, GOLDEN_CALICO], ids=["veth-24", "calico-32"])
def test_golden_go_json_round_trips_byte_for_byte(golden: str) -> None:
    config = PodNetworkConfig.from_json_obj(json.loads(golden))
    assert dumps(config.to_json_obj()) == golden
    assert PodNetworkConfig.from_json_obj(json.loads(dumps(config.to_json_obj()))) == config


def test_golden_json_decodes_to_typed_fields() -> None:
    config = PodNetworkConfig.from_json_obj(json.loads(GOLDEN))
    assert config.pod_ip == ipaddress.IPv4Interface("198.51.100.10/24")
    assert config.worker_node_ip.ip == ipaddress.IPv4Address("192.0.2.1")
    assert config.routes == (
        Route(
            dst=ipaddress.IPv4Network("0.0.0.0/0"),
            gw=ipaddress.IPv4Address("198.51.100.1"),
            dev="eth0",
            protocol=RouteProtocol.BOOT,
        ),
        Route(
            dst=ipaddress.IPv4Network("198.51.100.0/24"),
            dev="eth0",
            protocol=RouteProtocol.KERNEL,
            scope=RouteScope.LINK,
        ),
    )
    assert config.neighbors == (
        Neighbor(
            ip=ipaddress.IPv4Address("198.51.100.1"),
            hw_addr="ee:ee:ee:ee:ee:ee",
            dev="eth0",
            state=NeighborState.PERMANENT,
        ),
    )
    assert (config.mtu, config.index, config.vxlan_port, config.vxlan_id) == (1500, 3, 4789, 555003)


def test_zero_values_are_left_out_like_go_omitempty() -> None:
    config = PodNetworkConfig(
        pod_ip=ipaddress.IPv4Interface("198.51.100.10/24"),
        pod_hw_addr="0A-58-C6-33-64-0A",
        interface="eth0",
        worker_node_ip=ipaddress.IPv4Interface("192.0.2.1/24"),
        routes=(Route(dst=None),),
    )
    obj = config.to_json_obj()
    assert "vxlan-port" not in obj and "vxlan-id" not in obj
    assert obj["neighbors"] is None
    assert obj["routes"] == [{"dst": "", "gw": ""}]
    assert obj["pod-hw-addr"] == "0a:58:c6:33:64:0a"
    assert config.effective_vxlan_port == 4789
    assert config.routes[0].destination == ipaddress.IPv4Network("0.0.0.0/0")


def test_decoding_accepts_empty_lists_missing_optionals_and_unknown_keys() -> None:
    obj = json.loads(GOLDEN)
    obj["routes"] = []
    obj["neighbors"] = []
    obj["some-future-field"] = {"x": 1}
    for key in ("mtu", "index", "vxlan-port", "dedicated", "external-net-via-pod-vm", "tunnel-type"):
        del obj[key]
    config = PodNetworkConfig.from_json_obj(obj)
    assert config.routes == () and config.neighbors == ()
    assert (config.mtu, config.vxlan_port, config.dedicated) == (0, 0, False)


def _with(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    obj: dict[str, Any] = copy.deepcopy(json.loads(GOLDEN))
    target: Any = obj
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return obj


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("mtu",), "1500", "pod-network.mtu"),
        (("mtu",), True, "pod-network.mtu"),
        (("mtu",), 1500.5, "pod-network.mtu"),
        (("dedicated",), "false", "pod-network.dedicated"),
        (("podip",), "198.51.100.10", "pod-network.podip"),
        (("podip",), "2001:db8::1/64", "pod-network.podip"),
        (("podip",), 7, "pod-network.podip"),
        (("worker-node-ip",), "", "pod-network.worker-node-ip"),
        (("pod-hw-addr",), "not-a-mac", "pod-network.pod-hw-addr"),
        (("interface",), ["eth0"], "pod-network.interface"),
        (("routes",), {"dst": "0.0.0.0/0"}, "pod-network.routes"),
        (("routes", 1, "gw"), "198.51.100.300", "pod-network.routes[1].gw"),
        (("routes", 0, "dst"), "banana", "pod-network.routes[0].dst"),
        (("routes", 0, "dst"), "10.0.0.0", "pod-network.routes[0].dst"),
        (("routes", 0, "protocol"), "carrier-pigeon", "pod-network.routes[0].protocol"),
        (("routes", 1, "scope"), 253, "pod-network.routes[1].scope"),
        (("routes", 0), "0.0.0.0/0", "pod-network.routes[0]"),
        (("neighbors", 0, "state"), "sleepy", "pod-network.neighbors[0].state"),
        (("neighbors", 0, "hw-addr"), "ee:ee", "pod-network.neighbors[0].hw-addr"),
        (("vxlan-id",), 1 << 24, "pod-network.vxlan-id"),
        (("vxlan-port",), -1, "pod-network.vxlan-port"),
    ],
)
def test_wrong_types_and_values_name_the_field(path: tuple[Any, ...], value: Any, field: str) -> None:
    with pytest.raises(InvalidInput) as err:
        PodNetworkConfig.from_json_obj(_with(path, value))
    assert err.value.field == field
    assert field in str(err.value)


def test_a_non_object_is_rejected() -> None:
    with pytest.raises(InvalidInput) as err:
        PodNetworkConfig.from_json_obj([1, 2])
    assert err.value.field == "pod-network"


def test_every_enum_name_round_trips() -> None:
    for protocol in RouteProtocol:
        for scope in RouteScope:
            route = Route(dst=ipaddress.IPv4Network("10.0.0.0/8"), protocol=protocol, scope=scope)
            assert Route.from_json_obj(route.to_json_obj(), "r") == route
    for state in NeighborState:
        neigh = Neighbor(ip=ipaddress.IPv4Address("10.0.0.1"), hw_addr="02:00:00:00:00:01", state=state)
        assert Neighbor.from_json_obj(neigh.to_json_obj(), "n") == neigh


def test_the_go_daemons_ipv4_mapped_renderings_decode_to_the_same_config() -> None:
    ours = json.loads(GOLDEN)
    go = go_daemon_rendering(ours)
    assert go["routes"][0]["dst"] == "::ffff:0.0.0.0/0" and go["routes"][1]["gw"] == ""
    assert PodNetworkConfig.from_json_obj(go) == PodNetworkConfig.from_json_obj(ours)
    # and we keep writing plain IPv4
    assert dumps(PodNetworkConfig.from_json_obj(go).to_json_obj()) == GOLDEN


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("::ffff:10.1.0.0/16", "10.1.0.0/16"),  # an IPv4 length, as the Go daemon keeps it
        ("::ffff:10.1.0.0/112", "10.1.0.0/16"),  # a true IPv6 length of a mapped address
        ("::ffff:0.0.0.0/0", None),  # the default route: Go's zero prefix
    ],
)
def test_mapped_route_destinations_keep_their_ipv4_length(text: str, expected: str | None) -> None:
    route = Route.from_json_obj({"dst": text, "dev": "eth0"}, "pod-network.routes[0]")
    assert str(route.destination) == (expected or "0.0.0.0/0")


@pytest.mark.parametrize("text", ["2001:db8::/32", "::ffff:10.0.0.0/33", "::ffff:10.0.0.0/129", "::1/128"])
def test_real_ipv6_prefixes_are_still_refused_naming_the_field(text: str) -> None:
    with pytest.raises(InvalidInput) as err:
        Route.from_json_obj({"dst": text, "dev": "eth0"}, "pod-network.routes[0]")
    assert err.value.field == "pod-network.routes[0].dst"
