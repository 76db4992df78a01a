"""The one retry policy for ARM calls, bounded by the caller's deadline.

The SDKs' own retries are off (``arm.py``), so every retry goes through here.  A
``Retry-After`` the server sent (429, 503) stretches the backoff; no retry starts
after the caller's deadline.  Sleeps are injectable so tests run at full speed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from cloud_api_adaptor.errors import TemporaryProviderError

logger = logging.getLogger(__name__)
T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]


def _log_retry(state: RetryCallState) -> None:
    outcome = state.outcome
    error = outcome.exception() if outcome is not None else None
    delay = state.next_action.sleep if state.next_action is not None else 0.0
    logger.warning("azure: attempt %d failed (%s); retrying in %.2fs", state.attempt_number, error, delay)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter for temporary errors, a bounded number of attempts."""

    attempts: int = 8
    initial: float = 0.5
    maximum: float = 16.0
    jitter: float = 0.5
    #: a server's Retry-After is honoured up to this many seconds
    max_retry_after: float = 60.0
    sleep: Sleep = field(default=asyncio.sleep, repr=False)

    def _wait(self, state: RetryCallState) -> float:
        backoff = (wait_exponential(multiplier=self.initial, max=self.maximum) + wait_random(0, self.jitter))(
            state
        )
        outcome = state.outcome
        error = outcome.exception() if outcome is not None else None
        if isinstance(error, TemporaryProviderError) and error.retry_after:
            return max(backoff, min(error.retry_after, self.max_retry_after))
        return backoff

    async def run(self, call: Callable[[], Awaitable[T]], deadline: float | None = None) -> T:
        """``call()`` until it succeeds, fails permanently, runs out of attempts or of the deadline.

        ``deadline`` is a ``time.monotonic()`` value: no attempt starts after it.
        """

        def stop(state: RetryCallState) -> bool:
            if stop_after_attempt(self.attempts)(state):
                return True
            return deadline is not None and time.monotonic() >= deadline

        async for attempt in AsyncRetrying(
            stop=stop,
            wait=self._wait,
            retry=retry_if_exception_type(TemporaryProviderError),
            sleep=self.sleep,
            before_sleep=_log_retry,
            reraise=True,
        ):
            with attempt:
                return await call()
        raise AssertionError("unreachable: tenacity reraises the last error")  # pragma: no cover


@dataclass(frozen=True)
class WaitPolicy:
    """How long a create or delete may poll its long-running operation."""

    #: longest wait for a create when the caller gives no deadline (seconds)
    create_timeout: float = 900.0
    #: longest wait for one delete's operation (seconds)
    delete_timeout: float = 600.0
