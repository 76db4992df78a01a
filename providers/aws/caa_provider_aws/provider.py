"""``AwsProvider``: one EC2 instance per pod sandbox, created once, always deleted.

Create never duplicates:
- RunInstances carries a ``ClientToken`` derived from ``CreateRequest.token``, so
  EC2 itself returns the original instance to a repeated request;
- the same token is a tag on the instance, and every RunInstances attempt first
  looks for a live instance with that tag and adopts it.  EC2 emulators do not all
  honour ClientToken (moto does not), and a response lost after EC2 acted, or a
  daemon killed right after RunInstances, must not leave a second instance.  If
  the lookup finds more than one, the oldest is kept and the rest are terminated.
  Creates with one token are serialised inside the process.

The cheap path per pod is three calls: DescribeInstances (the token lookup),
RunInstances, TerminateInstances.  The address comes from the RunInstances answer;
DescribeInstances polls only when it is missing (always for public IPs, which need
the instance running).  DescribeImages runs once per AMI (root volume size), on
first use.  Elastic IPs are looked up on delete only in public-IP mode, the only
one in which one can have been allocated for a pod VM.

Temporary errors (throttling, 5xx, lost connections) are retried by one policy
(``retry.RetryPolicy``); everything raised is one of our error classes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TypeVar

from caa_provider_aws.config import AwsConfig
from caa_provider_aws.ec2 import Ec2Port, Shape
from caa_provider_aws.errors import AddressNotFound
from caa_provider_aws.imds import ImdsClient, fill_from_imds
from caa_provider_aws.retry import RetryPolicy, WaitPolicy
from caa_provider_aws.shapes import (
    GONE_STATES,
    TOKEN_TAG,
    RootDevice,
    client_token,
    instance_type_info,
    is_address_ready,
    launch_time,
    root_device,
    run_instances_params,
    state_of,
    tag_filters,
    to_instance,
)
from cloud_api_adaptor.aio import KeyedLocks, shielded
from cloud_api_adaptor.errors import (
    AdaptorError,
    InstanceNotFound,
    InvalidInput,
    PermanentProviderError,
    TemporaryProviderError,
)
from cloud_api_adaptor.provider import CheckResult, CreateRequest, Instance, InstanceTypeInfo, Provider

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: AWS's user-data limit: 16 KB of raw data, before base64
USERDATA_LIMIT = 16384

Ec2Factory = Callable[[AwsConfig], Ec2Port]


class AwsProvider(Provider):
    """Pod VMs as EC2 instances (see the module docstring for the guarantees)."""

    max_name_length = 63
    userdata_limit = USERDATA_LIMIT

    def __init__(
        self,
        config: AwsConfig,
        *,
        ec2_factory: Ec2Factory,
        imds: ImdsClient | None = None,
        retry: RetryPolicy | None = None,
        wait: WaitPolicy | None = None,
    ) -> None:
        self._config = config
        self._ec2_factory = ec2_factory
        self._imds = imds
        self._retry = retry or RetryPolicy()
        self._wait = wait or WaitPolicy()
        self._ec2: Ec2Port | None = None
        self._ready = asyncio.Lock()
        self._root_devices: dict[str, RootDevice | None] = {}
        self._root_lock = asyncio.Lock()
        self._launching = KeyedLocks()
        self.default_instance_type = config.instance_type
        self.instance_types = config.instance_types
        self.default_image = config.image_id

    @property
    def config(self) -> AwsConfig:
        """The effective configuration (after instance-metadata defaults, once started)."""
        return self._config

    # -- Provider ----------------------------------------------------------------------------------------

    async def create_instance(self, request: CreateRequest) -> Instance:
        """Launch (or find) the instance for ``request.token`` and return it with its address."""
        size = len(request.userdata.encode())
        if size > USERDATA_LIMIT:
            raise InvalidInput(
                "userdata",
                f"userdata is {size} bytes; EC2 accepts at most {USERDATA_LIMIT} bytes (16 KB before base64)",
            )
        ec2 = await self._port()
        config = self._config
        root = await self._root_device(ec2, request.spec.image or config.image_id)
        token = client_token(request.token)
        async with self._launching.hold(token):
            raw = await self._launch(ec2, run_instances_params(config, request, token, root), token)
        instance_id = str(raw["InstanceId"])
        if state_of(raw) in GONE_STATES:
            # real EC2 answers a reused ClientToken with the original instance, even a terminated one
            raise PermanentProviderError(
                f"instance {instance_id} for this request token is {state_of(raw)}; create needs a new token"
            )
        if not is_address_ready(raw, config.use_public_ip):
            raw = await self._wait_for_address(ec2, instance_id)
        instance = to_instance(raw, config.use_public_ip)
        logger.info("created instance %s (%s) at %s", instance.id, instance.name, instance.ips[0])
        return instance

    async def delete_instance(self, instance_id: str) -> None:
        """Release any elastic IP allocated for the instance, then terminate it; gone counts as deleted."""
        ec2 = await self._port()
        if self._config.use_public_ip:
            await self._release_addresses(ec2, instance_id)
        try:
            await self._retried(lambda: ec2.terminate_instances([instance_id]))
        except InstanceNotFound:
            logger.info("instance %s already gone", instance_id)
            return
        logger.info("terminated instance %s", instance_id)

    async def list_instances(self, owner_tags: Mapping[str, str]) -> Sequence[Instance]:
        """Instances not terminated that carry every one of ``owner_tags``."""
        if not owner_tags:
            raise InvalidInput("owner_tags", "refusing to list every instance in the account")
        ec2 = await self._port()
        filters = tag_filters(owner_tags)
        raws = await self._retried(lambda: ec2.describe_instances(filters=filters))
        instances = [to_instance(raw, self._config.use_public_ip) for raw in raws]
        # EC2 filter values are wildcard patterns: keep exact matches only
        return [i for i in instances if all(i.tags.get(k) == v for k, v in owner_tags.items())]

    async def describe_instance_types(self) -> Sequence[InstanceTypeInfo]:
        """The allowlist's vCPUs, memory and GPUs, sorted by (GPUs, memory, vCPUs)."""
        ec2 = await self._port()
        names = self._config.allowed_instance_types
        raws = await self._retried(lambda: ec2.describe_instance_types(names))
        return sorted((instance_type_info(r) for r in raws), key=lambda i: (i.gpus, i.memory_mib, i.vcpus))

    async def verify(self) -> Sequence[CheckResult]:
        """The ``doctor`` checks: one result per check, failures explained."""
        try:
            ec2 = await self._port()
        except AdaptorError as exc:
            return [CheckResult("credentials", False, str(exc))]
        config = self._config
        checks: list[tuple[str, Callable[[], Awaitable[str]]]] = [
            ("credentials", lambda: self._check_credentials(ec2)),
            ("image", lambda: self._check_image(ec2)),
            ("instance types", lambda: self._check_instance_types(ec2)),
            ("subnet", lambda: self._check_subnet(ec2)),
            ("security groups", lambda: self._check_security_groups(ec2)),
        ]
        if config.key_name:
            checks.append(("key pair", lambda: self._check_key_pair(ec2)))
        if config.use_launch_template:
            checks.append(("launch template", lambda: self._check_launch_template(ec2)))
        results = [await _check(name, fn) for name, fn in checks]
        results.append(CheckResult("userdata limit", True, f"{USERDATA_LIMIT} bytes (raw, before base64)"))
        return results

    async def aclose(self) -> None:
        if self._ec2 is not None:
            await self._ec2.aclose()
            self._ec2 = None

    # -- start-up ----------------------------------------------------------------------------------------

    async def _port(self) -> Ec2Port:
        """The EC2 port, built on first use after filling unset settings from instance metadata."""
        if self._ec2 is not None:
            return self._ec2
        async with self._ready:
            if self._ec2 is None:
                config = self._config
                if self._imds is not None:
                    config = await fill_from_imds(config, self._imds)
                self._ec2 = self._ec2_factory(config)
                self._config = config
        return self._ec2

    async def _root_device(self, ec2: Ec2Port, image: str) -> RootDevice | None:
        """The AMI's root device, sized; DescribeImages runs once per AMI."""
        if self._config.root_volume_size == 0 or not image:
            return None
        if image in self._root_devices:
            return self._root_devices[image]
        async with self._root_lock:
            if image not in self._root_devices:
                images = await self._retried(lambda: ec2.describe_images([image]))
                if not images:
                    raise PermanentProviderError(f"AMI {image} not found")
                self._root_devices[image] = root_device(images[0], self._config.root_volume_size)
        return self._root_devices[image]

    # -- create ------------------------------------------------------------------------------------------

    async def _retried(self, call: Callable[[], Awaitable[T]]) -> T:
        async for attempt in self._retry.retrying():
            with attempt:
                return await call()
        raise AssertionError("unreachable: tenacity reraises the last error")

    async def _launch(self, ec2: Ec2Port, params: Mapping[str, object], token: str) -> Shape:
        """RunInstances under the retry policy; each attempt first adopts a live instance with the token."""
        async for attempt in self._retry.retrying():
            with attempt:
                found = await self._find_by_token(ec2, token)
                if found is not None:
                    logger.info("adopting instance %s launched earlier for this token", found["InstanceId"])
                    return found
                return await ec2.run_instances(params)
        raise AssertionError("unreachable: tenacity reraises the last error")

    async def _find_by_token(self, ec2: Ec2Port, token: str) -> Shape | None:
        """The live instance tagged ``token``; extras (an emulator ignoring ClientToken) are terminated."""
        found = await ec2.describe_instances(filters=tag_filters({TOKEN_TAG: token}))
        if not found:
            return None
        found.sort(key=lambda raw: (launch_time(raw) or 0.0, str(raw["InstanceId"])))
        extra = [str(raw["InstanceId"]) for raw in found[1:]]
        if extra:
            logger.warning("terminating duplicate instances %s for one request token", ", ".join(extra))
            await shielded(ec2.terminate_instances(extra))
        return found[0]

    async def _wait_for_address(self, ec2: Ec2Port, instance_id: str) -> Shape:
        """Poll DescribeInstances (bounded) until the address the daemon dials is known."""
        public = self._config.use_public_ip
        for poll in range(self._wait.attempts):
            try:
                found = await self._retried(lambda: ec2.describe_instances(instance_ids=[instance_id]))
            except InstanceNotFound:
                found = []  # EC2 is eventually consistent right after RunInstances
            if found:
                if state_of(found[0]) in GONE_STATES:
                    raise PermanentProviderError(f"instance {instance_id} is {state_of(found[0])}")
                if is_address_ready(found[0], public):
                    return found[0]
            if poll + 1 < self._wait.attempts:
                await self._wait.sleep(self._wait.interval)
        waited = self._wait.attempts * self._wait.interval
        kind = "public IP" if public else "IP address"
        raise TemporaryProviderError(f"instance {instance_id} has no {kind} after {waited:.0f}s")

    # -- delete ------------------------------------------------------------------------------------------

    async def _release_addresses(self, ec2: Ec2Port, instance_id: str) -> None:
        """Release elastic IPs allocated for this instance (tagged ``Name=eip-<id>``, as Go tags them).

        Addresses the user associated by hand are left alone: EC2 disassociates them
        on termination.
        """
        filters = [{"Name": "instance-id", "Values": [instance_id]}]
        addresses = await self._retried(lambda: ec2.describe_addresses(filters))
        for address in addresses:
            tags = {t.get("Key"): t.get("Value") for t in address.get("Tags", [])}
            if tags.get("Name") != f"eip-{instance_id}":
                continue
            association = str(address.get("AssociationId") or "")
            allocation = str(address.get("AllocationId") or "")
            with contextlib.suppress(AddressNotFound):
                if association:
                    await self._retried(functools.partial(ec2.disassociate_address, association))
                if allocation:
                    await self._retried(functools.partial(ec2.release_address, allocation))
            logger.info("released elastic IP %s of instance %s", address.get("PublicIp"), instance_id)

    # -- doctor ------------------------------------------------------------------------------------------

    async def _check_credentials(self, ec2: Ec2Port) -> str:
        regions = await self._retried(ec2.describe_regions)
        return f"EC2 API answers in {self._config.region or 'the default region'} ({len(regions)} regions)"

    async def _check_image(self, ec2: Ec2Port) -> str:
        image = self._config.image_id
        if not image:
            return "none set: the launch template names the AMI"
        images = await self._retried(lambda: ec2.describe_images([image]))
        if not images:
            raise PermanentProviderError(f"AMI {image} not found")
        root = root_device(images[0], self._config.root_volume_size)
        size = f", root volume {root.size_gib} GiB" if root and self._config.root_volume_size else ""
        return f"{image} ({images[0].get('Name', '')}){size}"

    async def _check_instance_types(self, ec2: Ec2Port) -> str:
        names = self._config.allowed_instance_types
        found = {
            str(r["InstanceType"]) for r in await self._retried(lambda: ec2.describe_instance_types(names))
        }
        missing = [n for n in names if n not in found]
        if missing:
            raise PermanentProviderError(f"unknown instance types: {', '.join(missing)}")
        return ", ".join(names)

    async def _check_subnet(self, ec2: Ec2Port) -> str:
        subnet = self._config.subnet_id
        if not subnet:
            return "none set: EC2 uses the default subnet"
        found = await self._retried(lambda: ec2.describe_subnets([subnet]))
        if not found:
            raise PermanentProviderError(f"subnet {subnet} not found")
        return f"{subnet} in {found[0].get('VpcId', '?')} ({found[0].get('AvailabilityZone', '?')})"

    async def _check_security_groups(self, ec2: Ec2Port) -> str:
        groups = self._config.security_group_ids
        if not groups:
            return "none set: EC2 uses the VPC's default group"
        found = {str(g["GroupId"]) for g in await self._retried(lambda: ec2.describe_security_groups(groups))}
        missing = [g for g in groups if g not in found]
        if missing:
            raise PermanentProviderError(f"security groups not found: {', '.join(missing)}")
        return ", ".join(groups)

    async def _check_key_pair(self, ec2: Ec2Port) -> str:
        key = self._config.key_name
        if not await self._retried(lambda: ec2.describe_key_pairs([key])):
            raise PermanentProviderError(f"key pair {key} not found")
        return key

    async def _check_launch_template(self, ec2: Ec2Port) -> str:
        name = self._config.launch_template_name
        if not await self._retried(lambda: ec2.describe_launch_templates([name])):
            raise PermanentProviderError(f"launch template {name} not found")
        return name


async def _check(name: str, run: Callable[[], Awaitable[str]]) -> CheckResult:
    try:
        return CheckResult(name, True, await run())
    except AdaptorError as exc:
        return CheckResult(name, False, str(exc))
