"""``kill -9`` of the daemon while it polls the VM PUT's operation, then a restart: nothing leaks.

The fake holds operations ``InProgress`` until the test releases them, so the
daemon is polling when it dies; the VM exists (``Creating``) with its owner tags,
its NIC and its disk.  After the restart the VM is found by its tags and deleted
(NIC and disk with it), whether the create finished while the daemon was down or
is still running when it comes back.
"""

from __future__ import annotations

import asyncio

import pytest

from cloud_api_adaptor import kata_client as kata
from cloud_api_adaptor.testing.eventually import eventually
from cloud_api_adaptor.ttrpc import Code, RpcError

from .harness import AzureNode, new_sandbox_id

pytestmark = pytest.mark.root


@pytest.mark.asyncio
@pytest.mark.parametrize("release", ["before-restart", "after-restart"])
async def test_kill_9_during_the_create_operation_then_restart_leaves_nothing(
    azure_node: AzureNode, release: str
) -> None:
    cloud = azure_node.cloud
    cloud.arm.hold_operations = True
    daemon = azure_node.daemon(PROXY_TIMEOUT="60s")
    sid = new_sandbox_id()
    await kata.create_vm(daemon.socket, sid, kata.kata_annotations("crashy"))
    start = asyncio.create_task(kata.start_vm(daemon.socket, sid, timeout=120))
    [launched] = await eventually(lambda: cloud.of_sandbox(sid), "the pod's VM")
    polls = cloud.fake.calls("operations.get")
    await eventually(lambda: cloud.fake.calls("operations.get") > polls + 1, "the daemon polling the PUT")
    daemon.kill9()
    with pytest.raises(RpcError) as err:
        await start
    assert err.value.code == Code.UNAVAILABLE, err.value
    assert cloud.of_sandbox(sid)[0]["properties"]["provisioningState"] == "Creating"  # the crash left it

    if release == "before-restart":
        cloud.arm.release_operations()
        daemon.start(timeout=60)
    else:
        # recovery deletes the VM before the daemon serves, polling the (held) delete operation
        restart = asyncio.create_task(asyncio.to_thread(daemon.start, 60))
        await eventually(lambda: cloud.fake.calls("virtualMachines.delete") >= 1, "the recovery's delete")
        assert not restart.done()
        cloud.arm.release_operations()
        await restart
    await eventually(lambda: cloud.arm.leftovers() == {}, "the VM's deletion after the restart", timeout=60)
    await kata.stop_vm(daemon.socket, sid)
    assert cloud.arm.leftovers() == {}
    assert cloud.arm.created_total == 1 and launched["name"]
    assert list(daemon.pods_dir.iterdir()) == []
