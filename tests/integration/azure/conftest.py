"""Fixtures of the daemon-level Azure tests: one stand and one fake subscription per test.

Each test ends by asserting that every VM body the daemon sent validated against
the published ``VirtualMachine`` schema.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .harness import AzureNode


@pytest.fixture
def azure_node() -> Iterator[AzureNode]:
    node = AzureNode()
    try:
        yield node
        assert node.cloud.fake.violations == [], "request bodies that fail the VirtualMachine schema"
        assert node.cloud.fake.answer_violations == [], "the fake's VM answers break the schema"
    finally:
        node.close()
