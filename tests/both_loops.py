"""A conftest hook that runs every async test twice: on asyncio's loop and on uvloop.

A test directory opts in by importing ``pytest_asyncio_loop_factories`` into its
conftest.  uvloop is what the daemon and the forwarder use.

uvloop's transports differ from asyncio's where the relay cares: they are not
``asyncio.Transport`` subclasses, they keep a reference to a buffer they could
not send at once, and they own a socket handed to ``create_connection``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest

from cloud_api_adaptor.aio import loop_factory


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    factories: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {"asyncio": asyncio.new_event_loop}
    uvloop = loop_factory("auto")  # None when uvloop is not installed
    if uvloop is not None:
        factories["uvloop"] = uvloop
    return factories
