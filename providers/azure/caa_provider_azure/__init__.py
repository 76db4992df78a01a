"""Azure provider for the peer-pods cloud API adaptor (entry point ``azure``)."""

from caa_provider_azure.config import AzureConfig
from caa_provider_azure.plugin import PLUGIN, AzurePlugin
from caa_provider_azure.provider import AzureProvider
from caa_provider_azure.shapes import USERDATA_LIMIT

__all__ = ["PLUGIN", "USERDATA_LIMIT", "AzureConfig", "AzurePlugin", "AzureProvider"]
