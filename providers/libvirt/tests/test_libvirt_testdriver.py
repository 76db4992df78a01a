"""The provider against libvirt's own test driver (``test:///default``): no daemon needed.

The test driver keeps domains, pools and volumes in memory, shared by every
connection of the process while one stays open, and reset when the last one
closes.  Each test holds a ``cloud`` connection of its own: it seeds the base
volume and is how the tests look at what the provider left, without asking the
provider.  The driver cannot stream uploads, so ``TestDriverConnection`` keeps
the uploaded ISO in memory (read back with pycdlib).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager
from typing import Any

import libvirt
import pytest
import pytest_asyncio
from caa_provider_libvirt import AddressPolicy, InstanceAddressTimeout, LibvirtConfig, LibvirtProvider
from caa_provider_libvirt.domain import domain_uuid, read_domain
from caa_provider_libvirt.seed_iso import read_cidata_iso
from caa_provider_libvirt.testing import TestDriverConnection

from cloud_api_adaptor.errors import (
    InstanceNotFound,
    InvalidInput,
    PermanentProviderError,
    TemporaryProviderError,
)
from cloud_api_adaptor.provider import TAG_SANDBOX, CreateRequest, InstanceSpec, Provider
from cloud_api_adaptor.testing.contract import ProviderContract

URI = "test:///default"
POOL = "default-pool"
BASE = "podvm-base.qcow2"
GIB = 1024**3
NOW = 1_800_000_000.5


def base_config(**changes: Any) -> LibvirtConfig:
    settings: dict[str, Any] = {
        "uri": URI,
        "pool": POOL,
        "network": "default",
        "vol_name": BASE,
        "efi_firmware": "",
        "arch": "x86_64",  # the test driver's host is i686 and offers only domain type 'test'
        "domain_type": "test",
        "address_policy": AddressPolicy(attempts=3, interval=0.5),
    }
    settings.update(changes)
    return LibvirtConfig(**settings)


class Sleeps:
    """An injected sleep that records and returns at once."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@contextlib.contextmanager
def cloud_connection(base_gib: int = 2) -> Iterator[Any]:
    libvirt.registerErrorHandler(lambda _c, _e: None, None)
    conn = libvirt.open(URI)
    try:
        pool = conn.storagePoolLookupByName(POOL)
        if BASE not in pool.listVolumes():
            pool.createXML(
                f"<volume><name>{BASE}</name><capacity unit='GiB'>{base_gib}</capacity>"
                "<target><format type='qcow2'/></target></volume>",
                0,
            )
        yield conn
    finally:
        conn.close()


def volumes(cloud: Any) -> set[str]:
    return set(cloud.storagePoolLookupByName(POOL).listVolumes())


def our_domains(cloud: Any) -> dict[str, Any]:
    return {d.UUIDString(): d for d in cloud.listAllDomains() if read_domain(d.XMLDesc(0)).ours}


def request(token: str = "token-a", *, name: str = "podvm-a", **changes: Any) -> CreateRequest:
    fields: dict[str, Any] = {
        "name": name,
        "sandbox_id": f"sandbox-{token}",
        "token": token,
        "spec": InstanceSpec(),
        "userdata": "#cloud-config\nwrite_files: []\n",
        "tags": {"caa.confidentialcontainers.org/node": "node-a", TAG_SANDBOX: f"sandbox-{token}"},
    }
    fields.update(changes)
    return CreateRequest(**fields)


# -- the shared contract ---------------------------------------------------------------------------


class TestLibvirtContract(ProviderContract):
    unknown_instance_id = "00000000-0000-4000-8000-000000000000"

    @pytest.fixture(autouse=True)
    def _cloud(self) -> Iterator[None]:
        with cloud_connection() as conn:
            self.cloud = conn
            yield

    async def make_provider(self) -> Provider:
        self.port = TestDriverConnection(URI)
        return LibvirtProvider(base_config(), self.port, sleep=Sleeps())

    async def cloud_instance_ids(self, provider: Provider) -> set[str]:
        return {d.UUIDString() for d in self.cloud.listAllDomains()}

    def broken_cloud(self, provider: Provider) -> AbstractAsyncContextManager[None] | None:
        port = self.port

        @contextlib.asynccontextmanager
        async def broken() -> AsyncIterator[None]:
            await port.aclose()
            port.broken = True
            try:
                yield
            finally:
                port.broken = False

        return broken()


