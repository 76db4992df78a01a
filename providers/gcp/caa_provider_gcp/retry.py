"""The one retry policy for Compute Engine calls, and the bounded wait for zone operations.

The client library's own retries are off (``compute.py``), so every retry goes
through here; an insert is resent only with its original ``requestId``.  A
``Retry-After`` the server sent (429) stretches the backoff.  Sleeps are
injectable so tests run at full speed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

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


def _log_retry(state: RetryCallState) -> None:
    outcome = state.outcome
    error = outcome.exception() if outcome is not None else None
    delay = state.next_action.sleep if state.next_action is not None else 0.0
    logger.warning("gcp: attempt %d failed (%s); retrying in %.2fs", state.attempt_number, error, delay)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter for temporary errors, a bounded number of attempts."""

    #: total attempts, the first included
    attempts: int = 8
    #: first backoff, seconds (doubles each time)
    initial: float = 0.5
    #: longest backoff, seconds
    maximum: float = 16.0
    #: random extra wait up to this many seconds
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


@dataclass(frozen=True)
class WaitPolicy:
    """How long a create or delete waits for its zone operation and the instance's address."""

    #: longest total wait for one zone operation (seconds); the caller's deadline may cut it shorter
    operation_timeout: float = 600.0
    #: seconds between instances.get polls for an address not yet assigned
    interval: float = 2.0
    #: address polls before giving up
    attempts: int = 30
    sleep: Sleep = field(default=asyncio.sleep, repr=False)
