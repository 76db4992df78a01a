"""Fixtures for the Azure provider tests: a fresh fake ARM per test, behind a fault proxy.

Every test ends by asserting that each VM body the fake received validated
against the published ``VirtualMachine`` schema.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from azure_testkit import AzureWorld, make_world


@pytest.fixture
def world() -> Iterator[AzureWorld]:
    world = make_world()
    try:
        yield world
        assert world.fake.violations == [], "request bodies that fail the VirtualMachine schema"
        assert world.fake.answer_violations == [], "the fake's VM answers break the schema"
    finally:
        world.close()
