"""AwsProvider passes the provider contract against moto in server mode, over HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import pytest
from aws_testkit import AwsWorld

from cloud_api_adaptor.provider import Provider
from cloud_api_adaptor.testing.contract import ProviderContract
from cloud_api_adaptor.testing.faultproxy import Fault


class TestAwsContract(ProviderContract):
    unknown_instance_id = "i-0123456789abcdef0"

    @pytest.fixture(autouse=True)
    def _world(self, world: AwsWorld) -> None:
        self.world = world

    async def make_provider(self) -> Provider:
        return self.world.provider()

    async def cloud_instance_ids(self, provider: Provider) -> set[str]:
        return self.world.live_ids()

    def cloud_calls(self, provider: Provider) -> int | None:
        return self.world.proxy.count()

    def broken_cloud(self, provider: Provider) -> AbstractAsyncContextManager[None]:
        @asynccontextmanager
        async def unavailable() -> AsyncIterator[None]:
            self.world.proxy.add_rule("*", Fault.UNAVAILABLE, times=1_000_000)
            try:
                yield
            finally:
                self.world.proxy.clear_rules()

        return unavailable()
