"""Google Compute Engine provider for the peer-pods cloud API adaptor (entry point ``gcp``)."""

from caa_provider_gcp.config import GcpConfig
from caa_provider_gcp.plugin import PLUGIN, GcpPlugin
from caa_provider_gcp.provider import GcpProvider
from caa_provider_gcp.shapes import USERDATA_LIMIT

__all__ = ["PLUGIN", "USERDATA_LIMIT", "GcpConfig", "GcpPlugin", "GcpProvider"]
