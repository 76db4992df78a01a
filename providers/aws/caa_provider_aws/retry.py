"""EC2's retry numbers, and the bounded wait for an instance's address.

botocore's own retries are switched off (see ``ec2.make_client``) so that every
retry goes through the shared policy: a RunInstances retried by botocore would
resend the request without the provider first looking for the instance a lost
response created.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from cloud_api_adaptor import retry
from cloud_api_adaptor.retry import Sleep

__all__ = ["RetryPolicy", "Sleep", "WaitPolicy"]


@dataclass(frozen=True)
class RetryPolicy(retry.RetryPolicy):
    """The shared policy with EC2's numbers."""

    label: str = "ec2"
    attempts: int = 6
    maximum: float = 10.0


@dataclass(frozen=True)
class WaitPolicy:
    """How long create waits for an instance's address (public IPs need the instance running)."""

    #: seconds between DescribeInstances polls
    interval: float = 2.0
    #: polls before giving up (60 x 2 s = the Go version's 120 s)
    attempts: int = 60
    sleep: Sleep = field(default=asyncio.sleep, repr=False)
