"""IbmcloudProvider against the fakes over HTTP: images by architecture, create-once, faults, ownership."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from caa_provider_ibmcloud.config import IbmcloudConfig
from caa_provider_ibmcloud.plugin import sdk_ports
from caa_provider_ibmcloud.provider import IbmcloudProvider
from caa_provider_ibmcloud.retry import RetryPolicy
from caa_provider_ibmcloud.tags import owner_tag, token_tag
from caa_provider_ibmcloud.testing.iam import CR_TOKEN_GRANT
from caa_provider_ibmcloud.testing.world import FAST_WAIT, VpcWorld

from cloud_api_adaptor.errors import InvalidInput, PermanentProviderError, TemporaryProviderError
from cloud_api_adaptor.provider import TAG_CLUSTER, TAG_NODE, TAG_SANDBOX, CreateRequest, InstanceSpec
from cloud_api_adaptor.testing.faultproxy import Fault, FaultProxy

CREATE_PATH = r"^/v1/instances$"


def request(
    profile: str = "", image: str = "", sandbox: str | None = None, cluster: str = "c1"
) -> CreateRequest:
    sid = sandbox or uuid.uuid4().hex * 2
    return CreateRequest(
        name=f"podvm-web-{sid[:8]}",
        sandbox_id=sid,
        token=f"{sid}-1",
        spec=InstanceSpec(instance_type=profile, image=image),
        userdata="#cloud-config\n",
        tags={TAG_CLUSTER: cluster, TAG_NODE: "node-a", TAG_SANDBOX: sid, "team": "Blue Sky"},
    )


def sandbox_instances(world: VpcWorld, req: CreateRequest) -> list[str]:
    return world.vpc.tagged(owner_tag(TAG_SANDBOX, req.sandbox_id))


@pytest.mark.asyncio
async def test_an_s390x_profile_gets_the_s390x_image_and_no_tdx(
    vpc_world: VpcWorld, vpc_proxy: FaultProxy
) -> None:
    provider = vpc_world.provider(vpc_proxy.url)
    try:
        instance = await provider.create_instance(request("bz2e-2x8"))
        [shape] = [s for s in vpc_world.vpc.live() if s["id"] == instance.id]
        assert shape["image"]["id"] == vpc_world.vpc.image_of("s390x")
        assert shape["confidential_compute_mode"] == "disabled"  # the fake's default: nothing was asked
        amd = await provider.create_instance(request("bx3dc-2x10"))
        [shape] = [s for s in vpc_world.vpc.live() if s["id"] == amd.id]
        assert shape["image"]["id"] == vpc_world.vpc.image_of("amd64")
        assert shape["confidential_compute_mode"] == "tdx" and shape["enable_secure_boot"] is True
    finally:
        await provider.aclose()


@pytest.mark.asyncio
async def test_a_profile_whose_architecture_matches_no_image_is_refused_before_any_create(
    vpc_world: VpcWorld, vpc_proxy: FaultProxy
) -> None:
    provider = vpc_world.provider(vpc_proxy.url, image_id=(vpc_world.vpc.image_of("amd64"),))
    try:
        with pytest.raises(InvalidInput) as err:
            await provider.create_instance(request("bz2e-2x8"))
        assert err.value.field == "image"
        assert "s390x" in str(err.value) and "bz2e-2x8" in str(err.value)
        assert vpc_proxy.count("/v1/instances") == 0 and vpc_world.vpc.creates == 0
    finally:
        await provider.aclose()


@pytest.mark.asyncio
async def test_disable_cvm_sends_disabled_and_no_secure_boot_and_a_non_tdx_profile_is_refused_without(
    vpc_world: VpcWorld, vpc_proxy: FaultProxy
) -> None:
    plain = vpc_world.provider(vpc_proxy.url, disable_cvm=True, profile_name="bx2-2x8")
    cvm = vpc_world.provider(vpc_proxy.url)
    try:
        instance = await plain.create_instance(request())
        [shape] = [s for s in vpc_world.vpc.live() if s["id"] == instance.id]
        assert (shape["confidential_compute_mode"], shape["enable_secure_boot"]) == ("disabled", False)
        with pytest.raises(InvalidInput, match="does not support TDX"):
            await cvm.create_instance(request("bx2-2x8"))
    finally:
        await plain.aclose()
        await cvm.aclose()


@pytest.mark.asyncio
async def test_a_lost_create_response_is_found_by_name_and_adopted(
    vpc_world: VpcWorld, vpc_proxy: FaultProxy
) -> None:
    provider = vpc_world.provider(vpc_proxy.url)
    vpc_proxy.add_rule("*", Fault.DROP_RESPONSE, method="POST", path=CREATE_PATH)
    req = request()
    try:
        instance = await provider.create_instance(req)
    finally:
        await provider.aclose()
    assert sandbox_instances(vpc_world, req) == [instance.id]
    assert vpc_world.vpc.creates == 1 and vpc_proxy.pending_rules() == []
    assert token_tag(req.token) in vpc_world.vpc.volume_tags(instance.id)


@pytest.mark.asyncio
async def test_429_and_503_storms_make_one_instance_and_retry_after_is_honoured(
    vpc_world: VpcWorld, vpc_proxy: FaultProxy
) -> None:
    waits: list[float] = []

    async def record(delay: float) -> None:
        waits.append(delay)

    provider = IbmcloudProvider(
        vpc_world.config(vpc_proxy.url),
        ports_factory=sdk_ports,
        retry=RetryPolicy(attempts=8, initial=0.0, maximum=0.0, jitter=0.0, sleep=record),
        address_wait=FAST_WAIT,
        gone_wait=FAST_WAIT,
    )
    body = json.dumps({"errors": [{"code": "too_many_requests", "message": "Rate limit exceeded"}]}).encode()
    vpc_proxy.add_rule(
        "*",
        Fault.RESPOND,
        status=429,
        headers={"Retry-After": "3"},
        body=body,
        times=2,
        method="POST",
        path=CREATE_PATH,
    )
    vpc_proxy.add_rule("*", Fault.UNAVAILABLE, times=2, method="POST", path=CREATE_PATH)
    vpc_proxy.add_rule("*", Fault.UNAVAILABLE, method="POST", path="/v3/tags/attach")
    vpc_proxy.add_rule("*", Fault.UNAVAILABLE, method="GET", path="^/v1/instances/")
    req = request()
    try:
        instance = await provider.create_instance(req)
    finally:
        await provider.aclose()
    assert sandbox_instances(vpc_world, req) == [instance.id] and vpc_world.vpc.creates == 1
    assert vpc_proxy.pending_rules() == []
    assert waits.count(3.0) == 2, waits


@pytest.mark.asyncio
async def test_the_ip_is_waited_for_and_every_interface_counts_in_order(vpc_world: VpcWorld) -> None:
    vpc_world.vpc.pending_reads = 4
    provider = vpc_world.provider(secondary_subnet_id=vpc_world.vpc.subnet_id)
    try:
        instance = await provider.create_instance(request())
    finally:
        await provider.aclose()
    assert [str(ip) for ip in instance.ips] == vpc_world.vpc.addresses(instance.id)
    assert len(instance.ips) == 2 and "0.0.0.0" not in {str(i) for i in instance.ips}


@pytest.mark.asyncio
async def test_an_instance_that_fails_to_start_is_a_permanent_error(vpc_world: VpcWorld) -> None:
    vpc_world.vpc.fail_next = 1
    provider = vpc_world.provider()
    try:
        with pytest.raises(PermanentProviderError, match="failed: no capacity"):
            await provider.create_instance(request())
    finally:
        await provider.aclose()


@pytest.mark.asyncio
async def test_deleting_an_instance_someone_else_removed_succeeds(vpc_world: VpcWorld) -> None:
    provider = vpc_world.provider()
    try:
        instance = await provider.create_instance(request())
        vpc_world.vpc.remove_now(instance.id)
        await provider.delete_instance(instance.id)
        assert vpc_world.vpc.live() == []
    finally:
        await provider.aclose()


@pytest.mark.asyncio
async def test_a_same_named_instance_of_another_sandbox_is_not_adopted(vpc_world: VpcWorld) -> None:
    sid = uuid.uuid4().hex * 2
    twin = sid[:8] + uuid.uuid4().hex * 2  # another cluster's pod: same name, same first 8 of its id
    other = vpc_world.provider()
    mine = vpc_world.provider()
    try:
        theirs = await other.create_instance(request(sandbox=twin[:64], cluster="elsewhere"))
        with pytest.raises(PermanentProviderError, match="does not belong to sandbox"):
            await mine.create_instance(request(sandbox=sid, cluster="c1"))
        assert vpc_world.vpc.live_ids() == {theirs.id}
    finally:
        await other.aclose()
        await mine.aclose()


@pytest.mark.asyncio
async def test_an_earlier_attempts_instance_is_deleted_before_the_new_attempt_creates(
    vpc_world: VpcWorld,
) -> None:
    provider = vpc_world.provider()
    first = request()
    second = CreateRequest(**{**first.__dict__, "token": f"{first.sandbox_id}-2"})
    try:
        old = await provider.create_instance(first)
        new = await provider.create_instance(second)
    finally:
        await provider.aclose()
    assert new.id != old.id and vpc_world.vpc.live_ids() == {new.id}


@pytest.mark.asyncio
async def test_an_instance_whose_own_tagging_never_happened_is_listed_through_its_boot_volume(
    vpc_world: VpcWorld, vpc_proxy: FaultProxy
) -> None:
    provider = vpc_world.provider(vpc_proxy.url)
    vpc_proxy.add_rule("*", Fault.UNAVAILABLE, method="POST", path="/v3/tags/attach", times=100)
    req = request()
    try:
        with pytest.raises(Exception, match="global tagging"):
            await provider.create_instance(req)
        listed = await provider.list_instances({TAG_CLUSTER: "c1", TAG_NODE: "node-a"})
        [instance] = listed
        assert instance.tags[TAG_SANDBOX] == req.sandbox_id
        assert instance.id in vpc_world.vpc.live_ids()
    finally:
        await provider.aclose()


@pytest.mark.asyncio
async def test_go_cluster_tag_and_user_tags_are_attached_in_ibm_grammar(vpc_world: VpcWorld) -> None:
    provider = vpc_world.provider(cluster_id="MyCluster/1")
    try:
        instance = await provider.create_instance(request())
        crn = next(s["crn"] for s in vpc_world.vpc.live() if s["id"] == instance.id)
    finally:
        await provider.aclose()
    tags = vpc_world.platform.tags_of(crn)
    assert {"coco-pod-vm:mycluster-1", "team:blue sky", "caa-node:node-a", "caa-cluster:c1"} <= tags


@pytest.mark.asyncio
async def test_a_trusted_profile_gets_its_token_with_the_projected_service_account_token(
    vpc_world: VpcWorld, tmp_path: Path
) -> None:
    token_file = tmp_path / "vault-token"
    token_file.write_text("projected-sa-token")
    vpc_world.iam.profiles["Profile-1234"] = "projected-sa-token"
    provider = vpc_world.provider(api_key="", iam_profile_id="Profile-1234", cr_token_file=str(token_file))
    try:
        await provider.create_instance(request())
    finally:
        await provider.aclose()
    assert vpc_world.iam.grants == [CR_TOKEN_GRANT]


@pytest.mark.asyncio
async def test_an_unknown_api_key_is_a_permanent_error_naming_iam(vpc_world: VpcWorld) -> None:
    provider = vpc_world.provider(api_key="wrong")
    try:
        with pytest.raises(PermanentProviderError, match="API key could not be found"):
            await provider.create_instance(request())
        results = {r.name: r for r in await provider.verify()}
        assert not results["credentials"].ok
    finally:
        await provider.aclose()
    assert vpc_world.vpc.live() == []


@pytest.mark.asyncio
async def test_concurrent_creates_of_one_request_make_one_instance(vpc_world: VpcWorld) -> None:
    provider = vpc_world.provider()
    req = request()
    try:
        got = await asyncio.gather(*(provider.create_instance(req) for _ in range(4)))
    finally:
        await provider.aclose()
    assert len({i.id for i in got}) == 1 and vpc_world.vpc.creates == 1


def test_the_config_refuses_missing_credentials_and_derives_the_regional_endpoint() -> None:
    from cloud_api_adaptor.errors import ConfigError
    from cloud_api_adaptor.options import load

    with pytest.raises(ConfigError) as err:
        load(IbmcloudConfig, {"IBMCLOUD_PODVM_IMAGE_ID": "r006-x", "IBMCLOUD_ZONE": "eu-de-2"})
    assert err.value.key == "IBMCLOUD_API_KEY"
    config = load(
        IbmcloudConfig,
        {"IBMCLOUD_API_KEY": "s3cr3t-key", "IBMCLOUD_PODVM_IMAGE_ID": "a,b", "IBMCLOUD_ZONE": "eu-de-2"},
    )
    assert config.vpc_url == "https://eu-de.iaas.cloud.ibm.com/v1" and config.disable_cvm is True
    assert "s3cr3t-key" not in repr(config)


def test_loading_the_plugin_imports_no_ibm_sdk() -> None:
    probe = (
        "import json, sys\nfrom cloud_api_adaptor.plugins import load_plugin\nload_plugin(sys.argv[1])\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'ibm_vpc', 'ibm_platform_services', 'ibm_cloud_sdk_core', 'requests'})))"
    )
    for name in ("ibmcloud", "ibmcloud-powervs"):
        out = subprocess.run([sys.executable, "-c", probe, name], check=True, capture_output=True, text=True)
        assert json.loads(out.stdout) == [], name


@pytest.mark.asyncio
async def test_the_whole_flow_runs_over_https_with_the_test_ca(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cloud_api_adaptor.testing.https import TestCA

    ca = TestCA(tmp_path / "ca")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca.ca_file))
    world = VpcWorld(server_context=ca.server_context("127.0.0.1"))
    provider = world.provider()
    try:
        assert world.url.startswith("https://")
        instance = await provider.create_instance(request())
        await provider.delete_instance(instance.id)
        assert world.vpc.live() == [] and world.iam.grants
    finally:
        await provider.aclose()
        world.close()


@pytest.mark.asyncio
async def test_the_address_wait_stops_at_the_callers_deadline(vpc_world: VpcWorld) -> None:
    import dataclasses
    import time

    vpc_world.vpc.pending_reads = 1_000_000
    provider = vpc_world.provider()
    req = dataclasses.replace(request(), deadline=time.monotonic())
    try:
        with pytest.raises(TemporaryProviderError, match="StartVM deadline"):
            await provider.create_instance(req)
    finally:
        await provider.aclose()
