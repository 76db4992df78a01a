"""GcpProvider passes the provider contract against the fake Compute Engine over HTTP.

The fake enforces the instance name pattern, label grammar (owner tags travel as
labels), the metadata value limit and requestId deduplication.
"""

from __future__ import annotations

import pytest
from gcp_testkit import GcpWorld

from cloud_api_adaptor.provider import Provider
from cloud_api_adaptor.testing.contract import ProviderContract
from cloud_api_adaptor.testing.faultproxy import FaultProxy


class TestGcpContract(ProviderContract):
    unknown_instance_id = "podvm-never-created-0123abcd"

    @pytest.fixture(autouse=True)
    def _world(self, world: GcpWorld) -> None:
        self.world = world

    async def make_provider(self) -> Provider:
        return self.world.provider()

    async def cloud_instance_ids(self, provider: Provider) -> set[str]:
        return self.world.live_names()

    def fault_proxy(self) -> FaultProxy:
        return self.world.proxy
