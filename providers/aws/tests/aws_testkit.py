"""Shared helpers for the AWS provider tests: one moto world per test, reached through a fault proxy.

(A plain module, not conftest, so test modules can import its types; its basename
is unique across the repository's test directories.)
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from dataclasses import dataclass
from typing import Any

from caa_provider_aws.config import AwsConfig
from caa_provider_aws.plugin import boto3_port
from caa_provider_aws.provider import AwsProvider
from caa_provider_aws.retry import RetryPolicy, WaitPolicy

from cloud_api_adaptor.testing.faultproxy import FaultProxy

REGION = "us-east-1"
#: a default AMI moto ships (Amazon Linux 2, root /dev/xvda of 15 GiB)
AMI = "ami-04681a1dbd79675a5"
AMI_ROOT_GIB = 15
LIVE = ["pending", "running", "stopping", "stopped"]


async def no_sleep(_: float) -> None:
    """Backoff without waiting: tests assert outcomes, not timing."""
    await asyncio.sleep(0)


FAST_RETRY = RetryPolicy(attempts=4, initial=0.0, maximum=0.0, jitter=0.0, sleep=no_sleep)
FAST_WAIT = WaitPolicy(interval=0.0, attempts=5, sleep=no_sleep)


@dataclass
class AwsWorld:
    """A VPC, subnet and security group of this test's own in moto, and a fault proxy in front of it."""

    moto_url: str
    proxy: FaultProxy
    ec2: Any  # boto3 client straight to moto: the test's view of the cloud, bypassing proxy and provider
    vpc_id: str
    subnet_id: str
    sg_id: str

    def config(self, **changes: Any) -> AwsConfig:
        base = AwsConfig(
            image_id=AMI,
            region=REGION,
            subnet_id=self.subnet_id,
            security_group_ids=(self.sg_id,),
            endpoint_url=self.proxy.url,
            access_key_id="testing",
            secret_access_key="testing",
            imds_disabled=True,
        )
        return dataclasses.replace(base, **changes)

    def provider(self, **changes: Any) -> AwsProvider:
        return AwsProvider(self.config(**changes), ec2_factory=boto3_port, retry=FAST_RETRY, wait=FAST_WAIT)

    def live_instances(self, **tags: str) -> list[dict[str, Any]]:
        """Instances in this test's VPC (optionally with these tags) that are not terminated."""
        filters = [
            {"Name": "vpc-id", "Values": [self.vpc_id]},
            {"Name": "instance-state-name", "Values": LIVE},
        ]
        filters += [{"Name": f"tag:{k}", "Values": [v]} for k, v in tags.items()]
        pages = self.ec2.get_paginator("describe_instances").paginate(Filters=filters)
        return [i for page in pages for r in page["Reservations"] for i in r["Instances"]]

    def live_ids(self) -> set[str]:
        return {str(i["InstanceId"]) for i in self.live_instances()}


def make_world(moto_url: str, proxy: FaultProxy, ec2: Any) -> AwsWorld:
    cidr_octet = uuid.uuid4().int % 250
    vpc = ec2.create_vpc(CidrBlock=f"10.{cidr_octet}.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.{cidr_octet}.1.0/24")["Subnet"]["SubnetId"]
    sg = ec2.create_security_group(
        GroupName=f"podvm-{uuid.uuid4().hex[:8]}", Description="pod VMs", VpcId=vpc
    )
    return AwsWorld(moto_url, proxy, ec2, vpc, subnet, sg["GroupId"])
