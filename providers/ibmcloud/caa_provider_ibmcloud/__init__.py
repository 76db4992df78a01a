"""IBM Cloud VPC provider for the peer-pods cloud API adaptor (entry point ``ibmcloud``).

Also the home of what both IBM providers share (IAM authentication, error
classification, the retry policy, tag grammar, Global Tagging and Search), which
the ``ibmcloud-powervs`` distribution imports.  Importing this package loads no
IBM SDK; the SDK modules load when a provider makes its first call.
"""

from caa_provider_ibmcloud.config import IbmcloudConfig
from caa_provider_ibmcloud.plugin import PLUGIN, IbmcloudPlugin
from caa_provider_ibmcloud.provider import IbmcloudProvider
from caa_provider_ibmcloud.shapes import USERDATA_LIMIT

__all__ = ["PLUGIN", "USERDATA_LIMIT", "IbmcloudConfig", "IbmcloudPlugin", "IbmcloudProvider"]
