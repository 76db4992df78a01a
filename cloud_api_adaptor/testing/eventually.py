"""Bounded waits for tests: poll a predicate until it holds, or fail naming what never happened.

A bound is a safety net far above what a loaded machine needs, never a timing
assertion.  ``eventually`` runs the check in a thread (it may call an SDK or
block on a file); ``eventually_sync`` is the same for synchronous tests.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

DEFAULT_TIMEOUT = 30.0


async def eventually(
    check: Callable[[], T], what: str, timeout: float = DEFAULT_TIMEOUT, interval: float = 0.05
) -> T:
    """Poll ``check`` until it returns something truthy and return that; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(check)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:.0f}s waiting for {what} (last: {value!r})")
        await asyncio.sleep(interval)


def eventually_sync(
    check: Callable[[], T], what: str, timeout: float = DEFAULT_TIMEOUT, interval: float = 0.05
) -> T:
    """``eventually`` for code without an event loop."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:.0f}s waiting for {what} (last: {value!r})")
        time.sleep(interval)
