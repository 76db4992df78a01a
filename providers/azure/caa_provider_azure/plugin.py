"""Entry point ``azure``: the Azure provider's options and factory.

The Azure libraries are imported when the provider first talks to the cloud, not
when the plugin loads, so start-up stays fast.
"""

from __future__ import annotations

from caa_provider_azure.arm import AzureArm
from caa_provider_azure.config import AzureConfig
from caa_provider_azure.provider import AzureProvider
from cloud_api_adaptor.provider import ProviderContext


def azure_arm(config: AzureConfig) -> AzureArm:
    """The production ARM port: azure-identity's credential, the SDKs' async clients."""
    return AzureArm(config)


class AzurePlugin:
    """Builds ``AzureProvider`` from the Go version's configuration keys."""

    name = "azure"
    settings_class = AzureConfig

    def build(self, config: AzureConfig, context: ProviderContext) -> AzureProvider:
        return AzureProvider(config, arm_factory=azure_arm)


PLUGIN = AzurePlugin()
