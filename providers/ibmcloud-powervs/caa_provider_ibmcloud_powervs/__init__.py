"""IBM Power Virtual Server provider for the peer-pods cloud API adaptor.

Entry points ``ibmcloud-powervs`` and ``ibmcloudpowervs`` (the Go Helm values'
spelling).  Importing this package loads no SDK.
"""

from caa_provider_ibmcloud_powervs.config import PowervsConfig
from caa_provider_ibmcloud_powervs.plugin import PLUGIN, PowervsPlugin
from caa_provider_ibmcloud_powervs.provider import PowervsProvider
from caa_provider_ibmcloud_powervs.shapes import USERDATA_LIMIT

__all__ = ["PLUGIN", "USERDATA_LIMIT", "PowervsConfig", "PowervsPlugin", "PowervsProvider"]
