"""Shared fixtures: short temporary directories (unix socket paths are limited to 107 bytes)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


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
