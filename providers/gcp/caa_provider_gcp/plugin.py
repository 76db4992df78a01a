"""Entry point ``gcp``: the GCP provider's options and factory.

The Google client libraries are imported when the provider first talks to the
cloud, not when the plugin loads, so start-up stays fast.
"""

from __future__ import annotations

from caa_provider_gcp.compute import ComputePort
from caa_provider_gcp.config import GcpConfig
from caa_provider_gcp.provider import GcpProvider
from caa_provider_gcp.tagging import TagPort
from cloud_api_adaptor.provider import ProviderContext


def google_compute(config: GcpConfig) -> ComputePort:
    """The production Compute Engine port: credentials from the config, REST clients."""
    from caa_provider_gcp.compute import GoogleCompute, make_credentials

    return GoogleCompute(config, make_credentials(config))


def resource_manager_tags(config: GcpConfig) -> TagPort:
    """The production tag-binding port."""
    from caa_provider_gcp.compute import make_credentials
    from caa_provider_gcp.tagging import ResourceManagerTags

    return ResourceManagerTags(config, make_credentials(config))


class GcpPlugin:
    """Builds ``GcpProvider`` from the Go version's configuration keys."""

    name = "gcp"
    settings_class = GcpConfig

    def build(self, config: GcpConfig, context: ProviderContext) -> GcpProvider:
        return GcpProvider(config, compute_factory=google_compute, tag_factory=resource_manager_tags)


PLUGIN = GcpPlugin()
