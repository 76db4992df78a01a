"""Entry point ``libvirt``: the provider's options and its factory."""

from __future__ import annotations

from collections.abc import Sequence

from cloud_api_adaptor.options import Option, OptionValues
from cloud_api_adaptor.provider import ProviderContext

from .config import OPTIONS, LibvirtConfig
from .port import LibvirtConnection
from .provider import LibvirtProvider


class LibvirtPlugin:
    """Builds ``LibvirtProvider`` from the ``LIBVIRT_*`` keys (see ``config.OPTIONS``)."""

    name = "libvirt"
    options: Sequence[Option] = OPTIONS

    def build(self, values: OptionValues, context: ProviderContext) -> LibvirtProvider:
        """Validate ``values`` (``ConfigError`` names the key); the connection opens on first use."""
        config = LibvirtConfig.from_values(values)
        return LibvirtProvider(config, LibvirtConnection(config.uri))


PLUGIN = LibvirtPlugin()
