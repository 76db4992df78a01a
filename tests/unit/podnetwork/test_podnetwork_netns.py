"""run_in_netns: results, errors, missing namespaces, and cleanup that outlives a cancelled caller."""

from __future__ import annotations

import asyncio
import threading

import pytest

from cloud_api_adaptor.errors import InvalidInput
from cloud_api_adaptor.podnetwork.netns import NamespaceNotFound, named_netns_path, run_in_netns


@pytest.mark.asyncio
async def test_the_result_and_the_exception_of_the_function_come_back() -> None:
    assert await run_in_netns(None, lambda: 41 + 1) == 42

    def boom() -> None:
        raise ValueError("kernel said no")

    with pytest.raises(ValueError, match="kernel said no"):
        await run_in_netns(None, boom)


@pytest.mark.asyncio
async def test_a_missing_namespace_path_is_namespace_not_found() -> None:
    with pytest.raises(NamespaceNotFound) as err:
        await run_in_netns("/run/netns/caa-definitely-missing", lambda: None)
    assert err.value.path == "/run/netns/caa-definitely-missing"
    assert "does not exist" in str(err.value)


@pytest.mark.asyncio
async def test_a_cancelled_caller_waits_until_the_kernel_work_is_done() -> None:
    started, release = threading.Event(), threading.Event()
    finished: list[int] = []

    def work() -> int:
        started.set()
        release.wait()
        finished.append(1)
        return 1

    task = asyncio.create_task(run_in_netns(None, work))
    await asyncio.to_thread(started.wait)
    task.cancel()
    for _ in range(5):
        await asyncio.sleep(0)
    assert not task.done()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert finished == [1]


def test_namespace_names_are_checked() -> None:
    assert named_netns_path("caa-pod1") == "/run/netns/caa-pod1"
    for bad in ("", "../etc", "a/b", "x" * 70):
        with pytest.raises(InvalidInput):
            named_netns_path(bad)
