"""libvirt provider for the peer-pods cloud API adaptor (entry point ``libvirt``)."""

from .config import OPTIONS, AddressPolicy, LibvirtConfig
from .plugin import PLUGIN, LibvirtPlugin
from .port import LibvirtConnection, LibvirtPort
from .provider import InstanceAddressTimeout, LibvirtProvider

__all__ = [
    "OPTIONS",
    "PLUGIN",
    "AddressPolicy",
    "InstanceAddressTimeout",
    "LibvirtConfig",
    "LibvirtConnection",
    "LibvirtPlugin",
    "LibvirtPort",
    "LibvirtProvider",
]
