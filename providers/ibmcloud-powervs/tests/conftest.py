"""Fixtures for the PowerVS provider tests: the fakes on loopback, behind a fault proxy."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from caa_provider_ibmcloud_powervs.testing.world import PowerWorld

from cloud_api_adaptor.testing.faultproxy import FaultProxy


@pytest.fixture
def power_world() -> Iterator[PowerWorld]:
    world = PowerWorld()
    try:
        yield world
    finally:
        world.close()


@pytest.fixture
def power_proxy(power_world: PowerWorld) -> Iterator[FaultProxy]:
    with FaultProxy(power_world.url) as proxy:
        yield proxy
