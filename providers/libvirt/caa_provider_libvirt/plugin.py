"""Entry point ``libvirt``: the provider's options and its factory."""

from __future__ import annotations

from cloud_api_adaptor.provider import ProviderContext

from .config import LibvirtConfig
from .port import LibvirtConnection
from .provider import LibvirtProvider


class LibvirtPlugin:
    """Builds ``LibvirtProvider`` from the ``LIBVIRT_*`` keys (see ``LibvirtConfig``)."""

    name = "libvirt"
    settings_class = LibvirtConfig

    def build(self, config: LibvirtConfig, context: ProviderContext) -> LibvirtProvider:
        """The connection opens on first use."""
        return LibvirtProvider(config, LibvirtConnection(config.uri))


PLUGIN = LibvirtPlugin()