# -- libvirt specifics ------------------------------------------------------------------------------


@pytest.fixture
def cloud() -> Iterator[Any]:
    with cloud_connection() as conn:
        yield conn


@pytest.fixture
def port() -> TestDriverConnection:
    return TestDriverConnection(URI)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest_asyncio.fixture
async def provider(cloud: Any, port: TestDriverConnection, sleeps: Sleeps) -> AsyncIterator[LibvirtProvider]:
    provider = LibvirtProvider(base_config(), port, sleep=sleeps, clock=lambda: NOW)
    try:
        yield provider
    finally:
        for instance in await provider.list_instances({}):
            await provider.delete_instance(instance.id)
        await provider.aclose()


@pytest.mark.asyncio
async def test_create_defines_and_starts_a_domain_with_its_two_volumes(
    provider: LibvirtProvider, cloud: Any, port: TestDriverConnection
) -> None:
    instance = await provider.create_instance(request())
    assert instance.id == domain_uuid("token-a")
    assert instance.name == "podvm-a"
    assert [str(ip) for ip in instance.ips] == ["192.168.122.23"]  # the test driver's canned lease
    dom = cloud.lookupByUUIDString(instance.id)
    assert dom.isActive()
    assert volumes(cloud) == {BASE, "podvm-a-root.qcow2", "podvm-a-cloudinit.iso"}
    root = cloud.storagePoolLookupByName(POOL).storageVolLookupByName("podvm-a-root.qcow2")
    assert "<path>/default-pool/podvm-base.qcow2</path>" in root.XMLDesc(0)
    assert root.info()[1] == 10 * GIB  # max(LIBVIRT_ROOT_DISK_SIZE, base capacity 2 GiB)
    label, files = read_cidata_iso(port.uploads[(POOL, "podvm-a-cloudinit.iso")])
    assert label == "cidata"
    assert files["user-data"] == b"#cloud-config\nwrite_files: []\n"
    assert files["meta-data"] == b"local-hostname: podvm-a\n"


@pytest.mark.asyncio
async def test_root_disk_is_never_smaller_than_the_base_volume(
    cloud: Any, port: TestDriverConnection
) -> None:
    cloud.storagePoolLookupByName(POOL).storageVolLookupByName(BASE).delete(0)
    with cloud_connection(base_gib=12) as cloud12:
        provider = LibvirtProvider(base_config(), port, sleep=Sleeps())
        try:
            await provider.create_instance(request())
            root = cloud12.storagePoolLookupByName(POOL).storageVolLookupByName("podvm-a-root.qcow2")
            assert root.info()[1] == 12 * GIB
        finally:
            await provider.delete_instance(domain_uuid("token-a"))
            await provider.aclose()


@pytest.mark.asyncio
async def test_a_retried_create_returns_the_same_domain_and_reuses_its_volumes(
    provider: LibvirtProvider, cloud: Any
) -> None:
    first = await provider.create_instance(request())
    root_key = cloud.storagePoolLookupByName(POOL).storageVolLookupByName("podvm-a-root.qcow2").key()
    second = await provider.create_instance(request())
    assert second == first
    assert list(our_domains(cloud)) == [first.id]
    assert volumes(cloud) == {BASE, "podvm-a-root.qcow2", "podvm-a-cloudinit.iso"}
    assert cloud.storagePoolLookupByName(POOL).storageVolLookupByName("podvm-a-root.qcow2").key() == root_key


@pytest.mark.asyncio
async def test_create_finishes_a_domain_left_defined_by_a_crash(
    provider: LibvirtProvider, cloud: Any
) -> None:
    # as if the daemon died right after defining the domain: powered off, no volumes yet
    instance = await provider.create_instance(request())
    dom = cloud.lookupByUUIDString(instance.id)
    dom.destroy()
    pool = cloud.storagePoolLookupByName(POOL)
    for name in ("podvm-a-root.qcow2", "podvm-a-cloudinit.iso"):
        pool.storageVolLookupByName(name).delete(0)
    again = await provider.create_instance(request())
    assert again.id == instance.id
    assert cloud.lookupByUUIDString(instance.id).isActive()
    assert volumes(cloud) == {BASE, "podvm-a-root.qcow2", "podvm-a-cloudinit.iso"}


