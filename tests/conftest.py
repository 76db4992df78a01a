"""Shared fixtures: short temporary directories (unix socket paths are limited to 107 bytes), and a check
that no async test leaves a task running."""

from __future__ import annotations

import asyncio
import inspect
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio


def reap_local_vms(root: Path) -> int:
    """Delete every local-provider VM whose work directory lies under ``root``.

    Local VMs outlive their daemon on purpose (like cloud VMs), so a test that
    fails half-way would otherwise leave processes, namespaces and links behind.
    """
    import asyncio

    from cloud_api_adaptor.options import load
    from cloud_api_adaptor.plugins import load_plugin
    from cloud_api_adaptor.provider import ProviderContext

    plugin = load_plugin("local")
    reaped = 0

    async def reap(work_dir: Path) -> int:
        context = ProviderContext("reaper", "reaper", work_dir.parent.parent, work_dir)
        provider = plugin.build(load(plugin.settings_class, {}), context)
        try:
            instances = await provider.list_instances({})
            for instance in instances:
                await provider.delete_instance(instance.id)
            return len(instances)
        finally:
            await provider.aclose()

    for records in root.glob("**/records"):
        work_dir = records.parent
        if (work_dir / "vms").is_dir():
            reaped += asyncio.run(reap(work_dir))
    return reaped


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="caa-t", dir="/tmp"))
    try:
        yield path
    finally:
        reap_local_vms(path)
        shutil.rmtree(path, ignore_errors=True)


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
    here = Path(__file__).parent
    for item in items:
        # the fixture is visible only below this directory (providers/*/tests are collected too)
        if not item.path.is_relative_to(here):
            continue
        if isinstance(item, pytest.Function) and inspect.iscoroutinefunction(item.obj):
            # first in the list: set up before, and torn down after, the test's own fixtures
            item.fixturenames.insert(0, "_no_pending_tasks")
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (CI runs as root)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)
