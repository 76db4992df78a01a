"""Peer-pods cloud API adaptor for Confidential Containers, in Python.

Providers may import only the names exported here (the contract) and
``cloud_api_adaptor.testing``.
"""

from cloud_api_adaptor._aio import KeyedLocks
from cloud_api_adaptor.errors import (
    AdaptorError,
    ConfigError,
    InvalidInput,
    PermanentProviderError,
    ProviderError,
    TemporaryProviderError,
)
from cloud_api_adaptor.options import Option, OptionValues
from cloud_api_adaptor.provider import (
    CheckResult,
    CreateRequest,
    Instance,
    InstanceSpec,
    InstanceTypeInfo,
    Provider,
    ProviderContext,
    ProviderPlugin,
)

__version__ = "0.1.0"

__all__ = [
    "AdaptorError",
    "CheckResult",
    "ConfigError",
    "CreateRequest",
    "Instance",
    "InstanceSpec",
    "InstanceTypeInfo",
    "InvalidInput",
    "KeyedLocks",
    "Option",
    "OptionValues",
    "PermanentProviderError",
    "Provider",
    "ProviderContext",
    "ProviderError",
    "ProviderPlugin",
    "TemporaryProviderError",
    "__version__",
]
