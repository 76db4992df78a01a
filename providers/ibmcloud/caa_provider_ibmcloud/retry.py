"""The one retry policy for IBM Cloud calls, and the bounded waits, for both IBM providers.

The SDKs' own retries stay off so every retry goes through here: a create
retried blindly would not first look for what a lost response made.  Temporary
errors back off exponentially with jitter; a ``Retry-After`` the cloud sent is
honoured (never waiting less than it asked).  Sleeps are injectable so tests run
at full speed.
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
T = TypeVar("T")

Sleep = Callable[[float], Awaitable[None]]


def _log_retry(state: RetryCallState) -> None:
    outcome = state.outcome
    error = outcome.exception() if outcome is not None else None
    delay = state.next_action.sleep if state.next_action is not None else 0.0
    logger.warning("ibmcloud: attempt %d failed (%s); retrying in %.2fs", state.attempt_number, error, delay)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter for temporary errors, a bounded number of attempts."""

    #: total attempts, the first included
    attempts: int = 6
    #: first backoff, seconds (doubles each time)
    initial: float = 0.5
    #: longest backoff, seconds (a longer Retry-After still wins, up to ``retry_after_cap``)
    maximum: float = 10.0
    #: random extra wait up to this many seconds
    jitter: float = 0.5
    #: the longest Retry-After honoured
    retry_after_cap: float = 60.0
    sleep: Sleep = field(default=asyncio.sleep, repr=False)

    def _wait(self, state: RetryCallState) -> float:
        backoff = wait_exponential(multiplier=self.initial, max=self.maximum) + wait_random(0, self.jitter)
        delay = float(backoff(state))
        error = state.outcome.exception() if state.outcome is not None else None
        if isinstance(error, TemporaryProviderError) and error.retry_after is not None:
            delay = max(delay, min(error.retry_after, self.retry_after_cap))
        return delay

    def retrying(self) -> AsyncRetrying:
        """A fresh tenacity controller: ``async for attempt in policy.retrying(): with attempt: ...``."""
        return AsyncRetrying(
            stop=stop_after_attempt(self.attempts),
            wait=self._wait,
            retry=retry_if_exception_type(TemporaryProviderError),
            sleep=self.sleep,
            before_sleep=_log_retry,
            reraise=True,
        )

    async def run(self, call: Callable[[], Awaitable[T]]) -> T:
        """``call()`` under this policy."""
        async for attempt in self.retrying():
            with attempt:
                return await call()
        raise AssertionError("unreachable: tenacity reraises the last error")


@dataclass(frozen=True)
class WaitPolicy:
    """A bounded poll: ``attempts`` reads ``interval`` seconds apart."""

    interval: float = 2.0
    attempts: int = 60
    sleep: Sleep = field(default=asyncio.sleep, repr=False)
