"""The stand itself: moto reachable from the node namespace, nothing else routed, nothing left behind."""

from __future__ import annotations

import asyncio
import ipaddress
import subprocess
import sys

import pytest

from ..cloudstand.stand import NODE_VM_ADDRESS, VM_SUBNET, ip, netns_exec
from .cloud import Vpc, ec2_client
from .harness import AwsNode

pytestmark = pytest.mark.root

FETCH = """
import sys, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
print(opener.open(sys.argv[1], timeout=10).status)
"""


def run_in(ns: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(netns_exec(ns, argv), capture_output=True, text=True, check=False, timeout=60)


@pytest.mark.asyncio
async def test_the_node_reaches_moto_and_only_the_vm_subnet_and_the_stand_leaves_nothing(
    aws_node: AwsNode,
) -> None:
    stand = aws_node.stand
    # the daemon's view: moto answers on the root side of the link
    fetched = await asyncio.to_thread(run_in, stand.node_ns, sys.executable, "-c", FETCH, aws_node.moto_url)
    assert fetched.stdout.strip() == "200", fetched.stderr
    # the test's view (loopback) and the node's listener serve one EC2
    node_facing = ec2_client(aws_node.moto_url)
    try:
        vpcs = node_facing.describe_vpcs(VpcIds=[aws_node.vpc.vpc_id])["Vpcs"]
    finally:
        node_facing.close()
    assert [v["CidrBlock"] for v in vpcs] == [str(VM_SUBNET)]

    # connected routes only: the /30 to the root namespace and the VM subnet; no default anywhere
    assert sorted(stand.routes(stand.node_ns)) == sorted(
        [
            f"{stand.link} dev {stand.node_up_if} proto kernel scope link src {stand.node_ip}",
            f"{VM_SUBNET} dev {stand.node_vm_if} proto kernel scope link src {NODE_VM_ADDRESS.ip}",
        ]
    )
    assert stand.routes(stand.vm_ns) == []
    # the root namespace gained the /30 only; the VM subnet is unknown there
    root_routes = [line.split()[0] for line in ip("-4", "route", "show").splitlines()]
    assert str(stand.link) in root_routes
    assert not any(ipaddress.IPv4Network(r).overlaps(VM_SUBNET) for r in root_routes if r != "default")
    # a packet for any other address fails closed in the node namespace
    for elsewhere in ("192.0.2.1", "1.1.1.1", "10.0.0.1", "169.254.169.254"):
        got = run_in(stand.node_ns, "ip", "route", "get", elsewhere)
        assert got.returncode != 0 and "unreachable" in got.stderr.lower(), (elsewhere, got)
    # and no IPv6 on the test links
    for ns, ifname in ((stand.node_ns, stand.node_up_if), (stand.node_ns, stand.node_vm_if)):
        assert "inet6" not in ip("addr", "show", "dev", ifname, ns=ns)
    assert "inet6" not in ip("addr", "show", "dev", stand.root_if)

    # the VM side gets the instance's address when it is known, and then reaches the node
    vm_ip = ipaddress.IPv4Address("198.51.100.4")
    stand.add_vm_address(vm_ip)
    assert stand.vm_addresses() == [str(vm_ip)]
    got = run_in(stand.vm_ns, "ip", "route", "get", str(NODE_VM_ADDRESS.ip))
    assert got.returncode == 0, got.stderr
    got = run_in(stand.vm_ns, "ip", "route", "get", str(stand.root_ip))
    assert got.returncode != 0

    aws_node.close()
    assert aws_node.leftovers() == []


def test_each_vpc_hands_out_private_ips_inside_the_stand_subnet(moto_hub: str) -> None:
    ec2 = ec2_client(moto_hub)
    try:
        vpc = Vpc.create(ec2)
        first = vpc.run_tagged({"purpose": "address-check"})
        address = ec2.describe_instances(InstanceIds=[first])["Reservations"][0]["Instances"][0][
            "PrivateIpAddress"
        ]
        assert ipaddress.IPv4Address(address) in VM_SUBNET
        assert ipaddress.IPv4Address(address) != NODE_VM_ADDRESS.ip
        vpc.terminate_all()
        assert vpc.live() == []
    finally:
        ec2.close()