@pytest.mark.asyncio
async def test_concurrent_creates_with_one_token_make_one_domain(
    provider: LibvirtProvider, cloud: Any
) -> None:
    import asyncio

    results = await asyncio.gather(*(provider.create_instance(request()) for _ in range(4)))
    assert len({r.id for r in results}) == 1
    assert list(our_domains(cloud)) == [results[0].id]


@pytest.mark.asyncio
async def test_delete_removes_the_domain_and_every_volume_it_made(
    provider: LibvirtProvider, cloud: Any
) -> None:
    instance = await provider.create_instance(request())
    await provider.delete_instance(instance.id)
    assert our_domains(cloud) == {}
    assert volumes(cloud) == {BASE}
    await provider.delete_instance(instance.id)  # gone counts as deleted


@pytest.mark.asyncio
async def test_delete_finishes_a_delete_interrupted_after_the_volumes(
    provider: LibvirtProvider, cloud: Any
) -> None:
    instance = await provider.create_instance(request())
    cloud.lookupByUUIDString(instance.id).destroy()
    pool = cloud.storagePoolLookupByName(POOL)
    pool.storageVolLookupByName("podvm-a-root.qcow2").delete(0)
    await provider.delete_instance(instance.id)
    assert our_domains(cloud) == {}
    assert volumes(cloud) == {BASE}


@pytest.mark.asyncio
async def test_delete_refuses_a_domain_the_adaptor_did_not_make(
    provider: LibvirtProvider, cloud: Any
) -> None:
    foreign = cloud.lookupByName("test")  # the test driver's own domain
    with pytest.raises(PermanentProviderError, match="not ours"):
        await provider.delete_instance(foreign.UUIDString())
    assert cloud.lookupByName("test").isActive()


@pytest.mark.asyncio
async def test_delete_of_something_that_is_not_a_uuid_is_a_no_op(provider: LibvirtProvider) -> None:
    await provider.delete_instance("i-0123456789abcdef0")


@pytest.mark.asyncio
async def test_owner_tags_and_creation_time_round_trip_through_the_domain(provider: LibvirtProvider) -> None:
    tags = {"caa.confidentialcontainers.org/cluster": "c1", "caa.confidentialcontainers.org/node": "n1"}
    created = await provider.create_instance(request(tags={**tags, TAG_SANDBOX: "s1", "env": "a=b, c"}))
    await provider.create_instance(request("token-b", name="podvm-b", tags={**tags, TAG_SANDBOX: "s2"}))
    listed = await provider.list_instances({**tags, TAG_SANDBOX: "s1"})
    assert [i.id for i in listed] == [created.id]
    assert dict(listed[0].tags) == {**tags, TAG_SANDBOX: "s1", "env": "a=b, c"}
    assert listed[0].created_at == NOW
    assert listed[0].name == "podvm-a"
    assert len(await provider.list_instances(tags)) == 2
    assert await provider.list_instances({**tags, "caa.confidentialcontainers.org/node": "n2"}) == []


@pytest.mark.asyncio
async def test_list_ignores_domains_the_adaptor_did_not_make(provider: LibvirtProvider) -> None:
    assert await provider.list_instances({}) == []


@pytest.mark.asyncio
async def test_vcpus_and_memory_come_from_the_pod_or_the_config_independently(
    cloud: Any, port: TestDriverConnection
) -> None:
    provider = LibvirtProvider(base_config(vcpus=3, memory_mib=1024), port, sleep=Sleeps())
    try:
        a = await provider.create_instance(request(spec=InstanceSpec(vcpus=6)))
        b = await provider.create_instance(
            request("token-b", name="podvm-b", spec=InstanceSpec(memory_mib=512))
        )
        info_a = cloud.lookupByUUIDString(a.id).info()  # [state, maxMem KiB, mem KiB, vcpus, cputime]
        info_b = cloud.lookupByUUIDString(b.id).info()
        assert (info_a[3], info_a[1]) == (6, 1024 * 1024)
        assert (info_b[3], info_b[1]) == (3, 512 * 1024)
    finally:
        for i in await provider.list_instances({}):
            await provider.delete_instance(i.id)
        await provider.aclose()


