"""AzureProvider passes the provider contract against the fake ARM over HTTPS.

The fake enforces Azure's VM name rules, tag grammar (owner tags travel as tags in
Azure's grammar), the 64 KiB base64 userData limit and PUT-by-name convergence.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import pytest
from azure_testkit import AzureWorld

from cloud_api_adaptor.provider import Provider
from cloud_api_adaptor.testing.contract import ProviderContract
from cloud_api_adaptor.testing.faultproxy import Fault


class TestAzureContract(ProviderContract):
    unknown_instance_id = "podvm-never-created-0123abcd"

    @pytest.fixture(autouse=True)
    def _world(self, world: AzureWorld) -> None:
        self.world = world

    async def make_provider(self) -> Provider:
        return self.world.provider()

    async def cloud_instance_ids(self, provider: Provider) -> set[str]:
        return self.world.live_names()

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
