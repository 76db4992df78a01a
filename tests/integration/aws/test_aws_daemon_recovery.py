"""``kill -9`` of the daemon around RunInstances, then a restart: no instance is leaked.

Two moments: right after moto launched the instance (the daemon may or may not
have recorded its id), and while RunInstances is still in flight (the fault
proxy holds the request, so moto launches the instance only after the daemon
died, possibly after it restarted).  Kata sees StartVM fail and calls StopVM,
as the shim does.  The bound on the waits is far above what a loaded machine
needs; nothing here measures time.
"""

from __future__ import annotations

import asyncio

import pytest

from cloud_api_adaptor import kata_client as kata
from cloud_api_adaptor.testing.eventually import eventually
from cloud_api_adaptor.testing.faultproxy import Fault
from cloud_api_adaptor.ttrpc import Code, RpcError

from .harness import AwsNode, new_sandbox_id, orphan_scans

pytestmark = pytest.mark.root


async def start_vm_dies_with_the_daemon(start: asyncio.Task[None]) -> None:
    with pytest.raises(RpcError) as err:
        await start
    assert err.value.code == Code.UNAVAILABLE, err.value


@pytest.mark.asyncio
async def test_kill_9_right_after_run_instances_then_restart_leaves_no_instance(aws_node: AwsNode) -> None:
    vpc = aws_node.vpc
    daemon = aws_node.daemon(PROXY_TIMEOUT="60s")
    sid = new_sandbox_id()
    await kata.create_vm(daemon.socket, sid, kata.kata_annotations("crashy"))
    start = asyncio.create_task(kata.start_vm(daemon.socket, sid, timeout=120))
    [launched] = await eventually(lambda: vpc.of_sandbox(sid), "the pod's instance", interval=0.005)
    daemon.kill9()
    await start_vm_dies_with_the_daemon(start)
    assert vpc.state(launched["InstanceId"]) in {"pending", "running"}  # the crash left it behind

    daemon.start(timeout=60)  # recovery: StartVM was under way, so the sandbox's instance goes
    await eventually(lambda: vpc.live() == [], "the instance's deletion after the restart")
    await kata.stop_vm(daemon.socket, sid)
    assert vpc.live() == []
    assert [i["InstanceId"] for i in vpc.of_sandbox(sid, live_only=False)] == [launched["InstanceId"]]
    assert list(daemon.pods_dir.iterdir()) == []


@pytest.mark.asyncio
async def test_kill_9_while_run_instances_is_in_flight_then_restart_and_stop_vm_leaves_no_instance(
    aws_node: AwsNode,
) -> None:
    vpc = aws_node.vpc
    proxy, endpoint = aws_node.fault_proxy()
    daemon = aws_node.daemon(
        endpoint, PROXY_TIMEOUT="60s", ORPHAN_SCAN_INTERVAL="1s", ORPHAN_GRACE_PERIOD="0s"
    )
    # moto sees the request 4 s after the daemon sent it: by then the daemon is dead
    proxy.add_rule("RunInstances", Fault.DELAY, delay=4.0)
    sid = new_sandbox_id()
    await kata.create_vm(daemon.socket, sid, kata.kata_annotations("in-flight"))
    start = asyncio.create_task(kata.start_vm(daemon.socket, sid, timeout=120))
    await eventually(lambda: proxy.count("RunInstances") == 1, "RunInstances on the wire", interval=0.005)
    daemon.kill9()
    await start_vm_dies_with_the_daemon(start)

    daemon.start(timeout=60)
    await kata.stop_vm(daemon.socket, sid)  # the shim's answer to a failed StartVM
    # the launch lands whenever the proxy lets it through; then it must go
    [late] = await eventually(lambda: vpc.of_sandbox(sid, live_only=False), "the delayed launch")
    await eventually(lambda: vpc.live() == [], "the late instance's deletion")
    assert [i["InstanceId"] for i in vpc.of_sandbox(sid, live_only=False)] == [late["InstanceId"]]
    assert proxy.count("RunInstances") == 1  # nothing re-launched it
    assert list(daemon.pods_dir.iterdir()) == []


@pytest.mark.asyncio
async def test_a_launch_landing_after_the_restart_is_deleted_by_the_orphan_scan_even_before_stop_vm(
    aws_node: AwsNode,
) -> None:
    vpc = aws_node.vpc
    proxy, endpoint = aws_node.fault_proxy()
    daemon = aws_node.daemon(
        endpoint, PROXY_TIMEOUT="60s", ORPHAN_SCAN_INTERVAL="1s", ORPHAN_GRACE_PERIOD="0s"
    )
    proxy.add_rule("RunInstances", Fault.DELAY, delay=4.0)
    sid = new_sandbox_id()
    await kata.create_vm(daemon.socket, sid, kata.kata_annotations("in-flight"))
    start = asyncio.create_task(kata.start_vm(daemon.socket, sid, timeout=120))
    await eventually(lambda: proxy.count("RunInstances") == 1, "RunInstances on the wire", interval=0.005)
    daemon.kill9()
    await start_vm_dies_with_the_daemon(start)
    daemon.start(timeout=60)

    await eventually(lambda: vpc.of_sandbox(sid, live_only=False), "the delayed launch")
    # a scan that listed the late instance, then one more: it should be gone by then
    await eventually(
        lambda: any(" 1 owned instances" in line for line in orphan_scans(daemon)), "a scan that saw it"
    )
    seen = len(orphan_scans(daemon))
    await eventually(lambda: len(orphan_scans(daemon)) > seen, "one more scan")
    assert vpc.live() == []
