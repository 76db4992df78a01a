"""The one retry policy providers wrap their cloud calls in.

Every provider turns its SDK's errors into ``TemporaryProviderError`` or a
permanent error at its edge and switches the SDK's own retries off, so that a
create is never resent blindly (a lost response must first be looked for by
the provider's idempotency key).  What is left to retry is the same everywhere:
temporary errors, exponential backoff with jitter, a bounded number of attempts,
and a ``Retry-After`` the cloud sent honoured (never waiting less than it asked,
up to a cap).  Providers differ only in their numbers, so they pass those, not
code.  Sleeps are injectable so tests run at full speed.
"""

from __future__ import annotations

import asyncio
import logging
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

Sleep = Callable[[float], Awaitable[None]]
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter for temporary errors, a bounded number of attempts."""

    #: names the cloud in the log line of each retry
    label: str = "provider"
    #: total attempts, the first included
    attempts: int = 6
    #: first backoff, seconds (doubles each time)
    initial: float = 0.5
    #: longest backoff, seconds (a longer Retry-After still wins, up to ``retry_after_cap``)
    maximum: float = 10.0
    #: random extra wait up to this many seconds
    jitter: float = 0.5
    #: the longest Retry-After honoured, seconds
    retry_after_cap: float = 60.0
    sleep: Sleep = field(default=asyncio.sleep, repr=False)

    def _wait(self, state: RetryCallState) -> float:
        backoff = wait_exponential(multiplier=self.initial, max=self.maximum) + wait_random(0, self.jitter)
        delay = float(backoff(state))
        error = state.outcome.exception() if state.outcome is not None else None
        if isinstance(error, TemporaryProviderError) and error.retry_after is not None:
            delay = max(delay, min(error.retry_after, self.retry_after_cap))
        return delay

    def _log_retry(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        delay = state.next_action.sleep if state.next_action is not None else 0.0
        logger.warning(
            "%s: attempt %d failed (%s); retrying in %.2fs", self.label, state.attempt_number, error, delay
        )

    def retrying(self) -> AsyncRetrying:
        """A fresh tenacity controller: ``async for attempt in policy.retrying(): with attempt: ...``."""
        return AsyncRetrying(
            stop=stop_after_attempt(self.attempts),
            wait=self._wait,
            retry=retry_if_exception_type(TemporaryProviderError),
            sleep=self.sleep,
            before_sleep=self._log_retry,
            reraise=True,
        )

    async def run(self, call: Callable[[], Awaitable[T]]) -> T:
        """``call()`` under this policy."""
        async for attempt in self.retrying():
            with attempt:
                return await call()
        raise AssertionError("unreachable: tenacity reraises the last error")
