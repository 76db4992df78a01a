"""The ``local`` entry point: the local provider's options and its factory.

Importing this module is cheap (settings only); the provider module is imported
when the daemon actually builds the provider.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from cloud_api_adaptor.localvm.config import LocalConfig, LocalSettings
from cloud_api_adaptor.provider import ProviderContext

if TYPE_CHECKING:
    from cloud_api_adaptor.localvm.provider import LocalProvider


class LocalPlugin:
    """Builds a ``LocalProvider`` from its settings."""

    name = "local"
    settings_class = LocalSettings

    def build(self, config: LocalSettings, context: ProviderContext) -> LocalProvider:
        from cloud_api_adaptor.localvm.checks import validate_work_dir
        from cloud_api_adaptor.localvm.provider import LocalProvider

        local = LocalConfig.from_settings(config, euid=os.geteuid(), python=sys.executable)
        validate_work_dir(local, context.work_dir)
        return LocalProvider(local, context)


PLUGIN = LocalPlugin()
