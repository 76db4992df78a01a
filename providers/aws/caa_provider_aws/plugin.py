"""Entry point ``aws``: the AWS provider's options and factory."""

from __future__ import annotations

from caa_provider_aws.config import AwsConfig
from caa_provider_aws.ec2 import Boto3Ec2, Ec2Port, make_client
from caa_provider_aws.imds import ImdsClient
from caa_provider_aws.provider import AwsProvider
from cloud_api_adaptor.provider import ProviderContext


def boto3_port(config: AwsConfig) -> Ec2Port:
    """The production EC2 port: boto3 with botocore's retries off."""
    return Boto3Ec2(make_client(config))


class AwsPlugin:
    """Builds ``AwsProvider`` from the Go version's configuration keys."""

    name = "aws"
    settings_class = AwsConfig

    def build(self, config: AwsConfig, context: ProviderContext) -> AwsProvider:
        imds = None if config.imds_disabled else ImdsClient(config.imds_endpoint)
        return AwsProvider(config, ec2_factory=boto3_port, imds=imds)


PLUGIN = AwsPlugin()
