"""``PowervsProvider``: one Power Virtual Server instance per pod sandbox, created once, always deleted.

PowerVS has no idempotency token, so create first lists the workspace's
instances and looks for one named ``request.name``: an instance whose user tags
carry this request's token tag (set in the create call itself) is adopted; one
of an earlier StartVM attempt of the same sandbox is deleted and waited out;
anything else of that name is refused with its id.  Creates of one name are
serialised in the process.

Then create polls until the instance is ``ACTIVE`` within
``POWERVS_BUILD_TIMEOUT`` (backoff capped at 5 s).  ``ERROR`` or the timeout
deletes the instance and fails (the Go version returned success with no IP).
The address: the instance's ``fixed`` networks, else the DHCP server's lease for
the instance's MAC, polled within a bound.  A delete of an instance that is
already gone succeeds.

Owner tags are ``userTags`` of the create call, so the instance is findable
from birth; ``list_instances`` is one Global Search query.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence

from caa_provider_ibmcloud.retry import RetryPolicy, WaitPolicy
from caa_provider_ibmcloud.tags import read_owner_tags, request_tags, search_query, token_tag

from caa_provider_ibmcloud_powervs.client import PowervsPorts, Shape
from caa_provider_ibmcloud_powervs.config import PowervsConfig
from caa_provider_ibmcloud_powervs.shapes import (
    MAX_NAME_LENGTH,
    USERDATA_BASE64_LIMIT,
    USERDATA_LIMIT,
    Size,
    create_body,
    fixed_ips,
    lease_ip,
    macs,
    size_for,
)
from cloud_api_adaptor.aio import KeyedLocks, shielded
from cloud_api_adaptor.errors import (
    InstanceNotFound,
    InvalidInput,
    PermanentProviderError,
    TemporaryProviderError,
)
from cloud_api_adaptor.provider import (
    TAG_CLUSTER,
    TAG_SANDBOX,
    CheckResult,
    CreateRequest,
    Instance,
    IPAddress,
    Provider,
)

logger = logging.getLogger(__name__)

#: longest pause between build polls (the Go version's cap)
BUILD_POLL_CAP = 5.0


PortsFactory = Callable[[PowervsConfig], PowervsPorts]


class PowervsProvider(Provider):
    """Pod VMs as PowerVS instances (see the module docstring for the guarantees)."""

    max_name_length = MAX_NAME_LENGTH
    userdata_limit = USERDATA_LIMIT

    def __init__(
        self,
        config: PowervsConfig,
        *,
        ports_factory: PortsFactory,
        close: Callable[[], object] | None = None,
        retry: RetryPolicy | None = None,
        build_poll: float = 1.0,
        address_wait: WaitPolicy | None = None,
        gone_wait: WaitPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._ports_factory = ports_factory
        self._retry = retry or RetryPolicy()
        self._build_poll = build_poll
        # the Go version waits up to 750 s for a DHCP lease
        self._address_wait = address_wait or WaitPolicy(interval=5.0, attempts=150)
        self._gone_wait = gone_wait or WaitPolicy(interval=2.0, attempts=90)
        self._clock = clock
        self._ports: PowervsPorts | None = None
        self._launching = KeyedLocks()
        self.default_instance_type = config.default_shape
        self.instance_types = ()
        self.default_image = config.image_id

    def _port(self) -> PowervsPorts:
        if self._ports is None:
            self._ports = self._ports_factory(self._config)
        return self._ports

    # -- Provider ----------------------------------------------------------------------------------------

    async def create_instance(self, request: CreateRequest) -> Instance:
        size = len(request.userdata.encode())
        if size > USERDATA_LIMIT:
            raise InvalidInput(
                "userdata",
                f"userdata is {size} bytes; PowerVS takes at most {USERDATA_BASE64_LIMIT} bytes of base64 "
                f"({USERDATA_LIMIT} bytes before encoding)",
            )
        if len(request.name) > MAX_NAME_LENGTH:
            raise InvalidInput(
                "name", f"server name {request.name!r} is longer than {MAX_NAME_LENGTH} characters"
            )
        shape = size_for(self._config, request.spec)
        async with self._launching.hold(request.name):
            instance_id = await self._launch(request, shape)
        try:
            raw = await self._wait_active(instance_id, request.deadline)
            ips = await self._addresses(raw)
        except BaseException:
            logger.warning("instance %s did not come up; deleting it", instance_id)
            await shielded(self._delete_quietly(instance_id))
            raise
        logger.info("created instance %s (%s) at %s", instance_id, request.name, ips[0])
        return Instance(instance_id, request.name, ips, dict(request.tags))

    async def delete_instance(self, instance_id: str) -> None:
        client = self._port().client
        try:
            await self._retry.run(lambda: client.delete_instance(instance_id))
        except InstanceNotFound:
            logger.info("instance %s already gone", instance_id)
            return
        logger.info("deleted instance %s", instance_id)

    async def list_instances(self, owner_tags: Mapping[str, str]) -> Sequence[Instance]:
        if not owner_tags:
            raise InvalidInput("owner_tags", "refusing to list every instance in the account")
        platform = self._port().platform
        query = search_query(owner_tags, ("pvm-instance",), "power-iaas")
        hits = await self._retry.run(lambda: platform.search(query))
        return [
            Instance(h.resource_id, h.name, tags=read_owner_tags(h.tags, owner_tags))
            for h in hits
            if f":{self._config.service_instance_id}:" in h.crn
        ]

    async def verify(self) -> Sequence[CheckResult]:
        from caa_provider_ibmcloud_powervs.doctor import run_checks

        return await run_checks(self._config, self._port, self._retry)

    async def aclose(self) -> None:
        if self._ports is not None:
            await self._ports.aclose()
            self._ports = None

    # -- create ------------------------------------------------------------------------------------------

    async def _launch(self, request: CreateRequest, size: Size) -> str:
        client = self._port().client
        tags = [*request_tags(request.tags), token_tag(request.token)]
        body = create_body(self._config, request, size, request.spec.image or self._config.image_id, tags)
        async for attempt in self._retry.retrying():
            with attempt:
                found = await self._claim_name(request)
                if found:
                    return found
                created = await client.create_instance(body)
                if len(created) != 1 or not created[0].get("pvmInstanceID"):
                    raise PermanentProviderError(f"powervs create: unexpected answer {created!r}")
                return str(created[0]["pvmInstanceID"])
        raise AssertionError("unreachable: tenacity reraises the last error")

    async def _claim_name(self, request: CreateRequest) -> str:
        """The id of the instance named ``request.name`` if it is this request's; "" when the name is free."""
        client = self._port().client
        named = [i for i in await client.list_instances() if i.get("serverName") == request.name]
        if not named:
            return ""
        instance_id = str(named[0]["pvmInstanceID"])
        try:
            raw = await client.get_instance(instance_id)
        except InstanceNotFound:
            return ""
        attached = {str(t).lower() for t in raw.get("userTags", []) or []}
        if token_tag(request.token) in attached:
            logger.info("adopting instance %s made earlier for this request", instance_id)
            return instance_id
        owners = read_owner_tags(attached)
        if owners.get(TAG_SANDBOX) != request.sandbox_id or owners.get(TAG_CLUSTER) != request.tags.get(
            TAG_CLUSTER
        ):
            raise PermanentProviderError(
                f"an instance named {request.name} ({instance_id}) already exists and does not belong to "
                f"sandbox {request.sandbox_id} of this cluster; delete it or rename the pod"
            )
        logger.info("deleting instance %s of an earlier attempt", instance_id)
        await self.delete_instance(instance_id)
        await self._wait_gone(instance_id)
        return ""

    async def _wait_gone(self, instance_id: str) -> None:
        client = self._port().client
        await self._gone_wait.until_gone(self._retry, lambda: client.get_instance(instance_id), instance_id)

    async def _wait_active(self, instance_id: str, caller_deadline: float | None) -> Shape:
        """Poll until ACTIVE within the build timeout and the caller's deadline; ERROR or a timeout fails."""
        client = self._port().client
        deadline = self._clock() + self._config.build_timeout
        if caller_deadline is not None:
            deadline = min(deadline, self._clock() + max(0.0, caller_deadline - time.monotonic()))
        delay = self._build_poll
        while True:
            raw = await self._retry.run(lambda: client.get_instance(instance_id))
            status = str(raw.get("status", "")).upper()
            if status == "ACTIVE":
                return raw
            if status == "ERROR":
                fault = (raw.get("fault") or {}).get("message", "")
                raise PermanentProviderError(
                    f"instance {instance_id} failed to build{': ' + fault if fault else ''}"
                )
            if self._clock() >= deadline:
                raise TemporaryProviderError(
                    f"instance {instance_id} is still {status or 'unknown'} after POWERVS_BUILD_TIMEOUT "
                    f"({self._config.build_timeout:g}s); it was deleted"
                )
            await self._address_wait.sleep(min(delay, BUILD_POLL_CAP, max(0.0, deadline - self._clock())))
            delay = min(delay * 2, BUILD_POLL_CAP)

    async def _addresses(self, raw: Shape) -> tuple[IPAddress, ...]:
        """Fixed networks' addresses, else the DHCP leases of the instance's MACs (bounded wait)."""
        ips = fixed_ips(raw, self._config.use_public_ip)
        if ips:
            return ips
        client = self._port().client
        wanted = macs(raw)
        wait = self._address_wait
        for poll in range(wait.attempts):
            servers = await self._retry.run(client.list_dhcp_servers)
            found: list[IPAddress] = []
            for server in servers:
                network = str((server.get("network") or {}).get("id", ""))
                if network not in wanted:
                    continue
                detail = await self._retry.run(lambda s=server: client.get_dhcp_server(str(s["id"])))  # type: ignore[misc]
                address = lease_ip(detail, wanted[network])
                if address is not None:
                    found.append(address)
            if found:
                return tuple(found)
            if poll + 1 < wait.attempts:
                await wait.sleep(wait.interval)
        raise TemporaryProviderError(
            f"instance {raw.get('pvmInstanceID')} has no address: no fixed network and no DHCP lease for "
            f"{', '.join(wanted.values()) or 'its interfaces'}"
        )

    async def _delete_quietly(self, instance_id: str) -> None:
        try:
            await self.delete_instance(instance_id)
        except Exception as exc:  # the daemon's cleanup finds it by its tags and tries again
            logger.error("deleting instance %s failed: %s", instance_id, exc)
