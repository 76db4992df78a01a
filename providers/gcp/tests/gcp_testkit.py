"""Shared helpers for the GCP provider tests: the fake Compute Engine, a fault proxy in front, providers.

(A plain module, not conftest, so test modules can import its types; its basename
is unique across the repository's test directories.)
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from typing import Any

from caa_provider_gcp.config import GcpConfig
from caa_provider_gcp.plugin import google_compute, resource_manager_tags
from caa_provider_gcp.provider import GcpProvider
from caa_provider_gcp.retry import RetryPolicy, WaitPolicy
from gcpfake.server import FakeGcp

from cloud_api_adaptor.testing.faultproxy import FaultProxy

IMAGE = "podvm-image"
IMAGE_GIB = 20


async def no_sleep(_: float) -> None:
    """Backoff without waiting: tests assert outcomes, not timing."""
    await asyncio.sleep(0)


FAST_RETRY = RetryPolicy(attempts=5, initial=0.0, maximum=0.0, jitter=0.0, sleep=no_sleep)
FAST_WAIT = WaitPolicy(operation_timeout=60.0, interval=0.0, attempts=5, sleep=no_sleep)


@dataclass
class GcpWorld:
    """The fake (its state is the cloud as the test sees it), its URL, and a fault proxy in front of it."""

    fake: FakeGcp
    url: str
    proxy: FaultProxy

    @property
    def compute(self) -> Any:
        return self.fake.compute

    def config(self, **changes: Any) -> GcpConfig:
        base = GcpConfig(
            credentials=self.fake.key_json(self.url),
            project_id=self.fake.compute.project,
            zone=self.fake.compute.zone,
            network="default",
            subnetwork="default",
            image_name=IMAGE,
            machine_type="n2d-standard-2",
            machine_types=("n2d-standard-2", "n2d-standard-8", "n2d-standard-4"),
            confidential_type="SEV_SNP",
            disk_type="pd-balanced",
            compute_endpoint=self.proxy.url,
            resource_manager_endpoint=self.proxy.url,
        )
        return dataclasses.replace(base, **changes)

    def provider(self, **changes: Any) -> GcpProvider:
        return GcpProvider(
            self.config(**changes),
            compute_factory=google_compute,
            tag_factory=resource_manager_tags,
            retry=FAST_RETRY,
            wait=FAST_WAIT,
        )

    def live_names(self) -> set[str]:
        return {str(i["name"]) for i in self.compute.live()}


def make_world(proxy_factory: Any = FaultProxy) -> tuple[GcpWorld, Any]:
    fake = FakeGcp()
    fake.compute.add_image(IMAGE, IMAGE_GIB)
    url = fake.serve()
    proxy = proxy_factory(url)
    proxy.start()
    return GcpWorld(fake, url, proxy), proxy
