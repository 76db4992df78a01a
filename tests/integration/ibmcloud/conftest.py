"""Fixtures of the daemon-level IBM tests: one set of fakes and one stand per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from caa_provider_ibmcloud.testing.world import VpcWorld
from caa_provider_ibmcloud_powervs.testing.world import PowerWorld

from .harness import FAKE_SUBNET, IbmNode


@pytest.fixture
def vpc_node() -> Iterator[IbmNode]:
    world = VpcWorld(subnet_cidr=FAKE_SUBNET)
    try:
        node = IbmNode(world, "ibmcloud")
        try:
            yield node
        finally:
            node.close()
    finally:
        world.close()


@pytest.fixture
def power_node() -> Iterator[IbmNode]:
    world = PowerWorld(subnet=FAKE_SUBNET)
    try:
        node = IbmNode(world, "ibmcloud-powervs")
        try:
            yield node
        finally:
            node.close()
    finally:
        world.close()
