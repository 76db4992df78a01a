"""Azure's retry numbers on the shared policy, bounded by the caller's deadline, and the operation waits.

The SDKs' own retries are off (``arm.py``), so every retry goes through the shared
policy (``cloud_api_adaptor.retry``); a ``Retry-After`` the server sent (429, 503)
stretches the backoff.  A create also stops retrying once the caller's deadline
has passed.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import RetryCallState, stop_after_attempt
from tenacity.stop import stop_base

from cloud_api_adaptor import retry
from cloud_api_adaptor.retry import Sleep

__all__ = ["RetryPolicy", "Sleep", "WaitPolicy"]

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy(retry.RetryPolicy):
    """The shared policy with ARM's numbers; ``run`` optionally stops at a deadline."""

    label: str = "azure"
    attempts: int = 8
    maximum: float = 16.0

    async def run(self, call: Callable[[], Awaitable[T]], deadline: float | None = None) -> T:
        """``call()`` under this policy; with ``deadline`` (``time.monotonic()``) no retry starts after it."""
        if deadline is None:
            return await super().run(call)

        controller = self.retrying().copy(stop=stop_after_attempt(self.attempts) | _PastDeadline(deadline))
        async for attempt in controller:
            with attempt:
                return await call()
        raise AssertionError("unreachable: tenacity reraises the last error")


class _PastDeadline(stop_base):
    """Stop once ``time.monotonic()`` has reached the deadline."""

    def __init__(self, deadline: float) -> None:
        self._deadline = deadline

    def __call__(self, retry_state: RetryCallState) -> bool:
        return time.monotonic() >= self._deadline


@dataclass(frozen=True)
class WaitPolicy:
    """How long a create or delete may poll its long-running operation."""

    #: longest wait for a create when the caller gives no deadline (seconds)
    create_timeout: float = 900.0
    #: longest wait for one delete's operation (seconds)
    delete_timeout: float = 600.0
