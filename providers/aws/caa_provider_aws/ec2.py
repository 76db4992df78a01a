"""The narrow EC2 port ``AwsProvider`` uses, and its boto3 adapter.

``Ec2Port`` lists only the calls the provider makes, with plain-dict shapes as
boto3 returns them, so a test can stand in any implementation.  ``Boto3Ec2``
runs each blocking boto3 call on its own thread pool (the default executor is
a handful of threads; a burst of pod creates should not queue behind it) and
translates every botocore exception at this edge (``errors.translate``).

botocore's own retries are off: ``retry.RetryPolicy`` is the one retry policy,
so a RunInstances is never resent without first looking for what a lost
response created.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

import boto3
import botocore.config

from caa_provider_aws.config import AwsConfig
from caa_provider_aws.errors import translate
from cloud_api_adaptor.errors import PermanentProviderError

logger = logging.getLogger(__name__)
T = TypeVar("T")

Shape = dict[str, Any]
Filters = Sequence[Mapping[str, Any]]


class Ec2Port(Protocol):
    """The EC2 calls the AWS provider makes; every error is one of ours."""

    async def run_instances(self, params: Mapping[str, Any]) -> Shape:
        """RunInstances; the one instance launched."""
        ...

    async def describe_instances(
        self, *, instance_ids: Sequence[str] = (), filters: Filters = ()
    ) -> list[Shape]:
        """DescribeInstances, every page, reservations flattened."""
        ...

    async def terminate_instances(self, instance_ids: Sequence[str]) -> list[Shape]: ...

    async def describe_images(self, image_ids: Sequence[str]) -> list[Shape]: ...

    async def describe_instance_types(self, names: Sequence[str]) -> list[Shape]: ...

    async def describe_addresses(self, filters: Filters) -> list[Shape]: ...

    async def disassociate_address(self, association_id: str) -> None: ...

    async def release_address(self, allocation_id: str) -> None: ...

    async def describe_subnets(self, subnet_ids: Sequence[str]) -> list[Shape]: ...

    async def describe_security_groups(self, group_ids: Sequence[str]) -> list[Shape]: ...

    async def describe_key_pairs(self, names: Sequence[str]) -> list[Shape]: ...

    async def describe_launch_templates(self, names: Sequence[str]) -> list[Shape]: ...

    async def describe_regions(self) -> list[Shape]: ...

    async def aclose(self) -> None: ...


def make_client(config: AwsConfig, *, max_connections: int = 32) -> Any:
    """A boto3 EC2 client from ``config``: static keys, else a profile, else the default chain."""
    try:
        session = boto3.session.Session(
            aws_access_key_id=config.access_key_id or None,
            aws_secret_access_key=config.secret_access_key or None,
            aws_session_token=config.session_token or None,
            region_name=config.region or None,
            profile_name=config.profile or None,
        )
        return session.client(
            "ec2",
            endpoint_url=config.endpoint_url or None,
            config=botocore.config.Config(
                retries={"total_max_attempts": 1, "mode": "standard"},
                connect_timeout=10,
                read_timeout=60,
                max_pool_connections=max_connections,
                user_agent_extra="cloud-api-adaptor-py",
            ),
        )
    except Exception as exc:  # ProfileNotFound, NoRegionError, ...: all botocore, all at this edge
        raise translate(exc, "client") from exc


class Boto3Ec2:
    """``Ec2Port`` over a boto3 client; ``make_client`` builds one from the config."""

    def __init__(self, client: Any, *, max_workers: int = 32) -> None:
        self._client = client
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="ec2")

    async def _call(self, operation: str, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn)
        except Exception as exc:
            raise translate(exc, operation) from exc

    def _pages(self, operation: str, key: str, **kwargs: Any) -> list[Shape]:
        paginator = self._client.get_paginator(operation)
        items: list[Shape] = []
        for page in paginator.paginate(**kwargs):
            items.extend(page.get(key, []))
        return items

    async def run_instances(self, params: Mapping[str, Any]) -> Shape:
        response = await self._call("RunInstances", functools.partial(self._client.run_instances, **params))
        instances: list[Shape] = response.get("Instances", [])
        if len(instances) != 1:
            raise PermanentProviderError(
                f"ec2 RunInstances: {len(instances)} instances in the response, not 1"
            )
        return instances[0]

    async def describe_instances(
        self, *, instance_ids: Sequence[str] = (), filters: Filters = ()
    ) -> list[Shape]:
        kwargs: dict[str, Any] = {}
        if instance_ids:
            kwargs["InstanceIds"] = list(instance_ids)
        if filters:
            kwargs["Filters"] = [dict(f) for f in filters]
        reservations = await self._call(
            "DescribeInstances",
            functools.partial(self._pages, "describe_instances", "Reservations", **kwargs),
        )
        return [inst for res in reservations for inst in res.get("Instances", [])]

    async def terminate_instances(self, instance_ids: Sequence[str]) -> list[Shape]:
        response = await self._call(
            "TerminateInstances",
            functools.partial(self._client.terminate_instances, InstanceIds=list(instance_ids)),
        )
        return list(response.get("TerminatingInstances", []))

    async def describe_images(self, image_ids: Sequence[str]) -> list[Shape]:
        response = await self._call(
            "DescribeImages", functools.partial(self._client.describe_images, ImageIds=list(image_ids))
        )
        return list(response.get("Images", []))

    async def describe_instance_types(self, names: Sequence[str]) -> list[Shape]:
        return await self._call(
            "DescribeInstanceTypes",
            functools.partial(
                self._pages, "describe_instance_types", "InstanceTypes", InstanceTypes=list(names)
            ),
        )

    async def describe_addresses(self, filters: Filters) -> list[Shape]:
        response = await self._call(
            "DescribeAddresses",
            functools.partial(self._client.describe_addresses, Filters=[dict(f) for f in filters]),
        )
        return list(response.get("Addresses", []))

    async def disassociate_address(self, association_id: str) -> None:
        await self._call(
            "DisassociateAddress",
            functools.partial(self._client.disassociate_address, AssociationId=association_id),
        )

    async def release_address(self, allocation_id: str) -> None:
        await self._call(
            "ReleaseAddress", functools.partial(self._client.release_address, AllocationId=allocation_id)
        )

    async def describe_subnets(self, subnet_ids: Sequence[str]) -> list[Shape]:
        response = await self._call(
            "DescribeSubnets", functools.partial(self._client.describe_subnets, SubnetIds=list(subnet_ids))
        )
        return list(response.get("Subnets", []))

    async def describe_security_groups(self, group_ids: Sequence[str]) -> list[Shape]:
        response = await self._call(
            "DescribeSecurityGroups",
            functools.partial(self._client.describe_security_groups, GroupIds=list(group_ids)),
        )
        return list(response.get("SecurityGroups", []))

    async def describe_key_pairs(self, names: Sequence[str]) -> list[Shape]:
        response = await self._call(
            "DescribeKeyPairs", functools.partial(self._client.describe_key_pairs, KeyNames=list(names))
        )
        return list(response.get("KeyPairs", []))

    async def describe_launch_templates(self, names: Sequence[str]) -> list[Shape]:
        response = await self._call(
            "DescribeLaunchTemplates",
            functools.partial(self._client.describe_launch_templates, LaunchTemplateNames=list(names)),
        )
        return list(response.get("LaunchTemplates", []))

    async def describe_regions(self) -> list[Shape]:
        response = await self._call("DescribeRegions", self._client.describe_regions)
        return list(response.get("Regions", []))

    async def aclose(self) -> None:
        """Close the HTTP pool and the worker threads."""
        await asyncio.to_thread(self._executor.shutdown, wait=True)
        self._client.close()
