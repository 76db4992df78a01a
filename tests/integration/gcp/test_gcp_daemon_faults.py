"""Cloud faults between the daemon's Google client and the fake: one instance per sandbox, none after StopVM.

The fault proxy sits on the Compute Engine endpoint the daemon uses.  It drops an
insert's response after the fake acted on it (only the ``requestId`` the retry
repeats keeps the count at one, as on GCP), answers 429 ``rateLimitExceeded`` and
plain 503s on every kind of call, and the fake runs out of quota.
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
from .harness import GcpNode, new_sandbox_id

pytestmark = pytest.mark.root

INSERT = r"/zones/[^/]+/instances$"
THROTTLED = (
    b'{"error": {"code": 429, "message": "Rate Limit Exceeded", "errors": '
    b'[{"domain": "usageLimits", "reason": "rateLimitExceeded", "message": "Rate Limit Exceeded"}]}}'
)


def inserts(proxy: FaultProxy) -> list[str]:
    """The requestId of every insert the daemon sent."""
    return [
        r.params.get("requestId", "")
        for r in proxy.requests()
        if r.method == "POST" and r.path.split("?")[0].endswith("/instances")
    ]


@pytest.mark.asyncio
async def test_a_lost_insert_response_and_a_retry_make_one_running_pod_vm(gcp_node: GcpNode) -> None:
    cloud = gcp_node.cloud
    proxy, endpoint = gcp_node.fault_proxy()
    daemon = gcp_node.daemon(endpoint, PROXY_TIMEOUT="90s")
    proxy.add_rule("*", Fault.DROP_RESPONSE, method="POST", path=INSERT)

    sid = new_sandbox_id()
    agent_path = await kata.create_vm(daemon.socket, sid, kata.kata_annotations("flaky"))
    start = asyncio.create_task(kata.start_vm(daemon.socket, sid, timeout=120))
    try:
        [launched] = await eventually(lambda: cloud.of_sandbox(sid), "the pod's instance")
        vm = gcp_node.pod_vm()
        await boot_pod_vm(vm, cloud, launched)
        await start
    except BaseException:
        start.cancel()
        raise
    await assert_agent_serves(agent_path)

    sent = inserts(proxy)
    assert len(sent) == 2 and len(set(sent)) == 1, "the retry repeats the requestId"
    assert cloud.compute.created_total == 1
    await kata.stop_vm(daemon.socket, sid)
    assert cloud.live() == []


@pytest.mark.asyncio
async def test_429_and_503_storms_on_every_call_still_give_one_instance_per_sandbox(
    gcp_node: GcpNode,
) -> None:
    """No forwarder answers (StartVM fails fast): only creates and deletes are under test."""
    cloud = gcp_node.cloud
    proxy, endpoint = gcp_node.fault_proxy()
    daemon = gcp_node.daemon(endpoint, PROXY_TIMEOUT="1s")
    for method, path, fault, times in [
        ("POST", INSERT, Fault.RESPOND, 2),
        ("POST", INSERT, Fault.UNAVAILABLE, 2),
        ("POST", INSERT, Fault.DROP_RESPONSE, 2),
        ("POST", r"/wait$", Fault.UNAVAILABLE, 3),
        ("POST", r"/wait$", Fault.RESPOND, 2),
        ("GET", r"/instances/", Fault.RESPOND, 2),
        ("DELETE", r"/instances/", Fault.UNAVAILABLE, 2),
        ("DELETE", r"/instances/", Fault.RESPOND, 1),
        ("DELETE", r"/instances/", Fault.DROP_RESPONSE, 1),
    ]:
        proxy.add_rule("*", fault, method=method, path=path, times=times, status=429, body=THROTTLED)

    ids = [new_sandbox_id() for _ in range(3)]

    async def lifecycle(i: int, sid: str) -> None:
        await kata.create_vm(daemon.socket, sid, kata.kata_annotations(f"pod-{i}"))
        with pytest.raises(RpcError) as err:
            await kata.start_vm(daemon.socket, sid, timeout=120)
        assert err.value.code == Code.DEADLINE_EXCEEDED, err.value
        assert cloud.of_sandbox(sid) == []  # StartVM deleted its instance before answering
        await kata.stop_vm(daemon.socket, sid)

    await asyncio.gather(*(lifecycle(i, sid) for i, sid in enumerate(ids)))
    assert proxy.pending_rules() == [], "every injected fault fired"
    assert cloud.compute.created_total == len(ids), gcp_node.logs()
    assert cloud.live() == []
    assert list(daemon.pods_dir.iterdir()) == []


@pytest.mark.asyncio
async def test_quota_exhaustion_reaches_kata_named_and_leaves_nothing(gcp_node: GcpNode) -> None:
    cloud = gcp_node.cloud
    cloud.compute.quotas["N2D_CPUS"]["limit"] = 1.0
    daemon = gcp_node.daemon(PROXY_TIMEOUT="30s")
    sid = new_sandbox_id()
    await kata.create_vm(daemon.socket, sid, kata.kata_annotations("big"))
    with pytest.raises(RpcError) as err:
        await kata.start_vm(daemon.socket, sid, timeout=60)
    assert err.value.code == Code.FAILED_PRECONDITION, err.value
    assert "QUOTA_EXCEEDED" in str(err.value) and "Quota 'N2D_CPUS' exceeded" in str(err.value)
    assert "raise the quota" in str(err.value)
    await kata.stop_vm(daemon.socket, sid)
    assert cloud.live() == [] and cloud.compute.created_total == 0
