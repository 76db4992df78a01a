"""Async tests here run on asyncio and on uvloop (the forwarder and the daemon run on uvloop)."""

from tests.both_loops import pytest_asyncio_loop_factories

__all__ = ["pytest_asyncio_loop_factories"]
