"""Cloud faults between the daemon's boto3 and moto: one instance per sandbox, none after StopVM.

The fault proxy (``cloud_api_adaptor.testing.faultproxy``) sits on the EC2
endpoint the daemon uses: it drops the RunInstances response after moto acted
on it (moto ignores ClientToken, so only the provider's own reconciliation can
keep the count at one), answers ``RequestLimitExceeded`` throttling, and plain
503s.  The test counts what moto holds per sandbox tag, over every state, so an
instance created and later terminated still counts as created.
"""

from __future__ import annotations

import asyncio

import pytest

from cloud_api_adaptor import kata_client as kata
from cloud_api_adaptor.testing.eventually import eventually
from cloud_api_adaptor.testing.faultproxy import Fault, FaultProxy
from cloud_api_adaptor.ttrpc import Code, RpcError

from ..cloudstand.node import assert_agent_serves
from .cloud import boot_pod_vm
from .harness import AwsNode, new_sandbox_id

pytestmark = pytest.mark.root


def fired(proxy: FaultProxy, fault: Fault, action: str) -> int:
    return sum(1 for r in proxy.requests(action) if r.fault is fault)


@pytest.mark.asyncio
async def test_a_lost_run_instances_response_and_failing_terminates_still_make_one_running_pod_vm(
    aws_node: AwsNode,
) -> None:
    vpc = aws_node.vpc
    proxy, endpoint = aws_node.fault_proxy()
    daemon = aws_node.daemon(endpoint, PROXY_TIMEOUT="90s")
    proxy.add_rule("RunInstances", Fault.THROTTLE)
    proxy.add_rule("RunInstances", Fault.DROP_RESPONSE)
    proxy.add_rule("TerminateInstances", Fault.UNAVAILABLE)
    proxy.add_rule("TerminateInstances", Fault.DROP_RESPONSE)
    proxy.add_rule("TerminateInstances", Fault.THROTTLE)

    sid = new_sandbox_id()
    agent_path = await kata.create_vm(daemon.socket, sid, kata.kata_annotations("flaky"))
    start = asyncio.create_task(kata.start_vm(daemon.socket, sid, timeout=120))
    try:
        # RunInstances: throttled once, then acted on by moto with its answer lost
        await eventually(lambda: fired(proxy, Fault.DROP_RESPONSE, "RunInstances") == 1, "the lost response")
        [launched] = await eventually(lambda: vpc.of_sandbox(sid), "the pod's instance")
        vm = aws_node.pod_vm()
        await boot_pod_vm(vm, vpc, launched)
        await start
    except BaseException:
        start.cancel()
        raise

    await assert_agent_serves(agent_path)
    # the provider found what the lost response created and adopted it: one instance, ever
    assert [i["InstanceId"] for i in vpc.of_sandbox(sid, live_only=False)] == [launched["InstanceId"]]
    assert proxy.count("RunInstances") == 2

    await kata.stop_vm(daemon.socket, sid)  # terminate: a 503, a lost answer, throttled, then done
    assert proxy.pending_rules() == []
    assert vpc.live() == []
    assert len(vpc.of_sandbox(sid, live_only=False)) == 1


@pytest.mark.asyncio
async def test_concurrent_sandboxes_under_throttling_503s_and_lost_responses_get_one_instance_each(
    aws_node: AwsNode,
) -> None:
    """No forwarder answers (StartVM fails fast): only creates and deletes are under test."""
    vpc = aws_node.vpc
    proxy, endpoint = aws_node.fault_proxy()
    daemon = aws_node.daemon(endpoint, PROXY_TIMEOUT="1s")
    # The provider makes six attempts per call.  At most three injected failures can land on one create
    # (a sandbox loses at most one RunInstances answer: its next attempt adopts the instance), which
    # leaves room for the odd 500 moto itself answers to concurrent RunInstances (its subnet address
    # generator is not thread-safe).  Three can land on one delete.
    for action, fault, times in [
        ("DescribeInstances", Fault.UNAVAILABLE, 1),
        ("RunInstances", Fault.DROP_RESPONSE, 2),
        ("RunInstances", Fault.THROTTLE, 1),
        ("TerminateInstances", Fault.DROP_RESPONSE, 1),
        ("TerminateInstances", Fault.THROTTLE, 1),
        ("TerminateInstances", Fault.UNAVAILABLE, 1),
    ]:
        proxy.add_rule(action, fault, times=times)

    ids = [new_sandbox_id() for _ in range(4)]

    async def lifecycle(i: int, sid: str) -> None:
        await kata.create_vm(daemon.socket, sid, kata.kata_annotations(f"pod-{i}"))
        with pytest.raises(RpcError) as err:
            await kata.start_vm(daemon.socket, sid, timeout=120)
        assert err.value.code == Code.DEADLINE_EXCEEDED, err.value
        # StartVM deleted its instance before answering
        assert vpc.of_sandbox(sid) == []
        await kata.stop_vm(daemon.socket, sid)

    await asyncio.gather(*(lifecycle(i, sid) for i, sid in enumerate(ids)))

    assert proxy.pending_rules() == [], "every injected fault fired"
    for sid in ids:
        assert len(vpc.of_sandbox(sid, live_only=False)) == 1, f"sandbox {sid}: {aws_node.logs()}"
    assert vpc.live() == []
    assert list(daemon.pods_dir.iterdir()) == []
