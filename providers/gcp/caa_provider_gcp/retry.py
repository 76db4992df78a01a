"""Compute Engine's retry numbers, and the bounded wait for zone operations.

The client library's own retries are off (``compute.py``), so every retry goes
through the shared policy; an insert is resent only with its original
``requestId``.  A ``Retry-After`` the server sent (429) stretches the backoff.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from cloud_api_adaptor import retry
from cloud_api_adaptor.retry import Sleep

__all__ = ["RetryPolicy", "Sleep", "WaitPolicy"]


@dataclass(frozen=True)
class RetryPolicy(retry.RetryPolicy):
    """The shared policy with Compute Engine's numbers."""

    label: str = "gcp"
    attempts: int = 8
    maximum: float = 16.0


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
