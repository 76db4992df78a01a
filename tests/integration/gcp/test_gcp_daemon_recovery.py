"""``kill -9`` of the daemon while it waits on the insert's zone operation, then a restart: nothing leaks.

The fake holds operations ``RUNNING`` until the test releases them, so the daemon
is inside ``zoneOperations.wait`` when it dies; the instance exists (PROVISIONING)
with its owner labels.  After the restart the instance is found by its labels and
deleted, whether the insert finished while the daemon was down or is still running when
it comes back (the shim calls StopVM after a failed StartVM, as Kata does).
"""

from __future__ import annotations

import asyncio

import pytest

from cloud_api_adaptor import kata_client as kata
from cloud_api_adaptor.testing.eventually import eventually
from cloud_api_adaptor.ttrpc import Code, RpcError

from .harness import GcpNode, new_sandbox_id

pytestmark = pytest.mark.root


@pytest.mark.asyncio
@pytest.mark.parametrize("release", ["before-restart", "after-restart"])
async def test_kill_9_during_the_operation_wait_then_restart_leaves_no_instance(
    gcp_node: GcpNode, release: str
) -> None:
    cloud = gcp_node.cloud
    cloud.compute.hold_operations = True
    daemon = gcp_node.daemon(PROXY_TIMEOUT="60s")
    sid = new_sandbox_id()
    await kata.create_vm(daemon.socket, sid, kata.kata_annotations("crashy"))
    start = asyncio.create_task(kata.start_vm(daemon.socket, sid, timeout=120))
    [launched] = await eventually(lambda: cloud.of_sandbox(sid), "the pod's instance")
    waits = cloud.fake.calls("zoneOperations.wait")
    await eventually(lambda: cloud.fake.calls("zoneOperations.wait") > waits + 1, "the daemon waiting on it")
    daemon.kill9()
    with pytest.raises(RpcError) as err:
        await start
    assert err.value.code == Code.UNAVAILABLE, err.value
    assert cloud.of_sandbox(sid)[0]["status"] == "PROVISIONING"  # the crash left it behind

    if release == "before-restart":
        cloud.compute.release_operations()
        daemon.start(timeout=60)
    else:
        # recovery deletes the instance before the daemon serves, waiting on the (held) delete operation
        restart = asyncio.create_task(asyncio.to_thread(daemon.start, 60))
        await eventually(lambda: cloud.fake.calls("instances.delete") >= 1, "the recovery's delete")
        assert not restart.done()
        cloud.compute.release_operations()
        await restart
    await eventually(lambda: cloud.live() == [], "the instance's deletion after the restart", timeout=60)
    await kata.stop_vm(daemon.socket, sid)
    assert cloud.live() == []
    assert cloud.compute.created_total == 1 and launched["name"]
    assert list(daemon.pods_dir.iterdir()) == []
