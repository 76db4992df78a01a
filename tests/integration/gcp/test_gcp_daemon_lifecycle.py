"""A pod VM on the fake GCP through the daemon's ttrpc socket: up over mutual TLS, nothing left after StopVM.

The daemon runs in the stand's node namespace (no route out) and talks to the
fake Compute Engine with the real google-cloud-compute client, signing every call
with a service-account key the test made; the test plays the VM from the
instance's ``networkIP`` and its ``user-data`` metadata.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from cloud_api_adaptor import kata_client as kata
from cloud_api_adaptor.testing.eventually import eventually

from ..cloudstand.node import assert_agent_serves
from .cloud import MACHINE_TYPE, boot_pod_vm
from .harness import GcpNode, new_sandbox_id, orphan_scans

pytestmark = pytest.mark.root


@pytest.mark.asyncio
async def test_a_pod_vm_comes_up_over_mutual_tls_and_stop_vm_leaves_no_instance(gcp_node: GcpNode) -> None:
    cloud = gcp_node.cloud
    cloud.compute.op_polls = 3  # the insert stays RUNNING for a few waits
    daemon = gcp_node.daemon(PROXY_TIMEOUT="90s", ORPHAN_SCAN_INTERVAL="1s", ORPHAN_GRACE_PERIOD="0s")
    sid = new_sandbox_id()
    agent_path = await kata.create_vm(daemon.socket, sid, kata.kata_annotations("web", "shop"))
    assert cloud.of_sandbox(sid) == []  # CreateVM prepares; it creates nothing

    start = asyncio.create_task(kata.start_vm(daemon.socket, sid, timeout=120))
    try:
        [launched] = await eventually(lambda: cloud.of_sandbox(sid), "the pod's instance in the fake")
        assert not start.done(), "StartVM returned before any pod VM could answer"
        vm = gcp_node.pod_vm()
        await boot_pod_vm(vm, cloud, launched)
        await start  # the agent channel is up: mutual TLS to the forwarder at the instance's networkIP
    except BaseException:
        start.cancel()
        raise

    apf = json.loads(vm.apf_json.read_text())
    assert apf["pod-name"] == "web" and apf["pod-namespace"] == "shop"
    assert {"tls-server-cert", "tls-server-key", "tls-client-ca"} <= apf.keys()
    await assert_agent_serves(agent_path)

    [instance] = cloud.of_sandbox(sid)
    assert instance["status"] == "RUNNING"
    assert instance["machineType"].endswith(f"/machineTypes/{MACHINE_TYPE}")
    assert instance["confidentialInstanceConfig"]["confidentialInstanceType"] == "SEV_SNP"
    assert str(vm.ip) == instance["networkInterfaces"][0]["networkIP"]
    assert "accessConfigs" not in instance["networkInterfaces"][0]
    # the real credential code ran: every call carried a JWT signed with the test's key
    assert cloud.fake.accounts.self_signed + cloud.fake.accounts.exchanged > 0
    assert cloud.fake.calls("unauthenticated") == 0

    # the orphan scan (a label-filtered list) keeps running and leaves the running pod's instance alone
    seen = len(orphan_scans(daemon))
    await eventually(lambda: len(orphan_scans(daemon)) >= seen + 2, "two orphan scans")
    assert [i["name"] for i in cloud.of_sandbox(sid)] == [instance["name"]]

    await kata.stop_vm(daemon.socket, sid)
    assert cloud.live() == []
    assert cloud.compute.created_total == 1
    assert not Path(agent_path).exists()

    vm.shutdown()
    assert daemon.stop() == 0
    assert list(daemon.pods_dir.iterdir()) == []
    assert gcp_node.processes() == []
    gcp_node.close()
    assert gcp_node.leftovers() == []
