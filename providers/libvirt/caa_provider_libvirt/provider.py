"""``LibvirtProvider``: one domain per pod, created exactly once, deleted without leftovers.

Idempotency comes from names libvirt already keeps unique per host: the domain
UUID is ``uuid5(token)`` and the domain name is the request's name, so a retried
create (lost response, daemon restart) finds the domain it made before and
finishes the job instead of making a second one.

Order of work, chosen so that a crash at any point leaves something findable:

create: define the domain (it carries the owner tags) -> root volume -> seed ISO
        -> start -> wait for an IP.  Nothing is made before the domain exists, and
        every volume is named after it.
delete: power off -> delete its volumes -> undefine (with NVRAM).  The domain goes
        last, so an interrupted delete can always be finished by the next one.

A failure after the domain is defined is raised as it is; the domain stays
listable by its owner tags (and its id is ``uuid5(token)``), so the daemon deletes
it.  An IP that never comes raises ``InstanceAddressTimeout`` carrying the
instance.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from cloud_api_adaptor.aio import KeyedLocks
from cloud_api_adaptor.errors import (
    InstanceNotFound,
    InvalidInput,
    PermanentProviderError,
    ProviderError,
    TemporaryProviderError,
)
from cloud_api_adaptor.provider import CheckResult, CreateRequest, Instance, IPAddress, Provider

from .config import LibvirtConfig
from .domain import (
    DomainFacts,
    DomainSpec,
    build_domain_xml,
    choose_domain_type,
    domain_mac,
    domain_uuid,
    guest_domain_types,
    host_arch,
    iso_volume_name,
    iso_volume_xml,
    launch_security_types,
    read_domain,
    root_volume_name,
    root_volume_xml,
)
from .port import AddressSource, LibvirtPort
from .seed_iso import build_cidata_iso

logger = logging.getLogger(__name__)

GIB = 1024**3
DEFAULT_ADDRESS_SOURCES: tuple[AddressSource, ...] = ("lease", "arp", "agent")
#: the first pause of the IP wait when the caller gives a deadline (seconds; doubled up to the interval)
FIRST_PAUSE = 0.25
_AUTO_LAUNCH_SECURITY = {"s390x": "s390-pv", "x86_64": "sev-snp"}


class InstanceAddressTimeout(TemporaryProviderError):
    """The domain runs but reported no IP address in time.

    ``instance`` (when set) names the domain so the caller can delete it; it is
    also listable by its owner tags.
    """

    def __init__(self, message: str, instance: Instance | None = None) -> None:
        super().__init__(message)
        self.instance = instance


@dataclass(frozen=True)
class HostFacts:
    """What the libvirt host decides about every domain: guest arch, domain type, launch security."""

    arch: str
    domain_type: str
    launch_security: str


class LibvirtProvider(Provider):
    """Pod VMs as libvirt domains with a qcow2 overlay root disk and a cidata seed ISO."""

    max_name_length = 63
    userdata_limit = None

    def __init__(
        self,
        config: LibvirtConfig,
        port: LibvirtPort,
        *,
        address_sources: Sequence[AddressSource] = DEFAULT_ADDRESS_SOURCES,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.default_image = config.vol_name
        self._port = port
        self._sources = tuple(address_sources)
        self._sleep = sleep
        self._clock = clock
        self._monotonic = monotonic
        self._host: HostFacts | None = None
        self._host_lock = asyncio.Lock()
        self._locks = KeyedLocks()

    # -- host facts --------------------------------------------------------------------------------

    async def host_facts(self) -> HostFacts:
        """Architecture, domain type and launch security, read from libvirt once and cached."""
        async with self._host_lock:
            if self._host is None:
                caps = await self._port.host_capabilities()
                arch = self.config.arch or host_arch(caps)
                if arch not in {"x86_64", "aarch64", "s390x"}:
                    raise PermanentProviderError(
                        f"libvirt host architecture {arch!r} is not supported (set LIBVIRT_ARCH to "
                        "x86_64, aarch64 or s390x)"
                    )
                domain_type = self.config.domain_type or choose_domain_type(guest_domain_types(caps, arch))
                if not domain_type:
                    raise PermanentProviderError(f"libvirt offers no hvm guests for {arch}")
                launch = await self._launch_security(arch, domain_type)
                self._host = HostFacts(arch=arch, domain_type=domain_type, launch_security=launch)
                logger.info(
                    "libvirt guests: arch %s, domain type %s, launch security %s",
                    arch,
                    domain_type,
                    launch or "none",
                )
            return self._host

    async def _launch_security(self, arch: str, domain_type: str) -> str:
        if self.config.disable_cvm:
            return ""
        wanted = self.config.launch_security or _AUTO_LAUNCH_SECURITY.get(arch, "")
        if not wanted:
            raise PermanentProviderError(
                f"DISABLECVM=false, but there is no launch security for {arch} guests; set DISABLECVM=true"
            )
        if _AUTO_LAUNCH_SECURITY.get(arch) != wanted:
            raise PermanentProviderError(f"LIBVIRT_LAUNCH_SECURITY={wanted} does not apply to {arch} guests")
        supported = launch_security_types(await self._port.domain_capabilities(arch, domain_type))
        if wanted not in supported:
            raise PermanentProviderError(
                f"DISABLECVM=false needs {wanted} launch security, which this libvirt host does not "
                f"report as supported (domain capabilities for {arch}/{domain_type}: "
                f"{', '.join(sorted(supported)) or 'none'}); set DISABLECVM=true to run plain VMs"
            )
        return wanted

    # -- create ------------------------------------------------------------------------------------

    async def create_instance(self, request: CreateRequest) -> Instance:
        _check_name("name", request.name)
        base_name = request.spec.image or self.config.vol_name
        _check_name("image", base_name)
        dom_id = domain_uuid(request.token)
        async with self._locks.hold(dom_id):
            host = await self.host_facts()
            record = await self._port.domain_by_uuid(dom_id)
            if record is None:
                clash = await self._port.domain_by_name(request.name)
                if clash is not None:
                    raise PermanentProviderError(
                        f"a domain named {request.name!r} already exists (uuid {clash.uuid}) "
                        "and was not created for this request"
                    )
                spec = self._domain_spec(request, dom_id, host)
                record = await self._port.define_domain(build_domain_xml(spec))
                logger.info("defined domain %s (%s)", request.name, dom_id)
            else:
                logger.info("domain %s (%s) already exists; resuming its creation", record.name, dom_id)
            facts = read_domain(record.xml)
            if not facts.ours:
                raise PermanentProviderError(
                    f"domain {record.name} ({dom_id}) was not created by the adaptor"
                )
            if not record.active:
                await self._prepare_volumes(facts, base_name, request.userdata.encode())
                await self._port.start_domain(dom_id)
                logger.info("started domain %s (%s)", facts.name, dom_id)
            instance = Instance(
                id=dom_id, name=facts.name, tags=dict(facts.tags), created_at=facts.created_at
            )
            waited_from = self._monotonic()
            ips, looks = await self._wait_for_addresses(dom_id, facts.macs, request.deadline)
            if not ips:
                raise InstanceAddressTimeout(
                    f"domain {facts.name} ({dom_id}) reported no IP address in "
                    f"{self._monotonic() - waited_from:.0f}s ({looks} looks)",
                    instance,
                )
            return Instance(
                id=dom_id, name=facts.name, ips=ips, tags=instance.tags, created_at=facts.created_at
            )

    def _domain_spec(self, request: CreateRequest, dom_id: str, host: HostFacts) -> DomainSpec:
        cfg = self.config
        return DomainSpec(
            name=request.name,
            uuid=dom_id,
            arch=host.arch,
            domain_type=host.domain_type,
            # each of vcpus and memory from the pod when it asks, else the configured default
            vcpus=request.spec.vcpus or cfg.vcpus,
            memory_mib=request.spec.memory_mib or cfg.memory_mib,
            pool=cfg.pool,
            network=cfg.network,
            mac=domain_mac(dom_id),
            created_at=self._clock(),
            tags=dict(request.tags),
            cpuset=cfg.cpuset,
            efi_firmware=cfg.efi_firmware,
            launch_security=host.launch_security,
        )

    async def _prepare_volumes(self, facts: DomainFacts, base_name: str, userdata: bytes) -> None:
        """Root overlay (kept if it exists: a retry reuses it) and a freshly uploaded seed ISO."""
        pool = self._pool_of(facts)
        root_name = root_volume_name(facts.name)
        if await self._port.volume(pool, root_name) is None:
            base = await self._port.volume(pool, base_name)
            if base is None:
                raise PermanentProviderError(f"base volume {base_name!r} not found in storage pool {pool!r}")
            capacity = max(self.config.root_disk_gib * GIB, base.capacity)
            await self._port.create_volume(pool, root_volume_xml(root_name, capacity, base.path, base.format))
        # the ISO may be half-written by an interrupted attempt: always write it anew
        iso = build_cidata_iso(facts.name, userdata)
        iso_name = iso_volume_name(facts.name)
        await self._port.delete_volume(pool, iso_name)
        await self._port.create_volume(pool, iso_volume_xml(iso_name, len(iso)))
        await self._port.upload_volume(pool, iso_name, iso)

    def _pool_of(self, facts: DomainFacts) -> str:
        """The pool the domain's disks live in (as defined), else the configured one."""
        mine = {root_volume_name(facts.name), iso_volume_name(facts.name)}
        for pool, volume in facts.volumes:
            if volume in mine and pool:
                return pool
        return self.config.pool

    async def _wait_for_addresses(
        self, dom_id: str, macs: Sequence[str], deadline: float | None
    ) -> tuple[tuple[IPAddress, ...], int]:
        """The domain's addresses, and how many looks it took; () when none came in time.

        With the caller's deadline (``time.monotonic()``) the looks go on until it passes,
        the pauses growing from ``FIRST_PAUSE`` to ``LIBVIRT_IP_INTERVAL``: a VM that boots
        in 2 s is seen at once, one that boots in 70 s under emulation is still waited for.
        Without one there are ``LIBVIRT_IP_ATTEMPTS`` looks ``LIBVIRT_IP_INTERVAL`` apart.
        """
        policy = self.config.address_policy
        pause = min(FIRST_PAUSE, policy.interval) if deadline is not None else policy.interval
        looks = 0
        while True:
            looks += 1
            ips = await self._look_for_addresses(dom_id, macs)
            if ips:
                return ips, looks
            if deadline is None:
                if looks >= policy.attempts:
                    return (), looks
                await self._sleep(pause)
                continue
            remaining = deadline - self._monotonic()
            if remaining <= 0:
                return (), looks
            await self._sleep(min(pause, remaining))
            pause = min(pause * 2, policy.interval)

    async def _look_for_addresses(self, dom_id: str, macs: Sequence[str]) -> tuple[IPAddress, ...]:
        """Ask each address source in turn; the first that knows an address of our NIC answers."""
        for source in self._sources:
            found = await self._port.interface_addresses(dom_id, source)
            ips = [a.address for a in found if (not macs or a.mac in macs) and _usable(a.address)]
            if ips:
                ordered = sorted(dict.fromkeys(ips), key=lambda ip: ip.version)  # IPv4 first
                logger.info("domain %s has address %s (from %s)", dom_id, ordered[0], source)
                return tuple(ordered)
        return ()

    # -- delete ------------------------------------------------------------------------------------

    async def delete_instance(self, instance_id: str) -> None:
        try:
            dom_id = str(uuid.UUID(instance_id))
        except ValueError:
            logger.info("delete: %r is not a libvirt domain UUID; nothing to delete", instance_id)
            return
        async with self._locks.hold(dom_id):
            record = await self._port.domain_by_uuid(dom_id)
            if record is None:
                logger.info("delete: domain %s does not exist", dom_id)
                return
            facts = read_domain(record.xml)
            if not facts.ours:
                raise PermanentProviderError(f"refusing to delete domain {facts.name} ({dom_id}): not ours")
            try:
                await self._port.stop_domain(dom_id)
                for pool, volume in self._owned_volumes(facts):
                    if await self._port.delete_volume(pool, volume):
                        logger.info("deleted volume %s/%s of domain %s", pool, volume, facts.name)
                await self._port.undefine_domain(dom_id)
            except InstanceNotFound:
                return  # deleted meanwhile by someone else: done
            logger.info("deleted domain %s (%s)", facts.name, dom_id)

    def _owned_volumes(self, facts: DomainFacts) -> list[tuple[str, str]]:
        """Volumes we created for this domain: named after it, wherever its disks point (never the base)."""
        mine = {root_volume_name(facts.name), iso_volume_name(facts.name)}
        found = [(pool, vol) for pool, vol in facts.volumes if vol in mine]
        found += [(self.config.pool, vol) for vol in sorted(mine)]
        return list(dict.fromkeys(found))

    # -- list, verify --------------------------------------------------------------------------------

    async def list_instances(self, owner_tags: Mapping[str, str]) -> Sequence[Instance]:
        instances = []
        for record in await self._port.list_domains():
            facts = read_domain(record.xml)
            if facts.ours and all(facts.tags.get(k) == v for k, v in owner_tags.items()):
                instances.append(
                    Instance(
                        id=record.uuid, name=facts.name, tags=dict(facts.tags), created_at=facts.created_at
                    )
                )
        return instances

    async def verify(self) -> Sequence[CheckResult]:
        cfg = self.config
        checks: list[CheckResult] = []

        async def check(name: str, probe: Callable[[], Awaitable[str]]) -> None:
            try:
                checks.append(CheckResult(name, True, await probe()))
            except ProviderError as exc:
                checks.append(CheckResult(name, False, str(exc)))

        async def connection() -> str:
            await self._port.host_capabilities()
            return f"connected to {cfg.uri}"

        async def exists(found: Awaitable[object], what: str) -> str:
            if not await found:
                raise PermanentProviderError(f"{what} does not exist")
            return f"{what} exists"

        async def guests() -> str:
            host = await self.host_facts()
            security = host.launch_security or ("disabled (DISABLECVM=true)" if cfg.disable_cvm else "none")
            return f"{host.arch} guests, domain type {host.domain_type}, launch security {security}"

        await check("libvirt connection", connection)
        await check("storage pool", lambda: exists(self._port.pool_exists(cfg.pool), f"pool {cfg.pool!r}"))
        await check(
            "base volume",
            lambda: exists(
                self._port.volume(cfg.pool, cfg.vol_name), f"volume {cfg.vol_name!r} in {cfg.pool!r}"
            ),
        )
        await check(
            "network", lambda: exists(self._port.network_exists(cfg.network), f"network {cfg.network!r}")
        )
        await check("guest type and launch security", guests)
        return checks

    async def aclose(self) -> None:
        await self._port.aclose()


def _check_name(field: str, value: str) -> None:
    if not value or "/" in value or len(value) > 255:
        raise InvalidInput(field, f"invalid libvirt {field} {value!r}")


def _usable(address: IPAddress) -> bool:
    return not (address.is_loopback or address.is_link_local or address.is_unspecified)
