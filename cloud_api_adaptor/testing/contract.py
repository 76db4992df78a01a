"""The provider contract as a pytest suite every provider's tests subclass.

The contract is the one documented in ``cloud_api_adaptor.provider``: idempotent
create by token, idempotent delete, listing by owner tags, userdata refused
before any cloud call, only our error classes.  A provider's test module does::

    class TestAwsContract(ProviderContract):
        unknown_instance_id = "i-0123456789abcdef0"

        async def make_provider(self) -> Provider: ...
        async def cloud_instance_ids(self, provider: Provider) -> set[str]: ...
        def fault_proxy(self) -> FaultProxy | None: ...  # optional: counts calls, breaks the cloud

``make_provider`` may use attributes an autouse fixture of the subclass set on
``self`` (pytest binds fixture methods and tests to the same instance), or the
subclass may override the ``provider`` fixture outright.  ``cloud_instance_ids``
must look at the cloud directly, not through the provider under test, so a
provider that lists wrongly cannot vouch for itself.

Every test uses owner tags with a fresh cluster id, so tests can share one
emulator; the fixture deletes whatever the test left under that cluster id.
"""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import pytest
import pytest_asyncio

from cloud_api_adaptor.errors import AdaptorError, InvalidInput, ProviderError
from cloud_api_adaptor.provider import (
    TAG_CLUSTER,
    TAG_NODE,
    TAG_SANDBOX,
    CheckResult,
    CreateRequest,
    Instance,
    InstanceSpec,
    InstanceTypeInfo,
    Provider,
)
from cloud_api_adaptor.testing.faultproxy import Fault, FaultProxy


