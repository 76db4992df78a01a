"""Entry points ``ibmcloud-powervs`` and ``ibmcloudpowervs``: the PowerVS provider's options and factory."""

from __future__ import annotations

from caa_provider_ibmcloud_powervs.client import PowervsPorts
from caa_provider_ibmcloud_powervs.config import PowervsConfig
from caa_provider_ibmcloud_powervs.provider import PowervsProvider
from cloud_api_adaptor.provider import ProviderContext


def sdk_ports(config: PowervsConfig) -> PowervsPorts:
    """The production clients (imported here so daemon start-up loads no SDK)."""
    from caa_provider_ibmcloud_powervs.ports import sdk_ports as build

    return build(config)


class PowervsPlugin:
    """Builds ``PowervsProvider`` from the Go version's ``POWERVS_*`` keys."""

    name = "ibmcloud-powervs"
    settings_class = PowervsConfig

    def build(self, config: PowervsConfig, context: ProviderContext) -> PowervsProvider:
        return PowervsProvider(config, ports_factory=sdk_ports)


PLUGIN = PowervsPlugin()
