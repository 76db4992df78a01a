"""The one retry policy for EC2 calls, and the bounded wait for an instance's address.

botocore's own retries are switched off (see ``ec2.make_client``) so that every
retry goes through here: a RunInstances retried by botocore would resend the
request without the provider first looking for the instance a lost response
created.  Sleeps are injectable so tests run at full speed.
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
    logger.warning("ec2: attempt %d failed (%s); retrying in %.2fs", state.attempt_number, error, delay)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter for temporary errors, a bounded number of attempts."""

    #: total attempts, the first included
    attempts: int = 6
    #: first backoff, seconds (doubles each time)
    initial: float = 0.5
    #: longest backoff, seconds
    maximum: float = 10.0
    #: random extra wait up to this many seconds
    jitter: float = 0.5
    sleep: Sleep = field(default=asyncio.sleep, repr=False)

    def retrying(self) -> AsyncRetrying:
        """A fresh tenacity controller: ``async for attempt in policy.retrying(): with attempt: ...``."""
        return AsyncRetrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential(multiplier=self.initial, max=self.maximum) + wait_random(0, self.jitter),
            retry=retry_if_exception_type(TemporaryProviderError),
            sleep=self.sleep,
            before_sleep=_log_retry,
            reraise=True,
        )


@dataclass(frozen=True)
class WaitPolicy:
    """How long create waits for an instance's address (public IPs need the instance running)."""

    #: seconds between DescribeInstances polls
    interval: float = 2.0
    #: polls before giving up (60 x 2 s = the Go version's 120 s)
    attempts: int = 60
    sleep: Sleep = field(default=asyncio.sleep, repr=False)
