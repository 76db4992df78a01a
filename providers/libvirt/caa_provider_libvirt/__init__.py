"""libvirt provider for the peer-pods cloud API adaptor (entry point ``libvirt``)."""

from .config import AddressPolicy, LibvirtConfig
from .plugin import PLUGIN, LibvirtPlugin
from .port import LibvirtConnection, LibvirtPort
from .provider import InstanceAddressTimeout, LibvirtProvider

__all__ = [
    "PLUGIN",
    "AddressPolicy",
    "InstanceAddressTimeout",
    "LibvirtConfig",
    "LibvirtConnection",
    "LibvirtPlugin",
    "LibvirtPort",
    "LibvirtProvider",
]
