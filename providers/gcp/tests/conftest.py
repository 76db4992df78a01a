"""Fixtures for the GCP provider tests: a fresh fake Compute Engine per test, behind a fault proxy.

Every test ends by asserting that each request body the fake received validated
against the compute v1 discovery document.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from gcp_testkit import GcpWorld, make_world


@pytest.fixture
def world() -> Iterator[GcpWorld]:
    world, proxy = make_world()
    try:
        yield world
        assert world.fake.violations == [], "request bodies that fail the discovery document"
    finally:
        proxy.stop()
        world.fake.close()
