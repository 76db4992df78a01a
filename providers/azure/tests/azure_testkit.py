"""Shared helpers for the Azure provider tests: the fake ARM over HTTPS, a fault proxy in front, providers.

(A plain module, not conftest, so test modules can import its types; its basename
is unique across the repository's test directories.)

The provider runs its real credential flow: azure-identity's ClientSecretCredential
asks the fake's token endpoint (``AZURE_AUTHORITY_HOST``) for a token and the SDK
sends it on every ARM call, all over HTTPS verified with the fake's test CA.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from armfake.server import FakeArm
from armfake.state import ArmState
from caa_provider_azure.config import AzureConfig
from caa_provider_azure.plugin import azure_arm
from caa_provider_azure.provider import AzureProvider
from caa_provider_azure.retry import RetryPolicy, WaitPolicy

from cloud_api_adaptor.testing.faultproxy import FaultProxy


async def no_sleep(_: float) -> None:
    """Backoff without waiting: tests assert outcomes, not timing."""
    await asyncio.sleep(0)


FAST_RETRY = RetryPolicy(attempts=6, initial=0.0, maximum=0.0, jitter=0.0, sleep=no_sleep)
FAST_WAIT = WaitPolicy(create_timeout=60.0, delete_timeout=60.0)
#: operation polls this many milliseconds apart (the SDK honours the fake's retry-after-ms)
FAST_POLL_MS = 20


@dataclass
class AzureWorld:
    """The fake (its state is the cloud as the test sees it), its URL, and a fault proxy in front of it."""

    fake: FakeArm
    url: str
    proxy: FaultProxy
    directory: Path

    @property
    def arm(self) -> ArmState:
        return self.fake.state

    def config(self, **changes: Any) -> AzureConfig:
        state = self.arm
        base = AzureConfig(
            subscription_id=state.subscription,
            region=state.location,
            resource_group=state.group,
            subnet_id=state.subnet_id,
            image_id=next(iter(state.images.values()))["id"],
            instance_size="Standard_DC2as_v5",
            instance_sizes=("Standard_DC2as_v5", "Standard_DC8as_v5", "Standard_DC4as_v5"),
            nsg_id=state.nsg_id,
            client_id=self.fake.client_id,
            client_secret=self.fake.client_secret,
            tenant_id=self.fake.tenant,
            authority_host=self.url,
            resource_manager_endpoint=self.proxy.url,
            ca_bundle=str(self.fake.ca.ca_file),
        )
        return dataclasses.replace(base, **changes)

    def provider(self, retry: RetryPolicy = FAST_RETRY, **changes: Any) -> AzureProvider:
        return AzureProvider(self.config(**changes), arm_factory=azure_arm, retry=retry, wait=FAST_WAIT)

    def live_names(self) -> set[str]:
        return {str(vm["name"]) for vm in self.arm.live()}

    def close(self) -> None:
        self.proxy.stop()
        self.fake.close()
        shutil.rmtree(self.directory, ignore_errors=True)


def make_world() -> AzureWorld:
    directory = Path(tempfile.mkdtemp(prefix="caa-azure-"))
    fake = FakeArm(directory)
    fake.state.retry_after_ms = FAST_POLL_MS
    url = fake.serve()
    proxy = FaultProxy(
        url, server_context=fake.ca.server_context("proxy"), upstream_context=fake.client_context()
    )
    proxy.start()
    return AzureWorld(fake, url, proxy, directory)
