"""The fault proxy between boto3 and moto: counts, records and injects faults as told."""

from __future__ import annotations

from typing import Any

import boto3
import botocore.config
import pytest
from aws_testkit import REGION
from botocore.exceptions import ClientError, ConnectionClosedError

from cloud_api_adaptor.testing.faultproxy import Fault, FaultProxy


def _client(url: str) -> Any:
    return boto3.client(
        "ec2",
        region_name=REGION,
        endpoint_url=url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=botocore.config.Config(retries={"total_max_attempts": 1}),
    )


def test_requests_pass_through_and_are_counted_per_action(moto_url: str) -> None:
    with FaultProxy(moto_url) as proxy:
        ec2 = _client(proxy.url)
        assert ec2.describe_regions()["Regions"]
        ec2.describe_regions()
        ec2.describe_vpcs()
        ec2.close()
        assert proxy.counts() == {"DescribeRegions": 2, "DescribeVpcs": 1}
        assert proxy.requests("DescribeVpcs")[0].params["Action"] == "DescribeVpcs"


def test_throttle_and_unavailable_answer_without_forwarding(moto_url: str) -> None:
    with FaultProxy(moto_url) as proxy:
        ec2 = _client(proxy.url)
        proxy.add_rule("CreateVpc", Fault.THROTTLE)
        proxy.add_rule("CreateVpc", Fault.UNAVAILABLE)
        codes = []
        for _ in range(2):
            with pytest.raises(ClientError) as info:
                ec2.create_vpc(CidrBlock="10.251.0.0/16")
            codes.append(
                (
                    info.value.response["Error"]["Code"],
                    info.value.response["ResponseMetadata"]["HTTPStatusCode"],
                )
            )
        assert codes == [("RequestLimitExceeded", 503), ("503", 503)]
        vpcs = _client(moto_url).describe_vpcs(Filters=[{"Name": "cidr", "Values": ["10.251.0.0/16"]}])[
            "Vpcs"
        ]
        assert vpcs == []
        ec2.close()


def test_a_dropped_response_reaches_the_upstream_but_not_the_client(moto_url: str) -> None:
    direct = _client(moto_url)
    with FaultProxy(moto_url) as proxy:
        ec2 = _client(proxy.url)
        proxy.add_rule("CreateVpc", Fault.DROP_RESPONSE)
        with pytest.raises(ConnectionClosedError):
            ec2.create_vpc(CidrBlock="10.252.0.0/16")
        vpcs = direct.describe_vpcs(Filters=[{"Name": "cidr", "Values": ["10.252.0.0/16"]}])["Vpcs"]
        assert len(vpcs) == 1
        direct.delete_vpc(VpcId=vpcs[0]["VpcId"])
        # the next request on a fresh connection is answered normally
        assert ec2.describe_regions()["Regions"]
        assert [r.fault for r in proxy.requests()] == [Fault.DROP_RESPONSE, None]
        ec2.close()
    direct.close()


def test_only_loopback_upstreams_are_accepted() -> None:
    with pytest.raises(ValueError, match="loopback"):
        FaultProxy("http://192.0.2.1:80")
