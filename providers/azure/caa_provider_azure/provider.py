"""``AzureProvider``: one Azure (Confidential) VM per pod sandbox, created once, deleted completely.

Create never duplicates: the VM is one PUT by a name derived from the sandbox, and
Azure's PUT is idempotent by name, so a retry after a lost response, a 429, a 5xx
or a failed poll converges on the same VM.  Creates with one token are
serialised inside the process; the VM carries a digest of the token (``caa-token``).

Nothing leaks: the NIC, the OS disk and the public IP (only with ``USE_PUBLIC_IP``)
are declared inside the VM with ``deleteOption=Delete``, so the VM's DELETE removes
them.  A create that fails for good after ARM accepted the PUT deletes the VM
before reporting the failure.

The cheap path per pod: the PUT and its operation polls (the SDK follows
``Azure-AsyncOperation`` and ``Retry-After``) ending in the SDK's one final GET,
one NIC GET for the private IP (plus one public IP GET when asked), then the DELETE
and its polls.  The catalogue (resource SKUs) is read once.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from caa_provider_azure.arm import AzureArm, SkuView, VmView
from caa_provider_azure.config import AzureConfig
from caa_provider_azure.retry import RetryPolicy, WaitPolicy
from caa_provider_azure.shapes import (
    USERDATA_B64_LIMIT,
    USERDATA_LIMIT,
    encoded_userdata_size,
    throwaway_ssh_key,
    vm_body,
)
from caa_provider_azure.sizes import size_problem
from caa_provider_azure.tags import TOKEN_TAG, decode, matches, tags_for, token_digest
from cloud_api_adaptor.aio import KeyedLocks
from cloud_api_adaptor.errors import (
    AdaptorError,
    DeadlineExceeded,
    InstanceNotFound,
    InvalidInput,
    PermanentProviderError,
    TemporaryProviderError,
)
from cloud_api_adaptor.provider import (
    CheckResult,
    CreateRequest,
    Instance,
    InstanceSpec,
    InstanceTypeInfo,
    IPAddress,
    Provider,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: a Linux VM name: 1-64 letters, digits, '-', '_' or '.', not starting with '_' nor ending in '.' or '-'
NAME_PATTERN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,62}[A-Za-z0-9_])?")

ArmFactory = Callable[[AzureConfig], AzureArm]


class AzureProvider(Provider):
    """Pod VMs as Azure virtual machines (see the module docstring for the guarantees)."""

    max_name_length = 64
    userdata_limit = USERDATA_LIMIT

    def __init__(
        self,
        config: AzureConfig,
        *,
        arm_factory: ArmFactory,
        retry: RetryPolicy | None = None,
        wait: WaitPolicy | None = None,
    ) -> None:
        self._config = config
        self._arm_factory = arm_factory
        self._retry = retry or RetryPolicy()
        self._wait = wait or WaitPolicy()
        self._arm: AzureArm | None = None
        self._ready = asyncio.Lock()
        self._creating = KeyedLocks()
        self._skus: dict[str, SkuView] | None = None
        self._ssh_public_key: str | None = None
        self._sku_lock = asyncio.Lock()
        self.default_instance_type = config.instance_size
        self.instance_types = config.instance_sizes
        self.default_image = config.image_id

    @property
    def config(self) -> AzureConfig:
        return self._config

    # -- Provider ----------------------------------------------------------------------------------------

    async def create_instance(self, request: CreateRequest) -> Instance:
        """PUT (or converge on) the VM for ``request`` and return it with the address the daemon dials."""
        tags = self._check_request(request)
        arm = await self._port()
        body = vm_body(self._config, request, tags, await self._ssh_key())
        deadline = (
            request.deadline
            if request.deadline is not None
            else (time.monotonic() + self._wait.create_timeout)
        )
        async with self._creating.hold(request.token):
            try:
                vm = await self._retry.run(
                    lambda: arm.create_vm(request.name, body, _left(deadline)), deadline
                )
                if vm.state not in ("Succeeded", ""):
                    raise PermanentProviderError(f"azure VM {request.name} is {vm.state} after its creation")
                ips = await self._addresses(arm, vm, deadline)
            except PermanentProviderError:
                await asyncio.shield(self._discard(arm, request.name, request.token))
                raise
            except TemporaryProviderError as exc:
                if time.monotonic() >= deadline:
                    # the caller's deadline passed: the daemon's teardown finds the VM by its owner tags
                    raise DeadlineExceeded(
                        f"azure VM {request.name} not ready by the caller's deadline: {exc}"
                    ) from exc
                raise
        name = vm.name or request.name
        instance = Instance(name, name, ips, decode(vm.tags), vm.created_at)
        logger.info("created VM %s at %s", instance.name, instance.ips[0])
        return instance

    async def delete_instance(self, instance_id: str) -> None:
        """DELETE the VM and wait (its NIC, disk and public IP go with it); gone counts as deleted."""
        name = instance_id.rstrip("/").rsplit("/", 1)[-1]
        if not NAME_PATTERN.fullmatch(name):
            raise InvalidInput("instance_id", f"{instance_id!r} is not an Azure VM name or id")
        arm = await self._port()
        try:
            await self._retry.run(lambda: arm.delete_vm(name, self._wait.delete_timeout))
        except InstanceNotFound:
            logger.info("VM %s already gone", name)
            return
        logger.info("deleted VM %s", name)

    async def list_instances(self, owner_tags: Mapping[str, str]) -> Sequence[Instance]:
        """VMs of the resource group carrying every one of ``owner_tags`` (filtered here: ARM cannot)."""
        if not owner_tags:
            raise InvalidInput("owner_tags", "refusing to list every VM in the resource group")
        arm = await self._port()
        vms = await self._retry.run(arm.list_vms)
        return [
            Instance(vm.name, vm.name, (), {**decode(vm.tags), **owner_tags}, vm.created_at)
            for vm in vms
            if matches(vm.tags, owner_tags)
        ]

    async def describe_instance_types(self) -> Sequence[InstanceTypeInfo]:
        """The allowlist's vCPUs, memory and GPUs from the region's resource SKUs, sorted for best fit."""
        skus = await self._sku_table()
        infos = [
            InstanceTypeInfo(s.name, s.vcpus, s.memory_mib, s.gpus)
            for name in self._config.allowed_sizes
            if (s := skus.get(name.lower())) is not None and s.vcpus > 0
        ]
        return sorted(infos, key=lambda i: (i.gpus, i.memory_mib, i.vcpus))

    async def check_spec(self, spec: InstanceSpec) -> None:
        """Refuse a size the region does not offer, or (for confidential VMs) one that is not CVM capable."""
        if self._skus is None:
            return  # no catalogue read yet: Azure decides
        size = spec.instance_type or self._config.instance_size
        problem = size_problem(self._skus, size, self._config.disable_cvm)
        if problem:
            raise InvalidInput("instance_type", problem)

    async def verify(self) -> Sequence[CheckResult]:
        from caa_provider_azure.doctor import run_checks

        try:
            arm = await self._port()
        except AdaptorError as exc:
            return [CheckResult("credentials", False, str(exc))]
        return await run_checks(self._config, arm, self._retry)

    async def aclose(self) -> None:
        if self._arm is not None:
            await self._arm.aclose()
            self._arm = None

    # -- helpers -----------------------------------------------------------------------------------------

    def _check_request(self, request: CreateRequest) -> dict[str, str]:
        """Refuse, before any call, what Azure would refuse; the VM's tags."""
        size = encoded_userdata_size(request.userdata)
        if size > USERDATA_B64_LIMIT:
            raise InvalidInput(
                "userdata",
                f"userdata is {len(request.userdata.encode())} bytes ({size} as base64); Azure takes at most "
                f"{USERDATA_B64_LIMIT} bytes of base64, so at most {USERDATA_LIMIT} raw",
            )
        if not NAME_PATTERN.fullmatch(request.name):
            raise InvalidInput("name", f"{request.name!r} is not a valid Azure VM name")
        return tags_for(request.tags, request.token)

    async def _port(self) -> AzureArm:
        """The ARM clients, built on first use (the Azure libraries load then)."""
        if self._arm is None:
            async with self._ready:
                if self._arm is None:
                    self._arm = self._arm_factory(self._config)
        return self._arm

    async def _ssh_key(self) -> str:
        """The admin SSH public key: ``ssh-key-path``'s content, else a throw-away key (made once)."""
        if self._ssh_public_key is None:
            if self._config.ssh_key_path:
                path = Path(self._config.ssh_key_path)
                try:
                    text = await asyncio.to_thread(path.read_text)
                except OSError as exc:
                    raise PermanentProviderError(f"ssh-key-path {path}: {exc}") from exc
                self._ssh_public_key = text.strip()
            else:
                self._ssh_public_key = await asyncio.to_thread(throwaway_ssh_key)
        return self._ssh_public_key

    async def _sku_table(self) -> dict[str, SkuView]:
        if self._skus is None:
            async with self._sku_lock:
                if self._skus is None:
                    arm = await self._port()
                    skus = await self._retry.run(arm.list_skus)
                    self._skus = {s.name.lower(): s for s in skus}
        return self._skus

    async def _addresses(self, arm: AzureArm, vm: VmView, deadline: float) -> tuple[IPAddress, ...]:
        """The VM's private IP from its NIC, or its public IP with ``USE_PUBLIC_IP``."""
        if not vm.nic_ids:
            raise PermanentProviderError(f"azure VM {vm.name} has no network interface")
        nic = await self._retry.run(lambda: arm.get_nic(vm.nic_ids[0]), deadline)
        raw: list[str] = []
        if self._config.use_public_ip:
            for ip_id in nic.public_ip_ids:
                public = await self._retry.run(functools.partial(arm.get_public_ip, ip_id), deadline)
                if public:
                    raw.append(public)
            if not raw:
                raise TemporaryProviderError(f"azure VM {vm.name} has no public IP yet")
        raw.extend(nic.private_ips)
        if not raw:
            raise TemporaryProviderError(f"azure VM {vm.name} has no private IP yet")
        return tuple(ipaddress.ip_address(ip) for ip in raw)

    async def _discard(self, arm: AzureArm, name: str, token: str) -> None:
        """Delete what a failed create may have left (the VM and, with it, its NIC and disk).

        Only a VM carrying this request's token digest: a VM of the same name that ARM
        refused to change for us (``PropertyChangeNotAllowed``) is someone else's.
        """
        try:
            vm = await self._retry.run(lambda: arm.get_vm(name))
            if vm.tags.get(TOKEN_TAG) != token_digest(token):
                return
            await self._retry.run(lambda: arm.delete_vm(name, self._wait.delete_timeout))
        except InstanceNotFound:
            pass
        except AdaptorError as exc:
            logger.warning("could not delete VM %s after its failed creation: %s", name, exc)


def _left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())
