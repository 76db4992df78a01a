"""AzureProvider passes the provider contract against the fake ARM over HTTPS.

The fake enforces Azure's VM name rules, tag grammar (owner tags travel as tags in
Azure's grammar), the 64 KiB base64 userData limit and PUT-by-name convergence.
"""

from __future__ import annotations

import pytest
from azure_testkit import AzureWorld

from cloud_api_adaptor.provider import Provider
from cloud_api_adaptor.testing.contract import ProviderContract
from cloud_api_adaptor.testing.faultproxy import FaultProxy


class TestAzureContract(ProviderContract):
    unknown_instance_id = "podvm-never-created-0123abcd"

    @pytest.fixture(autouse=True)
    def _world(self, world: AzureWorld) -> None:
        self.world = world

    async def make_provider(self) -> Provider:
        return self.world.provider()

    async def cloud_instance_ids(self, provider: Provider) -> set[str]:
        return self.world.live_names()

    def fault_proxy(self) -> FaultProxy:
        return self.world.proxy
