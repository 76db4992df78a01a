"""Cloud faults between the daemon's Azure clients and the fake: one VM per sandbox, none after StopVM.

The fault proxy sits on the ARM endpoint the daemon uses.  It drops a PUT's
response after the fake acted on it (only PUT-by-name convergence keeps the count
at one, as on Azure), answers 429 with ``Retry-After`` and plain 503s on every kind
of call, the fake fails a create operation, and the subscription runs out of cores.
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
from .harness import AzureNode, new_sandbox_id

pytestmark = pytest.mark.root

VM_PATH = r"/virtualMachines/[^/]+$"
THROTTLED = b'{"error": {"code": "TooManyRequests", "message": "The request is being throttled."}}'


def vm_puts(proxy: FaultProxy) -> int:
    return sum(1 for r in proxy.requests() if r.method == "PUT")


@pytest.mark.asyncio
async def test_a_lost_put_response_and_a_retry_make_one_running_pod_vm(azure_node: AzureNode) -> None:
    cloud = azure_node.cloud
    proxy, endpoint = azure_node.fault_proxy()
    daemon = azure_node.daemon(endpoint, PROXY_TIMEOUT="90s")
    proxy.add_rule("*", Fault.DROP_RESPONSE, method="PUT", path=VM_PATH)

    sid = new_sandbox_id()
    agent_path = await kata.create_vm(daemon.socket, sid, kata.kata_annotations("flaky"))
    start = asyncio.create_task(kata.start_vm(daemon.socket, sid, timeout=120))
    try:
        [launched] = await eventually(lambda: cloud.of_sandbox(sid), "the pod's VM")
        await eventually(
            lambda: cloud.arm.get_vm(launched["name"])["properties"]["provisioningState"] == "Succeeded",
            "the VM provisioned",
        )
        vm = azure_node.pod_vm()
        await boot_pod_vm(vm, cloud, launched)
        await start
    except BaseException:
        start.cancel()
        raise
    await assert_agent_serves(agent_path)

    assert vm_puts(proxy) == 2, "the retry repeated the PUT by name"
    assert cloud.arm.created_total == 1
    await kata.stop_vm(daemon.socket, sid)
    assert cloud.arm.leftovers() == {}


@pytest.mark.asyncio
async def test_429s_503s_and_a_failed_operation_still_give_one_vm_per_sandbox_and_none_after(
    azure_node: AzureNode,
) -> None:
    """No forwarder answers (StartVM fails fast): only creates and deletes are under test."""
    cloud = azure_node.cloud
    proxy, endpoint = azure_node.fault_proxy()
    daemon = azure_node.daemon(endpoint, PROXY_TIMEOUT="20s")
    throttled = {"Retry-After": "1", "Content-Type": "application/json"}
    for method, path, fault, times in [
        ("PUT", VM_PATH, Fault.RESPOND, 2),
        ("PUT", VM_PATH, Fault.UNAVAILABLE, 2),
        ("PUT", VM_PATH, Fault.DROP_RESPONSE, 1),
        ("GET", r"/operations/", Fault.UNAVAILABLE, 2),
        ("GET", r"/operations/", Fault.RESPOND, 2),
        ("GET", r"/networkInterfaces/", Fault.RESPOND, 1),
        ("DELETE", VM_PATH, Fault.UNAVAILABLE, 2),
        ("DELETE", VM_PATH, Fault.RESPOND, 1),
        ("DELETE", VM_PATH, Fault.DROP_RESPONSE, 1),
    ]:
        proxy.add_rule(
            "*", fault, method=method, path=path, times=times, status=429, headers=throttled, body=THROTTLED
        )
    cloud.arm.fail_creates.append(("InternalExecutionError", "An internal execution error occurred."))

    ids = [new_sandbox_id() for _ in range(3)]

    async def lifecycle(i: int, sid: str) -> None:
        await kata.create_vm(daemon.socket, sid, kata.kata_annotations(f"pod-{i}"))
        with pytest.raises(RpcError) as err:
            await kata.start_vm(daemon.socket, sid, timeout=120)
        assert err.value.code == Code.DEADLINE_EXCEEDED, err.value
        assert cloud.of_sandbox(sid) == []  # StartVM deleted its VM before answering
        await kata.stop_vm(daemon.socket, sid)

    await asyncio.gather(*(lifecycle(i, sid) for i, sid in enumerate(ids)))
    assert proxy.pending_rules() == [], "every injected fault fired"
    assert cloud.arm.created_total == len(ids), azure_node.logs()
    assert cloud.arm.leftovers() == {}
    assert list(daemon.pods_dir.iterdir()) == []


@pytest.mark.asyncio
async def test_quota_exhaustion_reaches_kata_naming_the_quota_and_leaves_nothing(
    azure_node: AzureNode,
) -> None:
    cloud = azure_node.cloud
    cloud.arm.quotas["standardDCASv5Family"] = 1
    daemon = azure_node.daemon(PROXY_TIMEOUT="30s")
    sid = new_sandbox_id()
    await kata.create_vm(daemon.socket, sid, kata.kata_annotations("big"))
    with pytest.raises(RpcError) as err:
        await kata.start_vm(daemon.socket, sid, timeout=60)
    assert err.value.code == Code.FAILED_PRECONDITION, err.value
    assert "OperationNotAllowed" in str(err.value)
    assert "standardDCASv5Family Cores quota" in str(err.value)
    assert "raise the subscription's quota" in str(err.value)
    await kata.stop_vm(daemon.socket, sid)
    assert cloud.arm.leftovers() == {} and cloud.arm.created_total == 0