class ProviderContract:
    """Base class of every provider's contract tests (not collected itself: no ``Test`` prefix)."""

    #: a well-formed id for this cloud that names no instance
    unknown_instance_id: str = "does-not-exist"
    #: whether ``verify`` is expected to pass every check in the test set-up
    expect_verify_ok: bool = True

    # -- hooks a provider's suite implements -------------------------------------------------------------

    async def make_provider(self) -> Provider:
        """Build the provider under test, wired to the test's cloud."""
        raise NotImplementedError

    async def cloud_instance_ids(self, provider: Provider) -> set[str]:
        """Ids of the instances the cloud holds now (not terminated), read without the provider."""
        raise NotImplementedError

    def fault_proxy(self) -> FaultProxy | None:
        """The proxy the provider's calls go through, if any: it counts them and can break the cloud."""
        return None

    def cloud_calls(self, provider: Provider) -> int | None:
        """How many API calls the cloud has seen so far, or None if the suite cannot tell."""
        proxy = self.fault_proxy()
        return None if proxy is None else proxy.count()

    def broken_cloud(self, provider: Provider) -> AbstractAsyncContextManager[None] | None:
        """A context in which every cloud call fails (503s through the fault proxy); None skips that test."""
        proxy = self.fault_proxy()
        if proxy is None:
            return None

        @asynccontextmanager
        async def unavailable() -> AsyncIterator[None]:
            proxy.add_rule("*", Fault.UNAVAILABLE, times=1_000_000)
            try:
                yield
            finally:
                proxy.clear_rules()

        return unavailable()

    # -- helpers -----------------------------------------------------------------------------------------

    cluster_id: str = ""

    def owner_tags(self, node: str = "node-a", sandbox_id: str | None = None) -> dict[str, str]:
        """Owner tags under this test's cluster id (unique per test)."""
        tags = {TAG_CLUSTER: self.cluster_id, TAG_NODE: node}
        if sandbox_id is not None:
            tags[TAG_SANDBOX] = sandbox_id
        return tags

    def make_request(
        self,
        provider: Provider,
        *,
        token: str | None = None,
        node: str = "node-a",
        userdata: str = "#cloud-config\n",
        spec: InstanceSpec | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> CreateRequest:
        """A valid request with a fresh sandbox id and token unless given."""
        sandbox_id = uuid.uuid4().hex + uuid.uuid4().hex
        return CreateRequest(
            name=f"podvm-contract-{sandbox_id[:8]}",
            sandbox_id=sandbox_id,
            token=token if token is not None else f"{sandbox_id}-0",
            spec=spec
            or InstanceSpec(instance_type=provider.default_instance_type, image=provider.default_image),
            userdata=userdata,
            tags=dict(tags) if tags is not None else self.owner_tags(node, sandbox_id),
        )

    @pytest_asyncio.fixture
    async def provider(self) -> AsyncIterator[Provider]:
        """The provider under test; afterwards, every instance the test left is deleted."""
        self.cluster_id = f"contract-{uuid.uuid4().hex[:12]}"
        provider = await self.make_provider()
        try:
            yield provider
        finally:
            try:
                for instance in await provider.list_instances({TAG_CLUSTER: self.cluster_id}):
                    await provider.delete_instance(instance.id)
            finally:
                await provider.aclose()

    # -- the contract ------------------------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_create_returns_an_instance_with_id_name_and_ip(self, provider: Provider) -> None:
        request = self.make_request(provider)
        instance = await provider.create_instance(request)
        assert isinstance(instance, Instance)
        assert instance.id
        assert instance.name == request.name
        assert instance.ips, "the daemon dials ips[0]"
        assert all(isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address) for ip in instance.ips)
        assert instance.id in await self.cloud_instance_ids(provider)

    @pytest.mark.asyncio
    async def test_create_twice_with_one_token_gives_one_instance(self, provider: Provider) -> None:
        request = self.make_request(provider)
        first = await provider.create_instance(request)
        second = await provider.create_instance(request)
        assert second.id == first.id
        mine = {i.id for i in await provider.list_instances(self.owner_tags(sandbox_id=request.sandbox_id))}
        assert mine == {first.id}
        assert first.id in await self.cloud_instance_ids(provider)

    @pytest.mark.asyncio
    async def test_different_tokens_give_different_instances(self, provider: Provider) -> None:
        a = await provider.create_instance(self.make_request(provider))
        b = await provider.create_instance(self.make_request(provider))
        assert a.id != b.id
        assert {a.id, b.id} <= await self.cloud_instance_ids(provider)

    @pytest.mark.asyncio
    async def test_delete_removes_the_instance(self, provider: Provider) -> None:
        request = self.make_request(provider)
        instance = await provider.create_instance(request)
        await provider.delete_instance(instance.id)
        assert instance.id not in await self.cloud_instance_ids(provider)
        assert instance.id not in {i.id for i in await provider.list_instances(self.owner_tags())}

    @pytest.mark.asyncio
    async def test_delete_twice_succeeds(self, provider: Provider) -> None:
        instance = await provider.create_instance(self.make_request(provider))
        await provider.delete_instance(instance.id)
        await provider.delete_instance(instance.id)
        assert instance.id not in await self.cloud_instance_ids(provider)

    @pytest.mark.asyncio
    async def test_delete_of_an_unknown_id_succeeds(self, provider: Provider) -> None:
        await provider.delete_instance(self.unknown_instance_id)

    @pytest.mark.asyncio
    async def test_list_finds_own_instances_by_owner_tags_and_not_others(self, provider: Provider) -> None:
        mine = await provider.create_instance(self.make_request(provider, node="node-a"))
        theirs = await provider.create_instance(self.make_request(provider, node="node-b"))
        listed = await provider.list_instances(self.owner_tags("node-a"))
        assert {i.id for i in listed} == {mine.id}
        assert all(i.tags.get(TAG_NODE) == "node-a" for i in listed)
        assert {i.id for i in await provider.list_instances(self.owner_tags("node-b"))} == {theirs.id}

    @pytest.mark.asyncio
    async def test_list_by_sandbox_tag_finds_exactly_that_sandbox(self, provider: Provider) -> None:
        request = self.make_request(provider)
        instance = await provider.create_instance(request)
        await provider.create_instance(self.make_request(provider))
        listed = await provider.list_instances(self.owner_tags(sandbox_id=request.sandbox_id))
        assert [i.id for i in listed] == [instance.id]
        assert listed[0].tags.get(TAG_SANDBOX) == request.sandbox_id

    @pytest.mark.asyncio
    async def test_verify_returns_one_result_per_check(self, provider: Provider) -> None:
        results = await provider.verify()
        assert results
        assert all(isinstance(r, CheckResult) and r.name for r in results)
        assert len({r.name for r in results}) == len(results), "check names are unique"
        if self.expect_verify_ok:
            assert [r for r in results if not r.ok] == []

    @pytest.mark.asyncio
    async def test_userdata_over_the_limit_is_refused_before_any_cloud_call(self, provider: Provider) -> None:
        limit = provider.userdata_limit
        if limit is None:
            pytest.skip("provider has no userdata limit")
        request = self.make_request(provider, userdata="x" * (limit + 1))
        calls_before = self.cloud_calls(provider)
        with pytest.raises(InvalidInput) as info:
            await provider.create_instance(request)
        assert info.value.field == "userdata"
        assert self.cloud_calls(provider) == calls_before
        assert await provider.list_instances(self.owner_tags(sandbox_id=request.sandbox_id)) == []

    @pytest.mark.asyncio
    async def test_userdata_at_the_limit_is_accepted(self, provider: Provider) -> None:
        limit = provider.userdata_limit
        if limit is None:
            pytest.skip("provider has no userdata limit")
        instance = await provider.create_instance(self.make_request(provider, userdata="x" * limit))
        assert instance.id in await self.cloud_instance_ids(provider)

    @pytest.mark.asyncio
    async def test_instance_type_catalogue_entries_are_well_formed(self, provider: Provider) -> None:
        for info in await provider.describe_instance_types():
            assert isinstance(info, InstanceTypeInfo)
            assert info.name and info.vcpus > 0 and info.memory_mib > 0 and info.gpus >= 0

    @pytest.mark.asyncio
    async def test_cloud_failures_surface_as_provider_errors(self, provider: Provider) -> None:
        broken = self.broken_cloud(provider)
        if broken is None:
            pytest.skip("suite cannot break its cloud")
        request = self.make_request(provider)
        async with broken:
            # pytest.raises lets any other exception type through, failing the test
            with pytest.raises(ProviderError):
                await provider.create_instance(request)
            with pytest.raises(AdaptorError):
                await provider.list_instances(self.owner_tags())
