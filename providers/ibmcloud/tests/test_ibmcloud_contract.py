"""IbmcloudProvider passes the provider contract against the VPC, IAM and Global Tagging/Search fakes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import pytest
from caa_provider_ibmcloud.testing.world import VpcWorld

from cloud_api_adaptor.provider import Provider
from cloud_api_adaptor.testing.contract import ProviderContract
from cloud_api_adaptor.testing.faultproxy import Fault, FaultProxy


class TestIbmcloudContract(ProviderContract):
    unknown_instance_id = "0717_00000000-0000-0000-0000-000000000000"

    @pytest.fixture(autouse=True)
    def _world(self, vpc_world: VpcWorld, vpc_proxy: FaultProxy) -> None:
        self.world = vpc_world
        self.proxy = vpc_proxy

    async def make_provider(self) -> Provider:
        return self.world.provider(self.proxy.url)

    async def cloud_instance_ids(self, provider: Provider) -> set[str]:
        return self.world.vpc.live_ids()

    def cloud_calls(self, provider: Provider) -> int | None:
        return self.proxy.count()

    def broken_cloud(self, provider: Provider) -> AbstractAsyncContextManager[None]:
        @asynccontextmanager
        async def unavailable() -> AsyncIterator[None]:
            self.proxy.add_rule("*", Fault.UNAVAILABLE, times=1_000_000)
            try:
                yield
            finally:
                self.proxy.clear_rules()

        return unavailable()
