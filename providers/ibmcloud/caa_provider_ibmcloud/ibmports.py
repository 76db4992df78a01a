"""The SDK clients one VPC provider uses, built together around one authenticator and one thread pool."""

from __future__ import annotations

from dataclasses import dataclass

from caa_provider_ibmcloud.auth import make_authenticator
from caa_provider_ibmcloud.calls import SdkCalls
from caa_provider_ibmcloud.config import IbmcloudConfig
from caa_provider_ibmcloud.platform import PlatformPort
from caa_provider_ibmcloud.vpc import VpcPort


@dataclass
class Ports:
    vpc: VpcPort
    platform: PlatformPort
    calls: SdkCalls

    async def aclose(self) -> None:
        await self.calls.aclose()


def sdk_ports(config: IbmcloudConfig) -> Ports:
    """The production clients: IAM (API key or trusted profile), VPC, Global Tagging and Search."""
    authenticator = make_authenticator(
        api_key=config.api_key,
        profile_id=config.iam_profile_id,
        iam_endpoint=config.iam_endpoint,
        cr_token_file=config.cr_token_file,
    )
    calls = SdkCalls("ibmcloud")
    return Ports(
        vpc=VpcPort(authenticator, config.vpc_url, calls),
        platform=PlatformPort(authenticator, config.tagging_endpoint, config.search_endpoint, calls),
        calls=calls,
    )
