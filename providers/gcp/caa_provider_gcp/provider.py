"""``GcpProvider``: one Compute Engine (Confidential) VM per pod sandbox, created once, always deleted.

Create never duplicates:
- ``instances.insert`` carries a ``requestId`` derived from ``CreateRequest.token``
  (a UUID, never the zero one): a retry after a lost response, a 5xx or a
  throttled attempt resends the same id, and Compute Engine answers with the
  original operation instead of creating a second instance;
- the instance name is unique in the zone: a 409 is adopted when the instance
  holding the name carries this request's token label (``caa_token``), and
  refused otherwise;
- creates with one token are serialised inside the process.

The cheap path per pod: insert, ``zoneOperations.wait`` until DONE (usually one or
two), one ``instances.get`` for the address, then delete and its wait.
``images.get`` runs once per image (boot disk size).

Owner tags travel as labels in GCP's grammar (``labels.py``), so ``list_instances``
is one ``instances.list`` with a server-side label filter.  Temporary errors are
retried by one policy (``retry.RetryPolicy``); everything raised is one of our
error classes.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TypeVar

from caa_provider_gcp.compute import ComputePort, Json
from caa_provider_gcp.config import GcpConfig, confidential_support_problem
from caa_provider_gcp.errors import NameInUse, operation_error
from caa_provider_gcp.labels import (
    MAX_LABELS,
    OWNER_LABELS,
    TOKEN_LABEL,
    encode_value,
    label_filter,
    label_key,
    labels_for,
    token_digest,
)
from caa_provider_gcp.retry import RetryPolicy, WaitPolicy
from caa_provider_gcp.shapes import (
    GONE_STATUSES,
    METADATA_VALUE_LIMIT,
    USERDATA_LIMIT,
    BootDisk,
    boot_disk,
    encoded_userdata_size,
    insert_request_id,
    instance_body,
    is_address_ready,
    machine_type_info,
    operation_errors,
    to_instance,
)
from caa_provider_gcp.tagging import TagPort
from cloud_api_adaptor.aio import KeyedLocks
from cloud_api_adaptor.errors import (
    AdaptorError,
    InstanceNotFound,
    InvalidInput,
    PermanentProviderError,
    TemporaryProviderError,
)
from cloud_api_adaptor.provider import (
    TAG_SANDBOX,
    CheckResult,
    CreateRequest,
    Instance,
    InstanceTypeInfo,
    Provider,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")

NAME_PATTERN = re.compile(r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?")

ComputeFactory = Callable[[GcpConfig], ComputePort]
TagFactory = Callable[[GcpConfig], TagPort]


class GcpProvider(Provider):
    """Pod VMs as Compute Engine instances (see the module docstring for the guarantees)."""

    max_name_length = 63
    userdata_limit = USERDATA_LIMIT

    def __init__(
        self,
        config: GcpConfig,
        *,
        compute_factory: ComputeFactory,
        tag_factory: TagFactory | None = None,
        retry: RetryPolicy | None = None,
        wait: WaitPolicy | None = None,
    ) -> None:
        self._config = config
        self._compute_factory = compute_factory
        self._tag_factory = tag_factory
        self._retry = retry or RetryPolicy()
        self._wait = wait or WaitPolicy()
        self._compute: ComputePort | None = None
        self._tags: TagPort | None = None
        self._ready = asyncio.Lock()
        self._disks: dict[str, BootDisk] = {}
        self._disk_lock = asyncio.Lock()
        self._tag_values: dict[tuple[tuple[str, str], ...], dict[tuple[str, str], str]] = {}
        self._creating = KeyedLocks()
        self._catalogue: tuple[InstanceTypeInfo, ...] | None = None
        self.default_instance_type = config.machine_type
        self.instance_types = config.machine_types
        self.default_image = config.image_name

    @property
    def config(self) -> GcpConfig:
        return self._config

    # -- Provider ----------------------------------------------------------------------------------------

    async def create_instance(self, request: CreateRequest) -> Instance:
        """Insert (or find) the instance for ``request.token`` and return it with its address."""
        self._check_request(request)
        compute = await self._port()
        user_tags = sorted((k, v) for k, v in request.tags.items() if k not in OWNER_LABELS)
        tag_values = await self._resolve_tags(user_tags)
        disk = await self._boot_disk(compute, self._config.image_url(request.spec.image))
        body = instance_body(self._config, request, disk)
        async with self._creating.hold(request.token):
            raw = await self._insert(compute, body, request)
        if tag_values:
            await self._bind_tags(str(raw.get("id", "")), tag_values)
        instance = to_instance(raw, self._config.use_public_ip)
        logger.info("created instance %s at %s", instance.name, instance.ips[0])
        return instance

    async def delete_instance(self, instance_id: str) -> None:
        """Delete the instance and wait for it to go (the boot disk auto-deletes); gone counts as deleted."""
        if not NAME_PATTERN.fullmatch(instance_id):
            raise InvalidInput("instance_id", f"{instance_id!r} is not a Compute Engine instance name")
        compute = await self._port()
        request_id = str(uuid.uuid4())  # one delete: its retries share it, a later delete does not
        try:
            operation = await self._retried(lambda: compute.delete_instance(instance_id, request_id))
            operation = await self._finished(compute, operation)
        except InstanceNotFound:
            logger.info("instance %s already gone", instance_id)
            return
        if operation_errors(operation):
            error = operation_error(operation, f"deleting {instance_id}")
            if isinstance(error, InstanceNotFound):
                return
            raise error
        logger.info("deleted instance %s", instance_id)

    async def list_instances(self, owner_tags: Mapping[str, str]) -> Sequence[Instance]:
        """Instances in the zone carrying every one of ``owner_tags`` (a server-side label filter)."""
        if not owner_tags:
            raise InvalidInput("owner_tags", "refusing to list every instance in the zone")
        compute = await self._port()
        filter_ = label_filter(owner_tags)
        raws = await self._retried(lambda: compute.list_instances(filter_))
        wanted = {label_key(k): encode_value(v) for k, v in owner_tags.items()}
        found = []
        for raw in raws:
            labels = raw.get("labels") or {}
            if all(labels.get(k) == v for k, v in wanted.items()):
                instance = to_instance(raw, self._config.use_public_ip)
                # a one-way encoded value matched exactly: answer with the value asked for
                found.append(
                    Instance(
                        instance.id,
                        instance.name,
                        instance.ips,
                        {**instance.tags, **owner_tags},
                        instance.created_at,
                    )
                )
        return found

    async def describe_instance_types(self) -> Sequence[InstanceTypeInfo]:
        """The allowlist's vCPUs, memory and accelerators, sorted by (GPUs, memory, vCPUs)."""
        if self._catalogue is None:
            compute = await self._port()
            raws = await asyncio.gather(
                *(
                    self._retried(functools.partial(compute.get_machine_type, name))
                    for name in self._config.allowed_machine_types
                )
            )
            infos = (machine_type_info(r) for r in raws)
            self._catalogue = tuple(sorted(infos, key=lambda i: (i.gpus, i.memory_mib, i.vcpus)))
        return self._catalogue

    async def verify(self) -> Sequence[CheckResult]:
        """The ``doctor`` checks: one result per check, failures explained."""
        from caa_provider_gcp.doctor import run_checks

        try:
            compute = await self._port()
        except AdaptorError as exc:
            return [CheckResult("credentials", False, str(exc))]
        return await run_checks(self._config, compute, self._retried)

    async def aclose(self) -> None:
        if self._compute is not None:
            await self._compute.aclose()
            self._compute = None
        if self._tags is not None:
            await self._tags.aclose()
            self._tags = None

    # -- checks and start-up -----------------------------------------------------------------------------

    def _check_request(self, request: CreateRequest) -> None:
        """Refuse, before any call, what Compute Engine would refuse."""
        size = encoded_userdata_size(request.userdata)
        if size > METADATA_VALUE_LIMIT:
            raise InvalidInput(
                "userdata",
                f"userdata is {len(request.userdata.encode())} bytes ({size} as base64); a GCP metadata "
                f"value holds at most {METADATA_VALUE_LIMIT} bytes, so at most {USERDATA_LIMIT} raw",
            )
        if not NAME_PATTERN.fullmatch(request.name):
            raise InvalidInput("name", f"{request.name!r} is not a valid Compute Engine instance name")
        count = len(labels_for(request.tags, request.token))
        if count > MAX_LABELS:
            raise InvalidInput("tags", f"{count} labels; a GCP instance carries at most {MAX_LABELS}")
        if not self._config.disable_cvm:
            machine_type = request.spec.instance_type or self._config.machine_type
            problem = confidential_support_problem(machine_type, self._config.confidential_type)
            if problem:
                raise InvalidInput("instance_type", problem)

    async def _port(self) -> ComputePort:
        """The Compute Engine port, built on first use (credentials may query the metadata server)."""
        if self._compute is not None:
            return self._compute
        async with self._ready:
            if self._compute is None:
                self._compute = await asyncio.to_thread(self._compute_factory, self._config)
        return self._compute

    async def _tag_port(self) -> TagPort:
        if self._tag_factory is None:
            raise PermanentProviderError("TAGS tag bindings are not available in this set-up")
        async with self._ready:
            if self._tags is None:
                self._tags = await asyncio.to_thread(self._tag_factory, self._config)
        return self._tags

    async def _retried(self, call: Callable[[], Awaitable[T]]) -> T:
        async for attempt in self._retry.retrying():
            with attempt:
                return await call()
        raise AssertionError("unreachable: tenacity reraises the last error")

    async def _boot_disk(self, compute: ComputePort, image_url: str) -> BootDisk:
        """The boot disk for ``image_url``; ``images.get`` runs once per image."""
        if image_url not in self._disks:
            async with self._disk_lock:
                if image_url not in self._disks:
                    image = await self._retried(lambda: compute.get_image(image_url))
                    self._disks[image_url] = boot_disk(self._config, image_url, image)
        return self._disks[image_url]

    async def _resolve_tags(self, pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], str]:
        if not pairs:
            return {}
        key = tuple(pairs)
        if key not in self._tag_values:
            tags = await self._tag_port()
            self._tag_values[key] = await self._retried(lambda: tags.resolve(pairs))
        return self._tag_values[key]

    async def _bind_tags(self, numeric_id: str, tag_values: Mapping[tuple[str, str], str]) -> None:
        tags = await self._tag_port()
        for value in tag_values.values():
            await self._retried(functools.partial(tags.bind, numeric_id, value))

    # -- create ------------------------------------------------------------------------------------------

    async def _insert(self, compute: ComputePort, body: Json, request: CreateRequest) -> Json:
        """instances.insert under the retry policy (one requestId throughout), then its address."""
        request_id = insert_request_id(request.token)
        try:
            operation = await self._retried(lambda: compute.insert_instance(body, request_id))
            operation = await self._finished(compute, operation)
        except NameInUse:
            return await self._adopt(compute, request)
        errors = operation_errors(operation)
        if any(e.get("code") == "RESOURCE_ALREADY_EXISTS" for e in errors):
            return await self._adopt(compute, request)
        if errors:
            raise operation_error(operation, f"creating {request.name}")
        return await self._address(compute, request.name)

    async def _adopt(self, compute: ComputePort, request: CreateRequest) -> Json:
        """The instance holding our name: ours if it carries this request's token label."""
        try:
            raw = await self._retried(lambda: compute.get_instance(request.name))
        except InstanceNotFound as exc:
            raise TemporaryProviderError(f"instance {request.name} was in use, now gone; retry") from exc
        labels = raw.get("labels") or {}
        if labels.get(TOKEN_LABEL) == token_digest(request.token):
            logger.info("adopting instance %s created earlier for this request", request.name)
            return await self._address(compute, request.name, raw)
        if labels.get(OWNER_LABELS[TAG_SANDBOX]) == encode_value(request.sandbox_id):
            raise TemporaryProviderError(
                f"instance {request.name} of an earlier attempt for this sandbox still exists "
                f"({raw.get('status')}); retry once it is deleted"
            )
        raise PermanentProviderError(
            f"an instance named {request.name} already exists in {self._config.zone} "
            "and is not this sandbox's"
        )

    async def _finished(self, compute: ComputePort, operation: Json) -> Json:
        """Wait (``zoneOperations.wait``, bounded) until ``operation`` is DONE."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait.operation_timeout
        name = str(operation.get("name", ""))
        while operation.get("status") != "DONE":
            if loop.time() > deadline:
                raise TemporaryProviderError(
                    f"operation {name} still {operation.get('status')} after "
                    f"{self._wait.operation_timeout:.0f}s"
                )
            operation = await self._retried(lambda: compute.wait_operation(name))
        return operation

    async def _address(self, compute: ComputePort, name: str, raw: Json | None = None) -> Json:
        """The instance once the address the daemon dials is known (bounded polls)."""
        public = self._config.use_public_ip
        started = time.monotonic()
        for poll in range(self._wait.attempts):
            if raw is None or poll > 0:
                raw = await self._retried(lambda: compute.get_instance(name))
            if raw.get("status") in GONE_STATUSES:
                raise PermanentProviderError(f"instance {name} is {raw.get('status')}")
            if is_address_ready(raw, public):
                return raw
            await self._wait.sleep(self._wait.interval)
        kind = "external IP" if public else "internal IP"
        raise TemporaryProviderError(f"instance {name} has no {kind} after {time.monotonic() - started:.0f}s")
