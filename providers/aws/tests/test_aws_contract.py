"""AwsProvider passes the provider contract against moto in server mode, over HTTP."""

from __future__ import annotations

import pytest
from aws_testkit import AwsWorld

from cloud_api_adaptor.provider import Provider
from cloud_api_adaptor.testing.contract import ProviderContract
from cloud_api_adaptor.testing.faultproxy import FaultProxy


class TestAwsContract(ProviderContract):
    unknown_instance_id = "i-0123456789abcdef0"

    @pytest.fixture(autouse=True)
    def _world(self, world: AwsWorld) -> None:
        self.world = world

    async def make_provider(self) -> Provider:
        return self.world.provider()

    async def cloud_instance_ids(self, provider: Provider) -> set[str]:
        return self.world.live_ids()

    def fault_proxy(self) -> FaultProxy:
        return self.world.proxy