@pytest.mark.asyncio
async def test_the_image_annotation_names_another_base_volume(provider: LibvirtProvider, cloud: Any) -> None:
    with pytest.raises(PermanentProviderError, match=r"other-base\.qcow2"):
        await provider.create_instance(request(spec=InstanceSpec(image="other-base.qcow2")))
    # the domain is left for the caller to delete (it carries the owner tags) ...
    left = await provider.list_instances({TAG_SANDBOX: "sandbox-token-a"})
    assert [i.id for i in left] == [domain_uuid("token-a")]
    await provider.delete_instance(left[0].id)
    # ... and then nothing remains
    assert our_domains(cloud) == {} and volumes(cloud) == {BASE}


@pytest.mark.asyncio
async def test_a_name_taken_by_another_domain_is_refused_before_anything_is_made(
    provider: LibvirtProvider, cloud: Any
) -> None:
    with pytest.raises(PermanentProviderError, match="already exists"):
        await provider.create_instance(request(name="test"))
    assert our_domains(cloud) == {} and volumes(cloud) == {BASE}


@pytest.mark.parametrize("name", ["", "a/b"])
@pytest.mark.asyncio
async def test_unusable_names_are_invalid_input(provider: LibvirtProvider, name: str) -> None:
    with pytest.raises(InvalidInput):
        await provider.create_instance(request(name=name))


@pytest.mark.asyncio
async def test_the_ip_wait_retries_until_an_address_appears(
    provider: LibvirtProvider, port: TestDriverConnection, sleeps: Sleeps
) -> None:
    port.silent_address_lookups = (
        4  # attempt 1: lease, arp, agent silent; attempt 2: lease silent, arp answers
    )
    instance = await provider.create_instance(request())
    assert [str(ip) for ip in instance.ips] == ["192.168.122.23"]
    assert sleeps.calls == [0.5]


