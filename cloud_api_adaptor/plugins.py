"""Provider discovery: the only module that touches ``importlib.metadata``.

Providers are found only through the entry-point group
``cloud_api_adaptor.providers``; exactly one is loaded, by name, so start-up
imports only the selected provider's SDK.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import Any

from cloud_api_adaptor.errors import ConfigError, PluginNotFound
from cloud_api_adaptor.provider import ProviderPlugin

GROUP = "cloud_api_adaptor.providers"


def _entry_points() -> list[EntryPoint]:
    return list(entry_points(group=GROUP))


def installed_providers() -> list[str]:
    """Names of every installed provider, sorted."""
    return sorted({ep.name for ep in _entry_points()})


def load_plugin(name: str) -> ProviderPlugin[Any]:
    """Load the plugin registered as ``name``; unknown names list what is installed."""
    matches = [ep for ep in _entry_points() if ep.name == name]
    if not matches:
        raise PluginNotFound(name, installed_providers())
    values = {ep.value for ep in matches}
    if len(values) > 1:
        raise ConfigError("CLOUD_PROVIDER", f"provider {name!r} is registered twice: {sorted(values)}")
    try:
        plugin = matches[0].load()
    except Exception as exc:  # a broken plugin must fail start-up loudly
        raise ConfigError("CLOUD_PROVIDER", f"provider {name!r} failed to load: {exc}") from exc
    if not isinstance(plugin, ProviderPlugin):
        raise ConfigError(
            "CLOUD_PROVIDER", f"provider {name!r} does not implement the provider plugin contract"
        )
    return plugin
