"""Checks every test of the repository gets (tests/ and providers/*/tests alike).

- an async test may not leave a task running once its fixtures are torn down;
- tests marked ``root`` are skipped without root (CI runs as root).
"""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio


@pytest_asyncio.fixture
async def _no_pending_tasks() -> AsyncIterator[None]:
    """Fail an async test that leaves a task running once its fixtures are torn down (kopf does this)."""
    before = asyncio.all_tasks()
    yield
    for _ in range(3):  # let tasks cancelled during teardown finish
        await asyncio.sleep(0)
    me = asyncio.current_task()  # teardown runs in a task of its own
    left = {t for t in asyncio.all_tasks() - before if t is not me and not t.done()}
    for task in left:
        task.cancel()
    assert not left, f"the test left tasks running: {sorted(t.get_name() for t in left)}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if isinstance(item, pytest.Function) and inspect.iscoroutinefunction(item.obj):
            # first in the list: set up before, and torn down after, the test's own fixtures
            item.fixturenames.insert(0, "_no_pending_tasks")
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (CI runs as root)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)
