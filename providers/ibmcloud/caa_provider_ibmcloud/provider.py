"""``IbmcloudProvider``: one VPC virtual server instance per pod sandbox, created once, always deleted.

The VPC API has no idempotency token, but an instance name is unique in its
region.  So create first looks the name up, and:
- adopts an instance made for this very request (its boot volume carries the
  request token's tag from birth): a retry after a lost response, or after a
  daemon restart, finds it instead of making a second one;
- waits out (deleting it first if need be) an instance an earlier StartVM
  attempt of the same sandbox left;
- refuses, with the owner named, an instance of the same name that is not this
  sandbox's.
A create answered "name in use" means a lost response raced us: the next
attempt finds the instance by name.  Creates of one name are serialised in the
process.

Owner tags go on the boot volume in the create call itself, and on the instance
through Global Tagging right after (with the Go version's
``coco-pod-vm:<cluster>`` tag and the user's TAGS); ``list_instances`` is one
Global Search query for instances or boot volumes carrying them, so an instance
whose own tagging never happened is still found.

The image is the first configured one whose architecture matches the profile's;
amd64 profiles get TDX and secure boot unless DISABLECVM, s390x profiles get
Secure Execution from their image.  The address: create waits (bounded) until no
interface reports 0.0.0.0 any more.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence

from caa_provider_ibmcloud.config import IbmcloudConfig
from caa_provider_ibmcloud.errors import NameInUse
from caa_provider_ibmcloud.ibmports import Ports
from caa_provider_ibmcloud.platform import SearchHit
from caa_provider_ibmcloud.retry import RetryPolicy, WaitPolicy
from caa_provider_ibmcloud.shapes import (
    GONE_STATES,
    USERDATA_LIMIT,
    Placement,
    ProfileSpec,
    Shape,
    addresses_ready,
    boot_volume_id,
    image_architecture,
    instance_prototype,
    parse_time,
    pick_placement,
    profile_spec,
    to_instance,
)
from caa_provider_ibmcloud.tags import (
    go_cluster_tag,
    read_owner_tags,
    request_tags,
    search_query,
    token_tag,
)
from cloud_api_adaptor.aio import KeyedLocks
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
    InstanceSpec,
    InstanceTypeInfo,
    Provider,
)

logger = logging.getLogger(__name__)

PortsFactory = Callable[[IbmcloudConfig], Ports]


class IbmcloudProvider(Provider):
    """Pod VMs as VPC virtual server instances (see the module docstring for the guarantees)."""

    max_name_length = 63
    userdata_limit = USERDATA_LIMIT

    def __init__(
        self,
        config: IbmcloudConfig,
        *,
        ports_factory: PortsFactory,
        cluster_id: str = "",
        retry: RetryPolicy | None = None,
        address_wait: WaitPolicy | None = None,
        gone_wait: WaitPolicy | None = None,
    ) -> None:
        self._config = config
        self._ports_factory = ports_factory
        self._cluster_id = config.ibmcloud_cluster_id or cluster_id
        self._retry = retry or RetryPolicy()
        self._address_wait = address_wait or WaitPolicy(interval=2.0, attempts=90)
        self._gone_wait = gone_wait or WaitPolicy(interval=2.0, attempts=90)
        self._ports: Ports | None = None
        self._profiles: dict[str, ProfileSpec] = {}
        self._image_arch: dict[str, str] = {}
        self._launching = KeyedLocks()
        self.default_instance_type = config.profile_name
        self.instance_types = config.profile_list
        self.default_image = ""  # chosen per profile architecture from IBMCLOUD_PODVM_IMAGE_ID

    def _port(self) -> Ports:
        if self._ports is None:
            self._ports = self._ports_factory(self._config)
        return self._ports

    # -- Provider ----------------------------------------------------------------------------------------

    async def check_spec(self, spec: InstanceSpec) -> None:
        """At CreateVM: the profile exists, has TDX when CVM is on, and an image of its architecture is set.

        The profiles and images were read at start-up, so this makes no cloud call.
        """
        profile = await self._profile_for(spec.instance_type or self._config.profile_name)
        await self._image_for(profile, spec.image)

    async def create_instance(self, request: CreateRequest) -> Instance:
        """Create (or adopt) the instance named ``request.name`` and return it with its addresses."""
        size = len(request.userdata.encode())
        if size > USERDATA_LIMIT:
            raise InvalidInput(
                "userdata",
                f"userdata is {size} bytes; IBM Cloud VPC accepts at most {USERDATA_LIMIT} (64 KB)",
            )
        profile = await self._profile_for(request.spec.instance_type or self._config.profile_name)
        image = await self._image_for(profile, request.spec.image)
        ports = self._port()
        async with self._launching.hold(request.name):
            raw = await self._launch(request, profile, image)
        instance_id = str(raw["id"])
        tags = [*request_tags(request.tags), *self._go_tags()]
        await self._retry.run(lambda: ports.platform.attach_tags(str(raw["crn"]), tags))
        if not addresses_ready(raw):
            raw = await self._wait_for_addresses(instance_id, request.deadline)
        instance = to_instance(raw, request.tags)
        logger.info("created instance %s (%s) at %s", instance.id, instance.name, instance.ips[0])
        return instance

    async def delete_instance(self, instance_id: str) -> None:
        """Delete the instance (its boot volume goes with it); gone counts as deleted."""
        ports = self._port()
        try:
            await self._retry.run(lambda: ports.vpc.delete_instance(instance_id))
        except InstanceNotFound:
            logger.info("instance %s already gone", instance_id)
            return
        logger.info("deleting instance %s", instance_id)

    async def list_instances(self, owner_tags: Mapping[str, str]) -> Sequence[Instance]:
        """Instances (or boot volumes of instances) carrying every owner tag: one Global Search query."""
        if not owner_tags:
            raise InvalidInput("owner_tags", "refusing to list every instance in the account")
        ports = self._port()
        query = search_query(owner_tags, ("instance", "volume"), "is")
        hits = await self._retry.run(lambda: ports.platform.search(query))
        found: dict[str, Instance] = {}
        named = {h.name for h in hits if h.type == "instance"}
        for hit in hits:
            if hit.type == "instance":
                found[hit.resource_id] = self._hit_instance(hit, owner_tags)
            elif hit.name not in named:
                instance = await self._instance_of_volume(hit, owner_tags)
                if instance is not None:
                    found.setdefault(instance.id, instance)
        return list(found.values())

    async def describe_instance_types(self) -> Sequence[InstanceTypeInfo]:
        """The allowed profiles' vCPUs, memory and GPUs, sorted by (GPUs, memory, vCPUs)."""
        specs = [await self._profile_for(name) for name in self._config.allowed_profiles]
        archs = {await self._arch_of(i) for i in self._config.image_id}
        for spec in specs:
            if spec.architecture not in archs:
                logger.warning("profile %s (%s): no image of that architecture", spec.name, spec.architecture)
        return sorted((s.info() for s in specs), key=lambda i: (i.gpus, i.memory_mib, i.vcpus))

    async def verify(self) -> Sequence[CheckResult]:
        """The ``doctor`` checks: one result per check, failures explained."""
        from caa_provider_ibmcloud.doctor import run_checks

        return await run_checks(self._config, self._port, self._retry, self._profile_for, self._arch_of)

    async def aclose(self) -> None:
        if self._ports is not None:
            await self._ports.aclose()
            self._ports = None

    # -- profile and image -------------------------------------------------------------------------------

    async def _profile_for(self, name: str) -> ProfileSpec:
        """The profile's catalogue entry, read once per profile."""
        if not name:
            raise InvalidInput(
                "instance_type",
                "no instance profile: set IBMCLOUD_PODVM_INSTANCE_PROFILE_NAME "
                "or annotate the pod's machine_type",
            )
        if name not in self._profiles:
            ports = self._port()
            try:
                raw = await self._retry.run(lambda: ports.vpc.get_profile(name))
            except InstanceNotFound as exc:
                raise InvalidInput("instance_type", f"instance profile {name!r} does not exist") from exc
            self._profiles[name] = profile_spec(raw)
        return self._profiles[name]

    async def _arch_of(self, image_id: str) -> str:
        if image_id not in self._image_arch:
            ports = self._port()
            try:
                raw = await self._retry.run(lambda: ports.vpc.get_image(image_id))
            except InstanceNotFound as exc:
                raise PermanentProviderError(f"image {image_id} does not exist") from exc
            self._image_arch[image_id] = image_architecture(raw)
        return self._image_arch[image_id]

    async def _image_for(self, profile: ProfileSpec, requested: str) -> str:
        """The pod's image if it named one (checked), else the first configured one of the profile's arch."""
        wants_tdx = not self._config.disable_cvm and profile.architecture == "amd64"
        if wants_tdx and "tdx" not in profile.confidential_modes:
            modes = ", ".join(profile.confidential_modes) or "none"
            raise InvalidInput(
                "instance_type",
                f"instance profile {profile.name} does not support TDX (modes: {modes}); "
                "pick a TDX profile or set DISABLECVM=true",
            )
        candidates = (requested,) if requested else self._config.image_id
        archs = {image: await self._arch_of(image) for image in candidates}
        for image, arch in archs.items():
            if arch == profile.architecture:
                return image
        listing = ", ".join(f"{i} ({a or 'unknown'})" for i, a in archs.items())
        raise InvalidInput(
            "image",
            f"no pod VM image for architecture {profile.architecture or 'unknown'} of instance profile "
            f"{profile.name}: {'the requested image is' if requested else 'IBMCLOUD_PODVM_IMAGE_ID has'} "
            f"{listing}",
        )

    # -- create ------------------------------------------------------------------------------------------

    def _go_tags(self) -> list[str]:
        return [go_cluster_tag(self._cluster_id)] if self._cluster_id else []

    async def _launch(self, request: CreateRequest, profile: ProfileSpec, image: str) -> Shape:
        """Find-by-name, else create, under the retry policy; "name in use" sends it round again."""
        placement = pick_placement(self._config)
        async for attempt in self._retry.retrying():
            with attempt:
                found = await self._claim_name(request)
                if found is not None:
                    return found
                return await self._create(request, profile, image, placement)
        raise AssertionError("unreachable: tenacity reraises the last error")

    async def _create(
        self, request: CreateRequest, profile: ProfileSpec, image: str, placement: Placement
    ) -> Shape:
        vpc = self._port().vpc
        volume_tags = [*request_tags(request.tags), token_tag(request.token)]
        body = instance_prototype(self._config, request, profile, image, volume_tags, placement)
        try:
            return await vpc.create_instance(body)
        except NameInUse as exc:
            # a create whose answer we lost made it: the next attempt adopts it by name
            raise TemporaryProviderError(f"instance name {request.name} taken meanwhile: {exc}") from exc
        except PermanentProviderError as exc:
            if not placement.host_id or not self._config.dedicated_host_group_ids:
                raise
            logger.warning(
                "create on dedicated host %s failed (%s); trying the host group", placement.host_id, exc
            )
            group = Placement(group_id=self._config.dedicated_host_group_ids[0])
            body = instance_prototype(self._config, request, profile, image, volume_tags, group)
            return await vpc.create_instance(body)

    async def _claim_name(self, request: CreateRequest) -> Shape | None:
        """The instance already named ``request.name`` if it is this request's; None when the name is free."""
        vpc = self._port().vpc
        found = await vpc.instances_named(request.name)
        if not found:
            return None
        raw = found[0]
        volume_tags = await self._boot_volume_tags(raw)
        if token_tag(request.token) in volume_tags:
            logger.info("adopting instance %s made earlier for this request", raw["id"])
            return raw
        owners = read_owner_tags(volume_tags)
        if owners.get(TAG_SANDBOX) != request.sandbox_id or owners.get(TAG_CLUSTER) != request.tags.get(
            TAG_CLUSTER
        ):
            raise PermanentProviderError(
                f"an instance named {request.name} ({raw['id']}) already exists and does not belong to "
                f"sandbox {request.sandbox_id} of this cluster; delete it or rename the pod"
            )
        # an earlier StartVM attempt of this sandbox: it must be gone before the name is free
        logger.info("waiting for instance %s of an earlier attempt to go", raw["id"])
        if str(raw.get("status")) != "deleting":
            await self.delete_instance(str(raw["id"]))
        await self._wait_gone(str(raw["id"]))
        return None

    async def _boot_volume_tags(self, raw: Mapping[str, object]) -> set[str]:
        volume_id = boot_volume_id(raw)
        if not volume_id:
            return set()
        vpc = self._port().vpc
        try:
            volume = await vpc.get_volume(volume_id)
        except InstanceNotFound:
            return set()
        return {str(t).lower() for t in volume.get("user_tags", []) or []}

    async def _wait_gone(self, instance_id: str) -> None:
        vpc = self._port().vpc
        await self._gone_wait.until_gone(self._retry, lambda: vpc.get_instance(instance_id), instance_id)

    async def _wait_for_addresses(self, instance_id: str, deadline: float | None) -> Shape:
        """Poll (bounded, never past the caller's deadline) until every interface has an address."""
        vpc = self._port().vpc
        wait = self._address_wait
        for poll in range(wait.attempts):
            if deadline is not None and poll and time.monotonic() >= deadline:
                raise TemporaryProviderError(
                    f"instance {instance_id} has no IP address by the StartVM deadline"
                )
            raw = await self._retry.run(lambda: vpc.get_instance(instance_id))
            status = str(raw.get("status", ""))
            if status in GONE_STATES:
                reasons = "; ".join(str(r.get("message", "")) for r in raw.get("status_reasons", []) or [])
                raise PermanentProviderError(
                    f"instance {instance_id} is {status}{': ' + reasons if reasons else ''}"
                )
            if addresses_ready(raw):
                return raw
            if poll + 1 < wait.attempts:
                await wait.sleep(wait.interval)
        raise TemporaryProviderError(
            f"instance {instance_id} has no IP address after {wait.attempts * wait.interval:.0f}s"
        )

    # -- list --------------------------------------------------------------------------------------------

    @staticmethod
    def _hit_instance(hit: SearchHit, asked: Mapping[str, str]) -> Instance:
        return Instance(
            id=hit.resource_id,
            name=hit.name,
            tags=read_owner_tags(hit.tags, asked),
            created_at=parse_time(hit.creation_date),
        )

    async def _instance_of_volume(self, hit: SearchHit, asked: Mapping[str, str]) -> Instance | None:
        """The instance a tagged boot volume belongs to (its instance was never tagged itself)."""
        vpc = self._port().vpc
        found = await self._retry.run(lambda: vpc.instances_named(hit.name))
        for raw in found:
            if boot_volume_id(raw) == hit.resource_id and str(raw.get("status")) != "deleting":
                return to_instance(raw, read_owner_tags(hit.tags, asked))
        return None
