"""The production clients of the PowerVS provider: IAM, the PowerVS API and Global Search."""

from __future__ import annotations

from caa_provider_ibmcloud.auth import make_authenticator
from caa_provider_ibmcloud.calls import SdkCalls
from caa_provider_ibmcloud.config import DEFAULT_TAGGING_ENDPOINT
from caa_provider_ibmcloud.platform import PlatformPort

from caa_provider_ibmcloud_powervs.client import PowerVsClient, PowervsPorts
from caa_provider_ibmcloud_powervs.config import PowervsConfig


def sdk_ports(config: PowervsConfig) -> PowervsPorts:
    authenticator = make_authenticator(
        api_key=config.api_key, profile_id="", iam_endpoint=config.iam_endpoint, cr_token_file=""
    )
    calls = SdkCalls("powervs")
    return PowervsPorts(
        client=PowerVsClient(authenticator, config.url, config.zone, config.service_instance_id, calls),
        platform=PlatformPort(authenticator, DEFAULT_TAGGING_ENDPOINT, config.search_endpoint, calls),
        calls=calls,
    )
