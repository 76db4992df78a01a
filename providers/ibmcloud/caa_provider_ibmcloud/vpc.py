"""The narrow VPC port the provider uses, over the ibm-vpc SDK (``VpcV1``).

Only the calls the provider makes, with plain-dict shapes as the SDK returns
them.  Every call runs off the event loop and every SDK exception is translated
at this edge.  The SDK's own retries stay off (``retry.RetryPolicy`` is the one
policy).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from caa_provider_ibmcloud.calls import SdkCalls

Shape = dict[str, Any]


class VpcPort:
    """The VPC API calls of the provider; every error is one of ours."""

    def __init__(self, authenticator: Any, url: str, calls: SdkCalls) -> None:
        from ibm_vpc import VpcV1

        self._vpc = VpcV1(authenticator=authenticator)
        self._vpc.set_service_url(url)
        self._calls = calls

    async def _result(self, operation: str, fn: Callable[[], Any]) -> Shape:
        response = await self._calls.call(operation, fn)
        result = response.get_result()
        return dict(result) if isinstance(result, Mapping) else {}

    async def instances_named(self, name: str) -> list[Shape]:
        """Instances with exactly this name (names are unique per region: zero or one)."""
        page = await self._result(
            "vpc list instances", functools.partial(self._vpc.list_instances, name=name)
        )
        return [dict(i) for i in page.get("instances", []) if i.get("name") == name]

    async def create_instance(self, prototype: Mapping[str, Any]) -> Shape:
        return await self._result(
            "vpc create instance",
            functools.partial(self._vpc.create_instance, instance_prototype=dict(prototype)),
        )

    async def get_instance(self, instance_id: str) -> Shape:
        return await self._result(
            "vpc get instance", functools.partial(self._vpc.get_instance, id=instance_id)
        )

    async def delete_instance(self, instance_id: str) -> None:
        await self._calls.call(
            "vpc delete instance", functools.partial(self._vpc.delete_instance, id=instance_id)
        )

    async def get_volume(self, volume_id: str) -> Shape:
        return await self._result("vpc get volume", functools.partial(self._vpc.get_volume, id=volume_id))

    async def get_profile(self, name: str) -> Shape:
        return await self._result(
            "vpc get instance profile", functools.partial(self._vpc.get_instance_profile, name=name)
        )

    async def get_image(self, image_id: str) -> Shape:
        return await self._result("vpc get image", functools.partial(self._vpc.get_image, id=image_id))

    async def get_subnet(self, subnet_id: str) -> Shape:
        return await self._result("vpc get subnet", functools.partial(self._vpc.get_subnet, id=subnet_id))

    async def get_vpc(self, vpc_id: str) -> Shape:
        return await self._result("vpc get vpc", functools.partial(self._vpc.get_vpc, id=vpc_id))

    async def get_security_group(self, group_id: str) -> Shape:
        return await self._result(
            "vpc get security group", functools.partial(self._vpc.get_security_group, id=group_id)
        )

    async def get_key(self, key_id: str) -> Shape:
        return await self._result("vpc get key", functools.partial(self._vpc.get_key, id=key_id))

    async def get_zone(self, region: str, zone: str) -> Shape:
        return await self._result(
            "vpc get zone", functools.partial(self._vpc.get_region_zone, region_name=region, name=zone)
        )
