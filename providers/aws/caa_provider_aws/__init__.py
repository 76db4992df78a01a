"""AWS EC2 provider for the peer-pods cloud API adaptor (entry point ``aws``)."""

from caa_provider_aws.config import AwsConfig
from caa_provider_aws.plugin import PLUGIN, AwsPlugin
from caa_provider_aws.provider import USERDATA_LIMIT, AwsProvider

__all__ = ["PLUGIN", "USERDATA_LIMIT", "AwsConfig", "AwsPlugin", "AwsProvider"]
