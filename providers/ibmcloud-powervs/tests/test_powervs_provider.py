"""PowervsProvider against the fakes over HTTP: build timeout and ERROR, DHCP leases, create-once, faults."""

from __future__ import annotations

import json
import uuid

import pytest
from caa_provider_ibmcloud.tags import owner_tag, token_tag
from caa_provider_ibmcloud_powervs.config import PowervsConfig
from caa_provider_ibmcloud_powervs.plugin import sdk_ports
from caa_provider_ibmcloud_powervs.provider import PowervsProvider
from caa_provider_ibmcloud_powervs.testing.world import PowerWorld

from cloud_api_adaptor.errors import ConfigError, InvalidInput, PermanentProviderError, TemporaryProviderError
from cloud_api_adaptor.options import load
from cloud_api_adaptor.plugins import installed_providers, load_plugin
from cloud_api_adaptor.provider import TAG_CLUSTER, TAG_NODE, TAG_SANDBOX, CreateRequest, InstanceSpec
from cloud_api_adaptor.testing.faultproxy import Fault, FaultProxy

CREATE_PATH = "/pvm-instances$"


def request(spec: InstanceSpec | None = None, name: str = "") -> CreateRequest:
    sid = uuid.uuid4().hex * 2
    return CreateRequest(
        name=name or f"podvm-web-{sid[:8]}",
        sandbox_id=sid,
        token=f"{sid}-1",
        spec=spec or InstanceSpec(),
        userdata="#cloud-config\n",
        tags={TAG_CLUSTER: "c1", TAG_NODE: "node-a", TAG_SANDBOX: sid},
    )


def of_sandbox(world: PowerWorld, req: CreateRequest) -> list[str]:
    return world.power.tagged(owner_tag(TAG_SANDBOX, req.sandbox_id))


@pytest.mark.asyncio
async def test_a_build_timeout_is_an_error_and_no_instance_is_left(power_world: PowerWorld) -> None:
    power_world.power.next_outcome = ["BUILD"]
    clock = iter(range(0, 10_000, 50))  # every reading of the clock is 50 s later
    provider = PowervsProvider(
        power_world.config(build_timeout=150.0),
        ports_factory=sdk_ports,
        retry=None,
        build_poll=0.0,
        clock=lambda: float(next(clock)),
    )
    req = request()
    try:
        with pytest.raises(TemporaryProviderError, match="POWERVS_BUILD_TIMEOUT"):
            await provider.create_instance(req)
    finally:
        await provider.aclose()
    assert power_world.power.creates == 1
    assert power_world.power.live_ids() == set()


@pytest.mark.asyncio
async def test_an_error_build_is_a_permanent_error_and_the_instance_is_deleted(
    power_world: PowerWorld,
) -> None:
    power_world.power.next_outcome = ["ERROR"]
    provider = power_world.provider()
    try:
        with pytest.raises(PermanentProviderError, match="no host capacity"):
            await provider.create_instance(request())
    finally:
        await provider.aclose()
    assert power_world.power.live_ids() == set()


@pytest.mark.asyncio
async def test_a_dynamic_network_gets_its_address_from_the_dhcp_lease_of_its_mac() -> None:
    world = PowerWorld(network_type="dynamic", lease_reads=3)
    provider = world.provider()
    try:
        instance = await provider.create_instance(request())
        assert [str(ip) for ip in instance.ips] == [world.power.address(instance.id)]
        assert world.power.dhcp_reads > 3
    finally:
        await provider.aclose()
        world.close()


@pytest.mark.asyncio
async def test_a_lost_create_response_is_found_by_server_name(
    power_world: PowerWorld, power_proxy: FaultProxy
) -> None:
    provider = power_world.provider(power_proxy.url)
    power_proxy.add_rule("*", Fault.DROP_RESPONSE, method="POST", path=CREATE_PATH)
    req = request()
    try:
        instance = await provider.create_instance(req)
    finally:
        await provider.aclose()
    assert of_sandbox(power_world, req) == [instance.id] and power_world.power.creates == 1


@pytest.mark.asyncio
async def test_429_and_503_storms_make_one_instance(power_world: PowerWorld, power_proxy: FaultProxy) -> None:
    provider = power_world.provider(power_proxy.url)
    body = json.dumps({"code": 429, "error": "too many requests", "description": "slow down"}).encode()
    power_proxy.add_rule(
        "*",
        Fault.RESPOND,
        status=429,
        headers={"Retry-After": "1"},
        body=body,
        times=2,
        method="POST",
        path=CREATE_PATH,
    )
    power_proxy.add_rule("*", Fault.UNAVAILABLE, times=2, method="POST", path=CREATE_PATH)
    power_proxy.add_rule("*", Fault.UNAVAILABLE, method="GET", path="/pvm-instances/", times=2)
    req = request()
    try:
        instance = await provider.create_instance(req)
    finally:
        await provider.aclose()
    assert of_sandbox(power_world, req) == [instance.id] and power_world.power.creates == 1
    assert power_proxy.pending_rules() == []


