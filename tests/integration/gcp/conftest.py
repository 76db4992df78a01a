"""Fixtures of the daemon-level GCP tests: one stand and one fake GCP project per test.

Each test ends by asserting that every request body the daemon sent validated
against the compute v1 discovery document.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .harness import GcpNode


@pytest.fixture
def gcp_node() -> Iterator[GcpNode]:
    node = GcpNode()
    try:
        yield node
        assert node.cloud.fake.violations == [], "request bodies that fail the discovery document"
    finally:
        node.close()
