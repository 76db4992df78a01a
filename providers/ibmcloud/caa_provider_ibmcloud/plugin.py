"""Entry point ``ibmcloud``: the VPC provider's options and factory (SDKs load on first use)."""

from __future__ import annotations

from caa_provider_ibmcloud.config import IbmcloudConfig
from caa_provider_ibmcloud.ibmports import Ports
from caa_provider_ibmcloud.provider import IbmcloudProvider
from cloud_api_adaptor.provider import ProviderContext


def sdk_ports(config: IbmcloudConfig) -> Ports:
    """The production clients (imported here so daemon start-up loads no SDK)."""
    from caa_provider_ibmcloud.ibmports import sdk_ports as build

    return build(config)


class IbmcloudPlugin:
    """Builds ``IbmcloudProvider`` from the Go version's ``IBMCLOUD_*`` keys."""

    name = "ibmcloud"
    settings_class = IbmcloudConfig

    def build(self, config: IbmcloudConfig, context: ProviderContext) -> IbmcloudProvider:
        return IbmcloudProvider(config, ports_factory=sdk_ports, cluster_id=context.cluster_id)


PLUGIN = IbmcloudPlugin()
