"""PowervsProvider passes the provider contract against the PowerVS, IAM and Global Search fakes."""

from __future__ import annotations

import pytest
from caa_provider_ibmcloud_powervs.testing.world import PowerWorld

from cloud_api_adaptor.provider import Provider
from cloud_api_adaptor.testing.contract import ProviderContract
from cloud_api_adaptor.testing.faultproxy import FaultProxy


class TestPowervsContract(ProviderContract):
    unknown_instance_id = "00000000-0000-0000-0000-000000000000"

    @pytest.fixture(autouse=True)
    def _world(self, power_world: PowerWorld, power_proxy: FaultProxy) -> None:
        self.world = power_world
        self.proxy = power_proxy

    async def make_provider(self) -> Provider:
        return self.world.provider(self.proxy.url)

    async def cloud_instance_ids(self, provider: Provider) -> set[str]:
        return self.world.power.live_ids()

    def fault_proxy(self) -> FaultProxy:
        return self.proxy
