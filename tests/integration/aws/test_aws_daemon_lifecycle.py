"""The pod lifecycle through the daemon's ttrpc socket, on the AWS provider against moto.

The daemon runs in the node namespace and reaches moto over HTTP
(``AWS_ENDPOINT_URL``); the test plays Kata (it talks to the daemon's unix
socket) and the cloud's pod VM (in the vm namespace, at the private IP moto
assigned).  Every test asserts what is left in moto.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from cloud_api_adaptor import kata_client as kata
from cloud_api_adaptor.provider import TAG_CLUSTER, TAG_NODE, TAG_SANDBOX
from cloud_api_adaptor.testing.eventually import eventually
from cloud_api_adaptor.ttrpc import Code, RpcError

from ..cloudstand.node import assert_agent_serves
from .cloud import AMI, boot_pod_vm, tag_map
from .harness import AwsNode, new_sandbox_id, orphan_scans

pytestmark = pytest.mark.root


@pytest.mark.asyncio
async def test_a_pod_vm_comes_up_over_mutual_tls_and_stop_vm_leaves_nothing(aws_node: AwsNode) -> None:
    vpc = aws_node.vpc
    # the orphan scan runs every second throughout: it must leave the running pod's instance alone
    daemon = aws_node.daemon(PROXY_TIMEOUT="90s", ORPHAN_SCAN_INTERVAL="1s", ORPHAN_GRACE_PERIOD="0s")
    sid = new_sandbox_id()
    agent_path = await kata.create_vm(daemon.socket, sid, kata.kata_annotations("web", "shop"))
    assert agent_path == f"{daemon.pods_dir}/{sid}/agent.ttrpc"
    assert vpc.of_sandbox(sid, live_only=False) == []  # CreateVM prepares; it launches nothing

    start = asyncio.create_task(kata.start_vm(daemon.socket, sid, timeout=120))
    try:
        launched = await eventually(lambda: vpc.of_sandbox(sid), "the pod's instance in moto")
        assert not start.done(), "StartVM returned before any pod VM could answer"
        vm = aws_node.pod_vm()
        await boot_pod_vm(vm, vpc, launched[0])
        await start  # the agent channel is up: mutual TLS to the forwarder at the instance's IP
    except BaseException:
        start.cancel()
        raise

    # what the daemon sent and what the VM got
    apf = json.loads(vm.apf_json.read_text())
    assert apf["pod-name"] == "web" and apf["pod-namespace"] == "shop"
    assert {"tls-server-cert", "tls-server-key", "tls-client-ca"} <= apf.keys()

    await assert_agent_serves(agent_path)

    # exactly one instance, carrying the owner tags, from the configured AMI and type
    [instance] = vpc.of_sandbox(sid)
    tags = tag_map(instance)
    assert tags[TAG_SANDBOX] == sid
    assert tags[TAG_NODE] == aws_node.node_name and tags[TAG_CLUSTER] == aws_node.cluster_id
    assert instance["ImageId"] == AMI and instance["InstanceType"] == "m6a.large"
    assert instance["SubnetId"] == vpc.subnet_id and str(vm.ip) == instance["PrivateIpAddress"]
    assert instance["State"]["Name"] == "running"

    # two more orphan scans, and the running pod's instance is still there
    seen = len(orphan_scans(daemon))
    await eventually(lambda: len(orphan_scans(daemon)) >= seen + 2, "two orphan scans")
    assert vpc.state(instance["InstanceId"]) == "running"

    await kata.stop_vm(daemon.socket, sid)
    assert vpc.state(instance["InstanceId"]) in {"shutting-down", "terminated"}
    assert vpc.live() == []
    assert not Path(agent_path).exists()

    # nothing left: processes, sockets, records' directories, namespaces
    vm.shutdown()
    assert daemon.stop() == 0
    assert list(daemon.pods_dir.iterdir()) == []
    assert aws_node.processes() == []
    aws_node.close()
    assert aws_node.leftovers() == []
    assert vpc.live() == []


@pytest.mark.asyncio
async def test_start_vm_with_no_forwarder_answering_fails_and_leaves_no_instance(aws_node: AwsNode) -> None:
    vpc = aws_node.vpc
    daemon = aws_node.daemon(PROXY_TIMEOUT="2s")
    sid = new_sandbox_id()
    await kata.create_vm(daemon.socket, sid, kata.kata_annotations("lonely"))
    with pytest.raises(RpcError) as err:
        await kata.start_vm(daemon.socket, sid, timeout=60)
    assert err.value.code == Code.DEADLINE_EXCEEDED, err.value
    # the instance was launched, then deleted before StartVM answered
    [launched] = vpc.of_sandbox(sid, live_only=False)
    assert launched["State"]["Name"] in {"shutting-down", "terminated"}
    assert vpc.live() == []
    await kata.stop_vm(daemon.socket, sid)
    assert vpc.live() == []
    assert len(vpc.of_sandbox(sid, live_only=False)) == 1  # StopVM launched nothing
