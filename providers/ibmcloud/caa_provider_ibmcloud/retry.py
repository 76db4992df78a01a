"""IBM Cloud's retry numbers and bounded waits, for both IBM providers.

The SDKs' own retries stay off so every retry goes through the shared policy: a
create retried blindly would not first look for what a lost response made.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from cloud_api_adaptor import retry
from cloud_api_adaptor.errors import InstanceNotFound, TemporaryProviderError
from cloud_api_adaptor.retry import Sleep

__all__ = ["RetryPolicy", "Sleep", "WaitPolicy"]


@dataclass(frozen=True)
class RetryPolicy(retry.RetryPolicy):
    """The shared policy with IBM Cloud's numbers."""

    label: str = "ibmcloud"
    attempts: int = 6
    maximum: float = 10.0


@dataclass(frozen=True)
class WaitPolicy:
    """A bounded poll: ``attempts`` reads ``interval`` seconds apart."""

    interval: float = 2.0
    attempts: int = 60
    sleep: Sleep = field(default=asyncio.sleep, repr=False)

    async def until_gone(
        self, retry: RetryPolicy, read: Callable[[], Awaitable[object]], instance_id: str
    ) -> None:
        """Poll ``read`` (under ``retry``) until the instance is gone; still there at the end is temporary."""
        for poll in range(self.attempts):
            try:
                await retry.run(read)
            except InstanceNotFound:
                return
            if poll + 1 < self.attempts:
                await self.sleep(self.interval)
        raise TemporaryProviderError(f"instance {instance_id} of an earlier attempt is still being deleted")
