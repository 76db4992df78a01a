"""A pod VM on the fake Azure through the daemon's ttrpc socket: up over mutual TLS, nothing left after.

The daemon runs in the stand's node namespace (no route out) and talks to the fake
ARM with the real azure-mgmt-compute/-network async clients, over HTTPS, with a
token azure-identity got from the fake's token endpoint with the client secret;
the test plays the VM from the NIC's private IP and the VM's ``userData``.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from cloud_api_adaptor import kata_client as kata
from cloud_api_adaptor.testing.eventually import eventually

from ..cloudstand.node import assert_agent_serves
from .cloud import SIZE, boot_pod_vm
from .harness import AzureNode, new_sandbox_id, orphan_scans

pytestmark = pytest.mark.root


@pytest.mark.asyncio
async def test_a_pod_vm_comes_up_over_mutual_tls_and_stop_vm_leaves_no_vm_nic_disk_or_ip(
    azure_node: AzureNode,
) -> None:
    cloud = azure_node.cloud
    cloud.arm.op_polls = 3  # the PUT's operation stays InProgress for a few polls
    daemon = azure_node.daemon(PROXY_TIMEOUT="90s", ORPHAN_SCAN_INTERVAL="1s", ORPHAN_GRACE_PERIOD="0s")
    sid = new_sandbox_id()
    agent_path = await kata.create_vm(daemon.socket, sid, kata.kata_annotations("web", "shop"))
    assert cloud.of_sandbox(sid) == []  # CreateVM prepares; it creates nothing

    start = asyncio.create_task(kata.start_vm(daemon.socket, sid, timeout=120))
    try:
        [launched] = await eventually(lambda: cloud.of_sandbox(sid), "the pod's VM in the fake")
        assert not start.done(), "StartVM returned before any pod VM could answer"
        vm = azure_node.pod_vm()
        await boot_pod_vm(vm, cloud, launched)
        await start  # the agent channel is up: mutual TLS to the forwarder at the NIC's private IP
    except BaseException:
        start.cancel()
        raise

    apf = json.loads(vm.apf_json.read_text())
    assert apf["pod-name"] == "web" and apf["pod-namespace"] == "shop"
    await assert_agent_serves(agent_path)

    [instance] = cloud.of_sandbox(sid)
    props = instance["properties"]
    assert props["provisioningState"] == "Succeeded"
    assert props["hardwareProfile"]["vmSize"] == SIZE
    assert props["securityProfile"]["securityType"] == "ConfidentialVM"
    assert str(vm.ip) == cloud.arm.private_ip(instance["name"])
    assert cloud.arm.public_ips == {}
    # the real credential flow ran: a client-secret token, and no ARM call went unauthenticated
    assert "client-secret" in cloud.fake.token_grants and "refused" not in cloud.fake.token_grants
    assert cloud.fake.calls("unrouted") == 0

    # the orphan scan (a list filtered by owner tags) keeps running and leaves the running pod's VM alone
    seen = len(orphan_scans(daemon))
    await eventually(lambda: len(orphan_scans(daemon)) >= seen + 2, "two orphan scans")
    assert [i["name"] for i in cloud.of_sandbox(sid)] == [instance["name"]]

    await kata.stop_vm(daemon.socket, sid)
    assert cloud.arm.leftovers() == {}  # no VM, NIC, disk or public IP
    assert cloud.arm.created_total == 1
    assert not Path(agent_path).exists()

    vm.shutdown()
    assert daemon.stop() == 0
    assert list(daemon.pods_dir.iterdir()) == []
    assert azure_node.processes() == []
    azure_node.close()
    assert azure_node.leftovers() == []
