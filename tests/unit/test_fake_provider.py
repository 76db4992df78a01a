"""FakeProvider passes the provider contract, and its scripted faults and options behave."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest

from cloud_api_adaptor.errors import ConfigError, PermanentProviderError, TemporaryProviderError
from cloud_api_adaptor.options import load
from cloud_api_adaptor.provider import CreateRequest, InstanceSpec, Provider, ProviderContext, ProviderPlugin
from cloud_api_adaptor.testing.contract import ProviderContract
from cloud_api_adaptor.testing.fake_provider import PLUGIN, FakeConfig, FakeProvider


def _fake(provider: Provider) -> FakeProvider:
    assert isinstance(provider, FakeProvider)
    return provider


class TestFakeProviderContract(ProviderContract):
    async def make_provider(self) -> Provider:
        return FakeProvider(FakeConfig(userdata_limit=1024))

    async def cloud_instance_ids(self, provider: Provider) -> set[str]:
        return set(_fake(provider).instances)

    def cloud_calls(self, provider: Provider) -> int | None:
        return _fake(provider).calls

    def broken_cloud(self, provider: Provider) -> AbstractAsyncContextManager[None]:
        @asynccontextmanager
        async def outage() -> AsyncIterator[None]:
            _fake(provider).outage = True
            try:
                yield
            finally:
                _fake(provider).outage = False

        return outage()


def _request(token: str = "tok-1", sandbox: str = "sb-1") -> CreateRequest:
    return CreateRequest(
        name="podvm-a",
        sandbox_id=sandbox,
        token=token,
        spec=InstanceSpec(instance_type="fake.medium"),
        userdata="#cloud-config\n",
        tags={"owner": "me"},
    )


@pytest.mark.asyncio
async def test_scripted_create_faults_raise_then_creates_succeed() -> None:
    fake = FakeProvider()
    fake.fail_next_creates(1)
    fake.fail_next_creates(1, permanent=True)
    with pytest.raises(TemporaryProviderError):
        await fake.create_instance(_request())
    with pytest.raises(PermanentProviderError):
        await fake.create_instance(_request())
    instance = await fake.create_instance(_request())
    assert list(fake.instances) == [instance.id]
    assert [op.outcome for op in fake.operations] == [
        "fault:TemporaryProviderError",
        "fault:PermanentProviderError",
        "created",
    ]


@pytest.mark.asyncio
async def test_a_lost_create_response_leaves_one_instance_that_the_retry_returns() -> None:
    fake = FakeProvider()
    fake.lose_next_create_responses(1)
    with pytest.raises(TemporaryProviderError):
        await fake.create_instance(_request())
    assert len(fake.instances) == 1
    retried = await fake.create_instance(_request())
    assert list(fake.instances) == [retried.id]


@pytest.mark.asyncio
async def test_scripted_delete_fault_keeps_the_instance() -> None:
    fake = FakeProvider()
    instance = await fake.create_instance(_request())
    fake.fail_next_deletes(1)
    with pytest.raises(TemporaryProviderError):
        await fake.delete_instance(instance.id)
    assert instance.id in fake.instances
    await fake.delete_instance(instance.id)
    assert fake.instances == {}


@pytest.mark.asyncio
async def test_concurrent_creates_with_one_token_share_one_instance() -> None:
    fake = FakeProvider(FakeConfig(create_delay=0.01))
    results = await asyncio.gather(*(fake.create_instance(_request()) for _ in range(5)))
    assert len({r.id for r in results}) == 1
    assert len(fake.instances) == 1


@pytest.mark.asyncio
async def test_fixed_ip_is_given_to_every_instance() -> None:
    fake = FakeProvider(FakeConfig(fixed_ip=ipaddress.ip_address("127.0.0.1")))
    a = await fake.create_instance(_request("t1", "s1"))
    b = await fake.create_instance(_request("t2", "s2"))
    assert a.ips == b.ips == (ipaddress.ip_address("127.0.0.1"),)


@pytest.mark.asyncio
async def test_configured_ips_are_handed_out_and_reused_after_delete() -> None:
    ips = (ipaddress.ip_address("192.0.2.10"), ipaddress.ip_address("192.0.2.11"))
    fake = FakeProvider(FakeConfig(instance_ips=ips))
    a = await fake.create_instance(_request("t1", "s1"))
    b = await fake.create_instance(_request("t2", "s2"))
    assert (a.ips[0], b.ips[0]) == ips
    with pytest.raises(TemporaryProviderError):
        await fake.create_instance(_request("t3", "s3"))
    await fake.delete_instance(a.id)
    c = await fake.create_instance(_request("t4", "s4"))
    assert c.ips[0] == ips[0]


def _context(tmp_path: Path) -> ProviderContext:
    return ProviderContext(node_name="n", cluster_id="c", state_dir=tmp_path, work_dir=tmp_path)


@pytest.mark.asyncio
async def test_plugin_builds_a_fake_from_environment_values(tmp_path: Path) -> None:
    assert isinstance(PLUGIN, ProviderPlugin)
    env = {"FAKE_INSTANCE_IP": "127.0.0.1", "FAKE_CREATE_DELAY": "10ms", "FAKE_USERDATA_LIMIT": "2048"}
    provider = PLUGIN.build(load(PLUGIN.settings_class, env), _context(tmp_path))
    assert provider.config.create_delay == pytest.approx(0.01)
    assert provider.userdata_limit == 2048
    instance = await provider.create_instance(_request())
    assert instance.ips == (ipaddress.ip_address("127.0.0.1"),)


def test_plugin_rejects_a_bad_ip_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        PLUGIN.build(load(PLUGIN.settings_class, {"FAKE_INSTANCE_IPS": "192.0.2.1,nope"}), _context(tmp_path))
    assert info.value.key == "FAKE_INSTANCE_IPS"
