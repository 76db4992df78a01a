"""Fixtures for the VPC provider tests: the fakes on loopback, behind a fault proxy."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from caa_provider_ibmcloud.testing.world import VpcWorld

from cloud_api_adaptor.testing.faultproxy import FaultProxy


@pytest.fixture
def vpc_world() -> Iterator[VpcWorld]:
    world = VpcWorld()
    try:
        yield world
    finally:
        world.close()


@pytest.fixture
def vpc_proxy(vpc_world: VpcWorld) -> Iterator[FaultProxy]:
    with FaultProxy(vpc_world.url) as proxy:
        yield proxy
