"""The PowerVS provider through the daemon's ttrpc socket: pod VMs come up over mTLS, nothing is leaked.

As for the VPC tests, the daemon runs in the stand's node namespace and reaches
the IAM, PowerVS and Global Search fakes through a relay (and a fault proxy);
the test plays the pod VM.  ``creates`` counts every instance the fake accepted.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from caa_provider_ibmcloud.tags import owner_tag
from caa_provider_ibmcloud_powervs.testing.world import PowerWorld

from cloud_api_adaptor import kata_client as kata
from cloud_api_adaptor.provider import TAG_SANDBOX
from cloud_api_adaptor.testing.eventually import eventually
from cloud_api_adaptor.testing.faultproxy import Fault
from cloud_api_adaptor.ttrpc import Code, RpcError

from ..cloudstand.node import assert_agent_serves
from .harness import IbmNode, new_sandbox_id

pytestmark = pytest.mark.root

CREATE_PATH = "/pvm-instances$"


def fake(node: IbmNode) -> PowerWorld:
    assert isinstance(node.world, PowerWorld)
    return node.world


def instances_of(node: IbmNode, sid: str) -> list[str]:
    return fake(node).power.tagged(owner_tag(TAG_SANDBOX, sid))


async def come_up(node: IbmNode, daemon: Any, sid: str, pod: str) -> str:
    agent_path = await kata.create_vm(daemon.socket, sid, kata.kata_annotations(pod))
    start = asyncio.create_task(kata.start_vm(daemon.socket, sid, timeout=120))
    try:
        [instance_id] = await eventually(lambda: instances_of(node, sid), "the pod's instance", timeout=60)
        vm = node.pod_vm()
        power = fake(node).power
        await vm.boot(power.address(instance_id), power.user_data(instance_id))
        await start
    except BaseException:
        start.cancel()
        raise
    await assert_agent_serves(agent_path)
    return instance_id


@pytest.mark.asyncio
async def test_a_pod_vm_comes_up_over_mutual_tls_and_stop_vm_leaves_nothing(power_node: IbmNode) -> None:
    power = fake(power_node).power
    daemon = power_node.daemon(PROXY_TIMEOUT="90s", ORPHAN_SCAN_INTERVAL="1s", ORPHAN_GRACE_PERIOD="0s")
    sid = new_sandbox_id()
    instance_id = await come_up(power_node, daemon, sid, "a-pod-with-a-rather-long-name-for-power")
    name = power.instances[instance_id].shape["serverName"]
    [created] = power.named(name)
    assert len(name) <= 47 and created["procType"] == "shared" and created["processors"] == 1.0
    await kata.stop_vm(daemon.socket, sid)
    assert power.live_ids() == set() and power.creates == 1
    assert daemon.stop() == 0
    power_node.close()
    assert power_node.leftovers() == []


@pytest.mark.asyncio
async def test_a_dhcp_network_pod_vm_comes_up_on_its_leased_address(power_node: IbmNode) -> None:
    fake(power_node).power.network_type = "dynamic"
    daemon = power_node.daemon(PROXY_TIMEOUT="90s")
    sid = new_sandbox_id()
    await come_up(power_node, daemon, sid, "dhcp")
    await kata.stop_vm(daemon.socket, sid)
    assert fake(power_node).power.live_ids() == set()


@pytest.mark.asyncio
async def test_a_build_timeout_fails_start_vm_and_leaves_no_instance(power_node: IbmNode) -> None:
    power = fake(power_node).power
    power.next_outcome = ["BUILD"]  # never ACTIVE
    daemon = power_node.daemon(POWERVS_BUILD_TIMEOUT="2s")
    sid = new_sandbox_id()
    await kata.create_vm(daemon.socket, sid, kata.kata_annotations("slow"))
    with pytest.raises(RpcError) as err:
        await kata.start_vm(daemon.socket, sid, timeout=120)
    assert "POWERVS_BUILD_TIMEOUT" in str(err.value), err.value
    assert power.creates == 1 and power.live_ids() == set()
    await kata.stop_vm(daemon.socket, sid)
    assert power.live_ids() == set()


@pytest.mark.asyncio
async def test_lost_create_responses_and_429_503_storms_make_one_instance_that_comes_up(
    power_node: IbmNode,
) -> None:
    power = fake(power_node).power
    proxy, endpoint = power_node.fault_proxy()
    daemon = power_node.daemon(endpoint, PROXY_TIMEOUT="90s")
    throttled = json.dumps({"code": 429, "error": "too many requests", "description": "slow down"}).encode()
    proxy.add_rule(
        "*",
        Fault.RESPOND,
        status=429,
        headers={"Retry-After": "1"},
        body=throttled,
        method="POST",
        path=CREATE_PATH,
    )
    proxy.add_rule("*", Fault.UNAVAILABLE, method="POST", path=CREATE_PATH)
    proxy.add_rule("*", Fault.DROP_RESPONSE, method="POST", path=CREATE_PATH)
    proxy.add_rule("*", Fault.UNAVAILABLE, method="GET", path="/pvm-instances/")
    proxy.add_rule(
        "*", Fault.RESPOND, status=429, headers={"Retry-After": "1"}, method="DELETE", path="/pvm-"
    )
    proxy.add_rule("*", Fault.DROP_RESPONSE, method="DELETE", path="/pvm-instances/")

    sid = new_sandbox_id()
    await come_up(power_node, daemon, sid, "flaky")
    assert power.creates == 1, power_node.logs()
    await kata.stop_vm(daemon.socket, sid)
    assert proxy.pending_rules() == []
    assert power.live_ids() == set() and power.creates == 1


@pytest.mark.asyncio
async def test_stop_vm_succeeds_when_the_instance_is_already_gone(power_node: IbmNode) -> None:
    power = fake(power_node).power
    daemon = power_node.daemon(PROXY_TIMEOUT="90s")
    sid = new_sandbox_id()
    instance_id = await come_up(power_node, daemon, sid, "gone")
    power.remove_now(instance_id)
    await kata.stop_vm(daemon.socket, sid)
    assert power.live_ids() == set() and list(daemon.pods_dir.iterdir()) == []


@pytest.mark.asyncio
async def test_kill_9_during_the_build_then_restart_deletes_the_instance(power_node: IbmNode) -> None:
    power = fake(power_node).power
    power.next_outcome = ["BUILD"]
    daemon = power_node.daemon(PROXY_TIMEOUT="60s", POWERVS_BUILD_TIMEOUT="10m")
    sid = new_sandbox_id()
    await kata.create_vm(daemon.socket, sid, kata.kata_annotations("crashy"))
    start = asyncio.create_task(kata.start_vm(daemon.socket, sid, timeout=120))
    [instance_id] = await eventually(
        lambda: instances_of(power_node, sid), "the pod's instance", interval=0.005
    )
    daemon.kill9()
    with pytest.raises(RpcError) as err:
        await start
    assert err.value.code == Code.UNAVAILABLE
    assert power.live_ids() == {instance_id}

    daemon.start(timeout=60)
    await eventually(lambda: power.live_ids() == set(), "the instance's deletion after the restart")
    await kata.stop_vm(daemon.socket, sid)
    assert power.live_ids() == set() and power.creates == 1


@pytest.mark.asyncio
async def test_kill_9_while_the_create_is_in_flight_then_restart_leaves_no_instance(
    power_node: IbmNode,
) -> None:
    power = fake(power_node).power
    proxy, endpoint = power_node.fault_proxy()
    daemon = power_node.daemon(
        endpoint, PROXY_TIMEOUT="60s", ORPHAN_SCAN_INTERVAL="1s", ORPHAN_GRACE_PERIOD="0s"
    )
    proxy.add_rule("*", Fault.DELAY, delay=4.0, method="POST", path=CREATE_PATH)
    sid = new_sandbox_id()
    await kata.create_vm(daemon.socket, sid, kata.kata_annotations("in-flight"))
    start = asyncio.create_task(kata.start_vm(daemon.socket, sid, timeout=120))
    await eventually(
        lambda: any(r.method == "POST" and r.path.endswith("/pvm-instances") for r in proxy.requests()),
        "the create on the wire",
        interval=0.005,
    )
    daemon.kill9()
    with pytest.raises(RpcError):
        await start
    daemon.start(timeout=60)
    await kata.stop_vm(daemon.socket, sid)
    await eventually(lambda: power.creates == 1, "the delayed create")
    await eventually(lambda: power.live_ids() == set(), "the late instance's deletion")
    assert power.creates == 1
