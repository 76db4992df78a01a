"""Blocking IBM SDK calls run on a thread pool of their own, errors translated at this edge."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from caa_provider_ibmcloud.errors import translate

T = TypeVar("T")


class SdkCalls:
    """Runs SDK calls off the event loop.

    The default executor has a handful of threads; a burst of pod creates should
    not queue behind it, so each provider owns a pool sized for its concurrency.
    """

    def __init__(self, name: str, max_workers: int = 32) -> None:
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=name)

    async def call(self, operation: str, fn: Callable[[], T]) -> T:
        """``fn()`` in the pool; any exception it raises comes back as one of ours."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn)
        except Exception as exc:
            raise translate(exc, operation) from exc

    async def aclose(self) -> None:
        await asyncio.to_thread(self._executor.shutdown, wait=True)