class FakeTime:
    """A monotonic clock that only the injected sleep moves."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.mark.asyncio
async def test_with_a_deadline_the_ip_wait_backs_off_and_outlasts_twenty_times_three_seconds(
    cloud: Any, port: TestDriverConnection
) -> None:
    # a VM under emulation that gets its lease after about 70 s: the old fixed 20 x 3 s gave up at 60 s
    fake = FakeTime()
    provider = LibvirtProvider(
        base_config(address_policy=AddressPolicy(attempts=20, interval=3.0)),
        port,
        sleep=fake.sleep,
        monotonic=fake,
    )
    try:
        silent_looks = 26
        port.silent_address_lookups = silent_looks * 3  # lease, arp and agent each answer nothing
        instance = await provider.create_instance(request(deadline=fake.now + 300))
        assert [str(ip) for ip in instance.ips] == ["192.168.122.23"]
        assert fake.sleeps[:5] == [0.25, 0.5, 1.0, 2.0, 3.0]  # backoff, then the interval
        assert set(fake.sleeps[4:]) == {3.0} and len(fake.sleeps) == silent_looks
        assert sum(fake.sleeps) > 60
    finally:
        await provider.aclose()


@pytest.mark.asyncio
async def test_the_ip_wait_ends_at_the_callers_deadline_and_reports_the_instance(
    cloud: Any, port: TestDriverConnection
) -> None:
    fake = FakeTime()
    provider = LibvirtProvider(base_config(), port, sleep=fake.sleep, monotonic=fake)
    try:
        port.silent_address_lookups = 10_000
        with pytest.raises(InstanceAddressTimeout, match=r"no IP address in 5s \(\d+ looks\)") as info:
            await provider.create_instance(request(deadline=fake.now + 5))
        assert sum(fake.sleeps) == pytest.approx(5.0)  # the last pause is cut to the deadline
        assert fake.sleeps[-1] < 0.5
        assert info.value.instance is not None
        await provider.delete_instance(info.value.instance.id)
        assert our_domains(cloud) == {} and volumes(cloud) == {BASE}
        # a deadline already past: one look, no pause
        fake.sleeps.clear()
        with pytest.raises(InstanceAddressTimeout, match=r"\(1 looks\)") as again:
            await provider.create_instance(request("token-b", name="podvm-b", deadline=fake.now - 1))
        assert fake.sleeps == []
        assert again.value.instance is not None
        await provider.delete_instance(again.value.instance.id)
    finally:
        await provider.aclose()


@pytest.mark.asyncio
async def test_an_ip_that_never_comes_raises_with_the_instance_so_it_can_be_deleted(
    provider: LibvirtProvider, port: TestDriverConnection, sleeps: Sleeps, cloud: Any
) -> None:
    port.silent_address_lookups = 10_000
    with pytest.raises(InstanceAddressTimeout) as info:
        await provider.create_instance(request())
    assert isinstance(info.value, TemporaryProviderError)
    assert sleeps.calls == [0.5, 0.5]  # 3 attempts
    leaked = info.value.instance
    assert leaked is not None and leaked.id == domain_uuid("token-a") and leaked.ips == ()
    assert [i.id for i in await provider.list_instances({TAG_SANDBOX: "sandbox-token-a"})] == [leaked.id]
    await provider.delete_instance(leaked.id)
    assert our_domains(cloud) == {} and volumes(cloud) == {BASE}


@pytest.mark.asyncio
async def test_confidential_vms_on_a_host_without_sev_snp_fail_clearly(
    cloud: Any, port: TestDriverConnection
) -> None:
    provider = LibvirtProvider(base_config(disable_cvm=False), port, sleep=Sleeps())
    try:
        with pytest.raises(PermanentProviderError, match=r"sev-snp.*DISABLECVM=true"):
            await provider.create_instance(request())
        assert our_domains(cloud) == {}
        checks = {c.name: c for c in await provider.verify()}
        assert not checks["guest type and launch security"].ok
        assert "sev-snp" in checks["guest type and launch security"].detail
    finally:
        await provider.aclose()


@pytest.mark.asyncio
async def test_verify_names_what_is_missing(cloud: Any, port: TestDriverConnection) -> None:
    provider = LibvirtProvider(base_config(network="nonet", vol_name="missing.qcow2"), port, sleep=Sleeps())
    try:
        checks = {c.name: c for c in await provider.verify()}
    finally:
        await provider.aclose()
    assert checks["libvirt connection"].ok and checks["storage pool"].ok
    assert not checks["network"].ok and "nonet" in checks["network"].detail
    assert not checks["base volume"].ok and "missing.qcow2" in checks["base volume"].detail


@pytest.mark.asyncio
async def test_an_unreachable_daemon_is_a_temporary_error_and_the_connection_heals(
    provider: LibvirtProvider, port: TestDriverConnection
) -> None:
    port.broken = True
    with pytest.raises(TemporaryProviderError):
        await provider.list_instances({})
    port.broken = False
    assert await provider.list_instances({}) == []


@pytest.mark.asyncio
async def test_a_missing_pool_is_a_permanent_error(cloud: Any, port: TestDriverConnection) -> None:
    provider = LibvirtProvider(base_config(pool="nopool"), port, sleep=Sleeps())
    try:
        with pytest.raises(PermanentProviderError, match="nopool"):
            await provider.create_instance(request(token=str(uuid.uuid4())))
        for instance in await provider.list_instances({}):
            await provider.delete_instance(instance.id)
        assert our_domains(cloud) == {}
    finally:
        await provider.aclose()


@pytest.mark.asyncio
async def test_libvirt_errors_are_translated_at_the_port(cloud: Any, port: TestDriverConnection) -> None:
    try:
        with pytest.raises(InstanceNotFound):
            await port.start_domain("00000000-0000-4000-8000-000000000000")
        with pytest.raises(PermanentProviderError) as info:
            await port.define_domain("<domain type='test'><name>bad</name></domain>")  # no <os>: refused
        assert not isinstance(info.value, InstanceNotFound)
        assert isinstance(info.value.__cause__, libvirt.libvirtError)
        assert await port.domain_by_uuid("00000000-0000-4000-8000-000000000000") is None
        assert await port.volume(POOL, "nope.qcow2") is None
        assert await port.delete_volume(POOL, "nope.qcow2") is False
        assert await port.delete_volume("nopool", "nope.qcow2") is False
    finally:
        await port.aclose()
