"""One test's PowerVS workspace: the shared IAM and Global Search fakes and the PowerVS fake, one listener."""

from __future__ import annotations

import dataclasses
from typing import Any

from caa_provider_ibmcloud.testing.iam import FakeIam
from caa_provider_ibmcloud.testing.platform import FakePlatform
from caa_provider_ibmcloud.testing.server import FakeServer
from caa_provider_ibmcloud.testing.world import API_KEY, FAST_RETRY, FAST_WAIT

from caa_provider_ibmcloud_powervs.config import PowervsConfig
from caa_provider_ibmcloud_powervs.plugin import sdk_ports
from caa_provider_ibmcloud_powervs.provider import PowervsProvider
from caa_provider_ibmcloud_powervs.testing.fake import FakePowerVs


class PowerWorld:
    def __init__(self, host: str = "127.0.0.1", **power: Any) -> None:
        self.server = FakeServer(host)
        self.iam = FakeIam({API_KEY})
        self.platform = FakePlatform()
        self.power = FakePowerVs(self.platform, **power)
        self.iam.install(self.server)
        self.platform.install(self.server)
        self.power.install(self.server)
        self.server.start()

    @property
    def url(self) -> str:
        return self.server.url

    def close(self) -> None:
        self.server.stop()

    def config(self, endpoint: str | None = None, **changes: Any) -> PowervsConfig:
        url = endpoint or self.url
        base = PowervsConfig(
            api_key=API_KEY,
            iam_endpoint=f"{url}/identity/token",
            search_endpoint=url,
            endpoint=url,
            zone=self.power.zone,
            service_instance_id=self.power.workspace,
            network_id=self.power.network_id,
            image_id=self.power.image_id,
            ssh_key_name=self.power.ssh_key,
        )
        return dataclasses.replace(base, **changes)

    def env(self, endpoint: str) -> dict[str, str]:
        config = self.config(endpoint)
        return {
            "CLOUD_PROVIDER": "ibmcloud-powervs",
            "IBMCLOUD_API_KEY": config.api_key,
            "IBMCLOUD_IAM_ENDPOINT": config.iam_endpoint,
            "IBMCLOUD_GLOBAL_SEARCH_ENDPOINT": config.search_endpoint,
            "POWERVS_ENDPOINT": config.endpoint,
            "POWERVS_ZONE": config.zone,
            "POWERVS_SERVICE_INSTANCE_ID": config.service_instance_id,
            "POWERVS_NETWORK_ID": config.network_id,
            "POWERVS_IMAGE_ID": config.image_id,
            "POWERVS_SSH_KEY_NAME": config.ssh_key_name,
        }

    def provider(self, endpoint: str | None = None, **changes: Any) -> PowervsProvider:
        return PowervsProvider(
            self.config(endpoint, **changes),
            ports_factory=sdk_ports,
            retry=FAST_RETRY,
            build_poll=0.0,
            address_wait=FAST_WAIT,
            gone_wait=FAST_WAIT,
        )
