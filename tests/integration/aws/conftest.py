"""Fixtures of the daemon-level AWS tests: one moto backend per session, one stand per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .cloud import serve_moto
from .harness import AwsNode


@pytest.fixture(scope="session")
def moto_hub() -> Iterator[str]:
    """moto on 127.0.0.1 (its first EC2 call initialises the backend: about a second, paid once)."""
    server, url = serve_moto("127.0.0.1")
    try:
        yield url
    finally:
        server.stop()


@pytest.fixture
def aws_node(moto_hub: str) -> Iterator[AwsNode]:
    node = AwsNode(moto_hub)
    try:
        yield node
    finally:
        node.close()
