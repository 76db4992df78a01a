"""One test's IBM Cloud VPC: IAM, Global Tagging/Search and VPC fakes on one listener, and settings for it."""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
from typing import Any

from caa_provider_ibmcloud.config import IbmcloudConfig
from caa_provider_ibmcloud.plugin import sdk_ports
from caa_provider_ibmcloud.provider import IbmcloudProvider
from caa_provider_ibmcloud.retry import RetryPolicy, WaitPolicy
from caa_provider_ibmcloud.testing.iam import FakeIam
from caa_provider_ibmcloud.testing.platform import FakePlatform
from caa_provider_ibmcloud.testing.server import FakeServer
from caa_provider_ibmcloud.testing.vpc import FakeVpc

API_KEY = "fake-api-key-0123456789"


async def no_sleep(_: float) -> None:
    """Backoff without waiting: tests assert outcomes, not timing."""
    await asyncio.sleep(0)


FAST_RETRY = RetryPolicy(attempts=5, initial=0.0, maximum=0.0, jitter=0.0, sleep=no_sleep)
FAST_WAIT = WaitPolicy(interval=0.0, attempts=10, sleep=no_sleep)


class VpcWorld:
    """The fakes, started; ``close()`` stops them."""

    def __init__(
        self, host: str = "127.0.0.1", server_context: ssl.SSLContext | None = None, **vpc: Any
    ) -> None:
        self.server = FakeServer(host, server_context)
        self.iam = FakeIam({API_KEY})
        self.platform = FakePlatform()
        self.vpc = FakeVpc(self.platform, **vpc)
        self.iam.install(self.server)
        self.platform.install(self.server)
        self.vpc.install(self.server)
        self.server.start()

    @property
    def url(self) -> str:
        return self.server.url

    def close(self) -> None:
        self.server.stop()

    def config(self, endpoint: str | None = None, **changes: Any) -> IbmcloudConfig:
        """Settings pointing every endpoint at ``endpoint`` (default: the fakes directly)."""
        url = endpoint or self.url
        base = IbmcloudConfig(
            api_key=API_KEY,
            iam_endpoint=f"{url}/identity/token",
            vpc_endpoint=f"{url}/v1",
            tagging_endpoint=url,
            search_endpoint=url,
            zone_name=self.vpc.zone,
            primary_subnet_id=self.vpc.subnet_id,
            security_group_ids=(self.vpc.security_group_id,),
            vpc_id=self.vpc.vpc_id,
            key_id=self.vpc.key_id,
            image_id=(self.vpc.image_of("amd64"), self.vpc.image_of("s390x")),
            profile_name="bx3dc-2x10",
            profile_list=("bx3dc-2x10", "bx3dc-4x20", "bz2e-2x8"),
            disable_cvm=False,
        )
        return dataclasses.replace(base, **changes)

    def env(self, endpoint: str) -> dict[str, str]:
        """The same settings as the daemon's environment (the Go version's keys)."""
        config = self.config(endpoint)
        return {
            "CLOUD_PROVIDER": "ibmcloud",
            "IBMCLOUD_API_KEY": config.api_key,
            "IBMCLOUD_IAM_ENDPOINT": config.iam_endpoint,
            "IBMCLOUD_VPC_ENDPOINT": config.vpc_endpoint,
            "IBMCLOUD_GLOBAL_TAGGING_ENDPOINT": config.tagging_endpoint,
            "IBMCLOUD_GLOBAL_SEARCH_ENDPOINT": config.search_endpoint,
            "IBMCLOUD_ZONE": config.zone_name,
            "IBMCLOUD_VPC_SUBNET_ID": config.primary_subnet_id,
            "IBMCLOUD_SECURITY_GROUP_IDS": ",".join(config.security_group_ids),
            "IBMCLOUD_VPC_ID": config.vpc_id,
            "IBMCLOUD_SSH_KEY_ID": config.key_id,
            "IBMCLOUD_PODVM_IMAGE_ID": ",".join(config.image_id),
            "IBMCLOUD_PODVM_INSTANCE_PROFILE_NAME": config.profile_name,
            "IBMCLOUD_PODVM_INSTANCE_PROFILE_LIST": ",".join(config.profile_list),
            "DISABLECVM": "false",
        }

    def provider(self, endpoint: str | None = None, cluster_id: str = "", **changes: Any) -> IbmcloudProvider:
        return IbmcloudProvider(
            self.config(endpoint, **changes),
            ports_factory=sdk_ports,
            cluster_id=cluster_id,
            retry=FAST_RETRY,
            address_wait=FAST_WAIT,
            gone_wait=FAST_WAIT,
        )
