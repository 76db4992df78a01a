"""The VPC provider through the daemon's ttrpc socket: pod VMs come up over mTLS, nothing is leaked.

The daemon runs in the stand's node namespace and reaches the IAM, VPC and
Global Tagging/Search fakes through a relay (and a fault proxy where faults are
injected); the test plays the pod VM with the address and user data the fake
holds.  Counts come from the fake itself: ``creates`` counts every instance it
ever accepted.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from caa_provider_ibmcloud.tags import owner_tag
from caa_provider_ibmcloud.testing.world import VpcWorld

from cloud_api_adaptor import kata_client as kata
from cloud_api_adaptor.provider import TAG_SANDBOX
from cloud_api_adaptor.testing.eventually import eventually
from cloud_api_adaptor.testing.faultproxy import Fault
from cloud_api_adaptor.ttrpc import Code, RpcError

from ..cloudstand.node import assert_agent_serves
from .harness import IbmNode, new_sandbox_id, orphan_scans

pytestmark = pytest.mark.root

CREATE_PATH = r"^/v1/instances$"


def fake(node: IbmNode) -> VpcWorld:
    assert isinstance(node.world, VpcWorld)
    return node.world


def instances_of(node: IbmNode, sid: str) -> list[str]:
    return fake(node).vpc.tagged(owner_tag(TAG_SANDBOX, sid))


def shape(node: IbmNode, instance_id: str) -> dict[str, Any]:
    return next(s for s in fake(node).vpc.live() if s["id"] == instance_id)


async def come_up(node: IbmNode, daemon: Any, sid: str, annotations: dict[str, str]) -> tuple[str, str]:
    """CreateVM, StartVM, boot the VM the fake made; (agent socket, instance id) once StartVM returned."""
    agent_path = await kata.create_vm(daemon.socket, sid, annotations)
    start = asyncio.create_task(kata.start_vm(daemon.socket, sid, timeout=120))
    try:
        [instance_id] = await eventually(lambda: instances_of(node, sid), "the pod's instance", timeout=60)
        vm = node.pod_vm()
        await vm.boot(fake(node).vpc.addresses(instance_id)[0], fake(node).vpc.user_data(instance_id))
        await start
    except BaseException:
        start.cancel()
        raise
    await assert_agent_serves(agent_path)
    return agent_path, instance_id


@pytest.mark.asyncio
async def test_a_tdx_pod_vm_comes_up_over_mutual_tls_and_stop_vm_leaves_nothing(vpc_node: IbmNode) -> None:
    vpc = fake(vpc_node).vpc
    daemon = vpc_node.daemon(PROXY_TIMEOUT="90s", ORPHAN_SCAN_INTERVAL="1s", ORPHAN_GRACE_PERIOD="0s")
    sid = new_sandbox_id()
    annotations = kata.kata_annotations("web", "shop", machine_type="bx3dc-2x10")
    _, instance_id = await come_up(vpc_node, daemon, sid, annotations)

    got = shape(vpc_node, instance_id)
    assert got["image"]["id"] == vpc.image_of("amd64")
    assert (got["confidential_compute_mode"], got["enable_secure_boot"]) == ("tdx", True)
    crn = got["crn"]
    assert {f"caa-node:{vpc_node.node_name}", f"coco-pod-vm:{vpc_node.cluster_id}"} <= fake(
        vpc_node
    ).platform.tags_of(crn)
    # orphan scans keep running and leave the running pod's instance alone
    seen = len(orphan_scans(daemon))
    await eventually(lambda: len(orphan_scans(daemon)) >= seen + 2, "two orphan scans")
    assert vpc.live_ids() == {instance_id}

    await kata.stop_vm(daemon.socket, sid)
    assert vpc.live() == [] and vpc.creates == 1
    assert daemon.stop() == 0
    assert list(daemon.pods_dir.iterdir()) == []
    vpc_node.close()
    assert vpc_node.leftovers() == []


@pytest.mark.asyncio
async def test_an_s390x_profile_boots_the_s390x_image(vpc_node: IbmNode) -> None:
    vpc = fake(vpc_node).vpc
    daemon = vpc_node.daemon(PROXY_TIMEOUT="90s")
    sid = new_sandbox_id()
    _, instance_id = await come_up(vpc_node, daemon, sid, kata.kata_annotations("z", machine_type="bz2e-2x8"))
    got = shape(vpc_node, instance_id)
    assert got["image"]["id"] == vpc.image_of("s390x") and got["profile"]["name"] == "bz2e-2x8"
    await kata.stop_vm(daemon.socket, sid)
    assert vpc.live() == []


@pytest.mark.asyncio
async def test_a_profile_whose_architecture_matches_no_image_is_a_clear_error_and_creates_nothing(
    vpc_node: IbmNode,
) -> None:
    vpc = fake(vpc_node).vpc
    daemon = vpc_node.daemon(IBMCLOUD_PODVM_IMAGE_ID=vpc.image_of("amd64"))
    sid = new_sandbox_id()
    with pytest.raises(RpcError) as err:
        await kata.create_vm(daemon.socket, sid, kata.kata_annotations("z", machine_type="bz2e-2x8"))
    assert err.value.code == Code.INVALID_ARGUMENT, err.value
    assert "no pod VM image for architecture s390x of instance profile bz2e-2x8" in str(err.value)
    assert vpc.creates == 0
    with pytest.raises(RpcError) as err:
        await kata.stop_vm(daemon.socket, sid)  # CreateVM recorded nothing
    assert err.value.code == Code.NOT_FOUND


@pytest.mark.asyncio
async def test_lost_create_responses_and_429_503_storms_make_one_instance_that_comes_up(
    vpc_node: IbmNode,
) -> None:
    vpc = fake(vpc_node).vpc
    proxy, endpoint = vpc_node.fault_proxy()
    daemon = vpc_node.daemon(endpoint, PROXY_TIMEOUT="90s")
    throttled = json.dumps({"errors": [{"code": "too_many_requests", "message": "Rate limit exceeded"}]})
    proxy.add_rule(
        "*",
        Fault.RESPOND,
        status=429,
        headers={"Retry-After": "1"},
        body=throttled.encode(),
        method="POST",
        path=CREATE_PATH,
    )
    proxy.add_rule("*", Fault.UNAVAILABLE, method="POST", path=CREATE_PATH)
    proxy.add_rule("*", Fault.DROP_RESPONSE, method="POST", path=CREATE_PATH)
    proxy.add_rule("*", Fault.DROP_RESPONSE, method="POST", path="/v3/tags/attach")
    proxy.add_rule(
        "*", Fault.RESPOND, status=429, headers={"Retry-After": "1"}, method="GET", path="^/v1/instances/"
    )
    proxy.add_rule("*", Fault.UNAVAILABLE, method="DELETE", path="^/v1/instances/")
    proxy.add_rule("*", Fault.DROP_RESPONSE, method="DELETE", path="^/v1/instances/")

    sid = new_sandbox_id()
    await come_up(vpc_node, daemon, sid, kata.kata_annotations("flaky", machine_type="bx3dc-2x10"))
    assert vpc.creates == 1, vpc_node.logs()
    await kata.stop_vm(daemon.socket, sid)
    assert proxy.pending_rules() == []
    assert vpc.live() == [] and vpc.creates == 1


@pytest.mark.asyncio
async def test_stop_vm_succeeds_when_the_instance_is_already_gone(vpc_node: IbmNode) -> None:
    vpc = fake(vpc_node).vpc
    daemon = vpc_node.daemon(PROXY_TIMEOUT="90s")
    sid = new_sandbox_id()
    _, instance_id = await come_up(
        vpc_node, daemon, sid, kata.kata_annotations("gone", machine_type="bx3dc-2x10")
    )
    vpc.remove_now(instance_id)  # deleted behind the daemon's back
    await kata.stop_vm(daemon.socket, sid)
    assert vpc.live() == [] and list(daemon.pods_dir.iterdir()) == []


async def start_vm_dies_with_the_daemon(start: asyncio.Task[None]) -> None:
    with pytest.raises(RpcError) as err:
        await start
    assert err.value.code == Code.UNAVAILABLE, err.value


@pytest.mark.asyncio
async def test_kill_9_after_the_create_then_restart_deletes_the_instance(vpc_node: IbmNode) -> None:
    vpc = fake(vpc_node).vpc
    vpc.pending_reads = 1_000_000  # the address never comes: the daemon is still waiting when it dies
    daemon = vpc_node.daemon(PROXY_TIMEOUT="60s")
    sid = new_sandbox_id()
    await kata.create_vm(daemon.socket, sid, kata.kata_annotations("crashy", machine_type="bx3dc-2x10"))
    start = asyncio.create_task(kata.start_vm(daemon.socket, sid, timeout=120))
    [instance_id] = await eventually(
        lambda: instances_of(vpc_node, sid), "the pod's instance", interval=0.005
    )
    daemon.kill9()
    await start_vm_dies_with_the_daemon(start)
    assert vpc.live_ids() == {instance_id}  # the crash left it behind

    daemon.start(timeout=60)  # recovery: StartVM was under way, so the sandbox's instance goes
    await eventually(lambda: vpc.live() == [], "the instance's deletion after the restart")
    await kata.stop_vm(daemon.socket, sid)
    assert vpc.live() == [] and vpc.creates == 1


@pytest.mark.asyncio
async def test_kill_9_while_the_create_is_in_flight_then_restart_leaves_no_instance(
    vpc_node: IbmNode,
) -> None:
    vpc = fake(vpc_node).vpc
    proxy, endpoint = vpc_node.fault_proxy()
    daemon = vpc_node.daemon(
        endpoint, PROXY_TIMEOUT="60s", ORPHAN_SCAN_INTERVAL="1s", ORPHAN_GRACE_PERIOD="0s"
    )
    # the VPC sees the create 4 s after the daemon sent it: by then the daemon is dead; the instance is
    # never tagged by the daemon, only its boot volume carries the owner tags
    proxy.add_rule("*", Fault.DELAY, delay=4.0, method="POST", path=CREATE_PATH)
    sid = new_sandbox_id()
    await kata.create_vm(daemon.socket, sid, kata.kata_annotations("in-flight", machine_type="bx3dc-2x10"))
    start = asyncio.create_task(kata.start_vm(daemon.socket, sid, timeout=120))
    await eventually(lambda: proxy.count("/v1/instances") >= 2, "the create on the wire", interval=0.005)
    daemon.kill9()
    await start_vm_dies_with_the_daemon(start)

    daemon.start(timeout=60)
    await kata.stop_vm(daemon.socket, sid)
    await eventually(lambda: vpc.creates == 1, "the delayed create")
    await eventually(lambda: vpc.live() == [], "the late instance's deletion")
    assert vpc.creates == 1
    assert list(daemon.pods_dir.iterdir()) == []