@pytest.mark.asyncio
async def test_deleting_an_instance_already_gone_succeeds(power_world: PowerWorld) -> None:
    provider = power_world.provider()
    try:
        instance = await provider.create_instance(request())
        power_world.power.remove_now(instance.id)
        await provider.delete_instance(instance.id)
    finally:
        await provider.aclose()


@pytest.mark.asyncio
async def test_the_body_carries_the_shape_base64_userdata_and_owner_tags(power_world: PowerWorld) -> None:
    provider = power_world.provider()
    req = request(InstanceSpec(vcpus=2, memory_mib=4096))
    try:
        instance = await provider.create_instance(req)
    finally:
        await provider.aclose()
    [shape] = power_world.power.named(req.name)
    assert (shape["processors"], shape["memory"], shape["procType"]) == (2.0, 4.0, "shared")
    assert power_world.power.user_data(instance.id) == req.userdata
    assert token_tag(req.token) in shape["userTags"] and "caa-node:node-a" in shape["userTags"]


@pytest.mark.asyncio
async def test_a_machine_type_shape_and_bad_shapes(power_world: PowerWorld) -> None:
    provider = power_world.provider()
    try:
        req = request(InstanceSpec(instance_type="e980-1.5x8"))
        await provider.create_instance(req)
        [shape] = power_world.power.named(req.name)
        assert (shape["sysType"], shape["processors"], shape["memory"]) == ("e980", 1.5, 8.0)
        with pytest.raises(InvalidInput) as err:
            await provider.create_instance(request(InstanceSpec(instance_type="bx2-2x8-big")))
        assert err.value.field == "instance_type"
    finally:
        await provider.aclose()


@pytest.mark.asyncio
async def test_names_over_47_characters_are_refused_before_any_call(
    power_world: PowerWorld, power_proxy: FaultProxy
) -> None:
    provider = power_world.provider(power_proxy.url)
    try:
        with pytest.raises(InvalidInput) as err:
            await provider.create_instance(request(name="podvm-" + "x" * 42))
        assert err.value.field == "name" and power_proxy.count() == 0
    finally:
        await provider.aclose()


@pytest.mark.asyncio
async def test_a_wrong_crn_header_is_refused_by_the_fake(power_world: PowerWorld) -> None:
    provider = power_world.provider(service_instance_id=str(uuid.uuid4()))
    try:
        with pytest.raises(PermanentProviderError):
            await provider.create_instance(request())
        results = {r.name: r for r in await provider.verify()}
        assert not results["workspace"].ok
    finally:
        await provider.aclose()


def test_both_entry_point_names_load_the_plugin_and_the_go_defaults_hold() -> None:
    assert {"ibmcloud-powervs", "ibmcloudpowervs"} <= set(installed_providers())
    assert load_plugin("ibmcloudpowervs") is load_plugin("ibmcloud-powervs")
    env = {
        "IBMCLOUD_API_KEY": "k",
        "POWERVS_ZONE": "dal12",
        "POWERVS_SERVICE_INSTANCE_ID": "ws",
        "POWERVS_NETWORK_ID": "n",
        "POWERVS_IMAGE_ID": "i",
    }
    config = load(PowervsConfig, env)
    assert (config.processor_type, config.system_type, config.memory, config.processors) == (
        "shared",
        "s922",
        2.0,
        0.5,
    )
    assert config.build_timeout == 150.0 and config.url == "https://us-south.power-iaas.cloud.ibm.com"
    assert config.default_shape == "s922-0.5x2"
    with pytest.raises(ConfigError) as err:
        load(PowervsConfig, {**env, "POWERVS_PROCESSOR_TYPE": "turbo"})
    assert err.value.key == "POWERVS_PROCESSOR_TYPE"


@pytest.mark.asyncio
async def test_the_build_wait_stops_at_the_callers_deadline_and_deletes(power_world: PowerWorld) -> None:
    import dataclasses
    import time

    power_world.power.next_outcome = ["BUILD"]
    provider = power_world.provider(build_timeout=3600.0)
    try:
        with pytest.raises(TemporaryProviderError):
            await provider.create_instance(dataclasses.replace(request(), deadline=time.monotonic()))
    finally:
        await provider.aclose()
    assert power_world.power.creates == 1 and power_world.power.live_ids() == set()
