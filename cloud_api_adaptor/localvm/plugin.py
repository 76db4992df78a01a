"""The ``local`` entry point: the local provider's options and its factory.

Importing this module is cheap (options only); the provider module is imported
when the daemon actually builds the provider.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from cloud_api_adaptor.localvm.config import LOCAL_OPTIONS, LocalConfig
from cloud_api_adaptor.options import Option, OptionValues
from cloud_api_adaptor.provider import ProviderContext

if TYPE_CHECKING:
    from cloud_api_adaptor.localvm.provider import LocalProvider


class LocalPlugin:
    """Builds a ``LocalProvider`` from resolved options."""

    name = "local"
    options: Sequence[Option] = LOCAL_OPTIONS

    def build(self, values: OptionValues, context: ProviderContext) -> LocalProvider:
        from cloud_api_adaptor.localvm.checks import validate_work_dir
        from cloud_api_adaptor.localvm.provider import LocalProvider

        config = LocalConfig.from_values(values, euid=os.geteuid(), python=sys.executable)
        validate_work_dir(config, context.work_dir)
        return LocalProvider(config, context)


PLUGIN = LocalPlugin()
