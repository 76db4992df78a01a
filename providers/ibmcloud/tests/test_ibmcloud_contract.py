"""IbmcloudProvider passes the provider contract against the VPC, IAM and Global Tagging/Search fakes."""

from __future__ import annotations

import pytest
from caa_provider_ibmcloud.testing.world import VpcWorld

from cloud_api_adaptor.provider import Provider
from cloud_api_adaptor.testing.contract import ProviderContract
from cloud_api_adaptor.testing.faultproxy import FaultProxy


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

    def fault_proxy(self) -> FaultProxy:
        return self.proxy
