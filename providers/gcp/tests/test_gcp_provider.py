"""GcpProvider against the fake Compute Engine over HTTP, with the fault proxy in between.

Outcomes are read from the fake's state (instances, labels, metadata, quotas,
operations) and from the requests the proxy saw on the wire.
"""

from __future__ import annotations

import base64
import ipaddress
import urllib.parse
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from caa_provider_gcp.labels import TOKEN_LABEL, encode_value, token_digest
from caa_provider_gcp.provider import GcpProvider
from caa_provider_gcp.shapes import insert_request_id
from gcp_testkit import IMAGE_GIB, GcpWorld

from cloud_api_adaptor.errors import InvalidInput, PermanentProviderError, QuotaExceeded
from cloud_api_adaptor.provider import TAG_CLUSTER, TAG_NODE, TAG_SANDBOX, CreateRequest, InstanceSpec
from cloud_api_adaptor.testing.faultproxy import Fault

SANDBOX = "3f" * 32  # 64 hex characters, as Kata's sandbox ids
NODE_TAGS = {TAG_CLUSTER: "cluster-1", TAG_NODE: "ip-10-0-0-1.ec2.internal"}
INSTANCES = r"/instances$"


def request(sandbox: str = SANDBOX, attempt: int = 0, **changes: object) -> CreateRequest:
    fields: dict[str, object] = {
        "name": f"podvm-web-{sandbox[:8]}",
        "sandbox_id": sandbox,
        "token": f"{sandbox}-{attempt}",
        "spec": InstanceSpec(),
        "userdata": "#cloud-config\nwrite_files: []\n",
        "tags": {**NODE_TAGS, TAG_SANDBOX: sandbox, "team": "Blue"},
    }
    fields.update(changes)
    return CreateRequest(**fields)  # type: ignore[arg-type]


@pytest_asyncio.fixture
async def provider(world: GcpWorld) -> AsyncIterator[GcpProvider]:
    world.compute.add_tag("team", "Blue")  # TAGS must exist as Resource Manager tags, as in Go
    provider = world.provider()
    try:
        yield provider
    finally:
        await provider.aclose()


def inserts(world: GcpWorld) -> list[dict[str, str]]:
    return [
        r.params
        for r in world.proxy.requests()
        if r.method == "POST" and r.path.split("?")[0].endswith("/instances")
    ]


# -- what insert sends -------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_confidential_vm_is_inserted_with_owner_labels_userdata_and_no_external_ip(
    world: GcpWorld, provider: GcpProvider
) -> None:
    req = request(userdata="#cloud-config\n# \u00e9t\u00e9\n")
    instance = await provider.create_instance(req)

    [raw] = world.compute.live()
    assert raw["name"] == instance.id == instance.name == req.name
    assert raw["machineType"].endswith("/zones/us-central1-a/machineTypes/n2d-standard-2")
    assert raw["confidentialInstanceConfig"] == {
        "enableConfidentialCompute": True,
        "confidentialInstanceType": "SEV_SNP",
    }
    assert raw["scheduling"]["onHostMaintenance"] == "TERMINATE"
    [nic] = raw["networkInterfaces"]
    assert "accessConfigs" not in nic, "no external IP unless USE_PUBLIC_IP"
    assert instance.ips == (ipaddress.ip_address(nic["networkIP"]),)
    assert raw["disks"][0]["autoDelete"] is True and raw["disks"][0]["diskSizeGb"] == str(IMAGE_GIB)
    assert world.compute.userdata(req.name) == req.userdata
    items = {i["key"]: i["value"] for i in raw["metadata"]["items"]}
    assert items["user-data-encoding"] == "base64"
    # a 64-hex sandbox id does not fit a label value: it is encoded, and read back
    assert raw["labels"]["caa_sandbox"] == encode_value(SANDBOX) != SANDBOX
    assert raw["labels"]["caa_node"] == encode_value(NODE_TAGS[TAG_NODE])
    assert raw["labels"]["team"] == encode_value("Blue")
    assert raw["labels"][TOKEN_LABEL] == token_digest(req.token)
    assert instance.tags[TAG_SANDBOX] == SANDBOX and instance.tags[TAG_NODE] == NODE_TAGS[TAG_NODE]
    assert instance.tags["team"] == "Blue"
    [sent] = inserts(world)
    assert sent["requestId"] == insert_request_id(req.token)


@pytest.mark.asyncio
async def test_use_public_ip_attaches_one_external_nat_and_dials_it(world: GcpWorld) -> None:
    world.compute.add_tag("team", "Blue")
    provider = world.provider(use_public_ip=True)
    try:
        instance = await provider.create_instance(request())
    finally:
        await provider.aclose()
    [raw] = world.compute.live()
    [config] = raw["networkInterfaces"][0]["accessConfigs"]
    assert (config["type"], config["networkTier"]) == ("ONE_TO_ONE_NAT", "STANDARD")
    assert instance.ips == (
        ipaddress.ip_address(config["natIP"]),
        ipaddress.ip_address(raw["networkInterfaces"][0]["networkIP"]),
    )


@pytest.mark.asyncio
async def test_without_cvm_no_confidential_config_is_sent(world: GcpWorld) -> None:
    provider = world.provider(
        disable_cvm=True, confidential_type="", machine_type="e2-medium", machine_types=()
    )
    try:
        await provider.create_instance(request(tags=NODE_TAGS))
    finally:
        await provider.aclose()
    [raw] = world.compute.live()
    assert "confidentialInstanceConfig" not in raw and "scheduling" not in raw


# -- create once -------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_lost_insert_response_then_a_retry_creates_one_instance(
    world: GcpWorld, provider: GcpProvider
) -> None:
    world.proxy.add_rule("*", Fault.DROP_RESPONSE, method="POST", path=INSTANCES)
    instance = await provider.create_instance(request())
    assert world.live_names() == {instance.id}
    assert world.compute.created_total == 1
    sent = inserts(world)
    assert len(sent) == 2 and sent[0]["requestId"] == sent[1]["requestId"]


@pytest.mark.asyncio
async def test_429_and_503_storms_end_in_one_instance(world: GcpWorld, provider: GcpProvider) -> None:
    throttled = (
        b'{"error": {"code": 429, "message": "Rate Limit Exceeded", "errors": '
        b'[{"domain": "usageLimits", "reason": "rateLimitExceeded", "message": "Rate Limit Exceeded"}]}}'
    )
    world.proxy.add_rule(
        "*", Fault.RESPOND, method="POST", path=INSTANCES, status=429, body=throttled, times=2
    )
    world.proxy.add_rule("*", Fault.UNAVAILABLE, method="POST", path=INSTANCES)
    world.proxy.add_rule("*", Fault.DROP_RESPONSE, method="POST", path=INSTANCES)
    world.proxy.add_rule("*", Fault.UNAVAILABLE, method="POST", path=r"/wait$", times=2)
    world.proxy.add_rule("*", Fault.RESPOND, method="GET", path=r"/instances/", status=429, body=throttled)
    instance = await provider.create_instance(request())
    assert world.proxy.pending_rules() == []
    assert world.live_names() == {instance.id}
    assert world.compute.created_total == 1
    assert len({s["requestId"] for s in inserts(world)}) == 1


@pytest.mark.asyncio
async def test_a_name_taken_by_this_requests_instance_is_adopted(
    world: GcpWorld, provider: GcpProvider
) -> None:
    first = await provider.create_instance(request())
    world.compute.request_ids.clear()  # past GCP's requestId window: only the name and labels remain
    again = await provider.create_instance(request())
    assert again.id == first.id and world.compute.created_total == 1


@pytest.mark.asyncio
async def test_a_name_taken_by_another_sandbox_is_refused(world: GcpWorld, provider: GcpProvider) -> None:
    await provider.create_instance(request())
    other = "ab" * 32
    with pytest.raises(PermanentProviderError, match="already exists"):
        await provider.create_instance(request(sandbox=other, name=request().name))
    assert world.compute.created_total == 1


@pytest.mark.asyncio
async def test_quota_exhaustion_is_permanent_named_and_leaves_nothing(
    world: GcpWorld, provider: GcpProvider
) -> None:
    world.compute.quotas["N2D_CPUS"]["limit"] = 1.0
    with pytest.raises(QuotaExceeded, match=r"QUOTA_EXCEEDED: Quota 'N2D_CPUS' exceeded") as info:
        await provider.create_instance(request())
    assert "raise the quota" in str(info.value)
    assert world.compute.live() == []


@pytest.mark.asyncio
async def test_an_exhausted_zone_is_permanent_and_named(world: GcpWorld, provider: GcpProvider) -> None:
    world.compute.exhausted.add("n2d-standard-2")
    with pytest.raises(PermanentProviderError, match="ZONE_RESOURCE_POOL_EXHAUSTED"):
        await provider.create_instance(request())
    assert world.compute.live() == []


@pytest.mark.asyncio
async def test_invalid_machine_type_is_refused_by_the_cloud_with_its_message(
    world: GcpWorld, provider: GcpProvider
) -> None:
    with pytest.raises(PermanentProviderError, match=r"n2d-standard-96.*does not exist"):
        await provider.create_instance(request(spec=InstanceSpec(instance_type="n2d-standard-96")))
    with pytest.raises(PermanentProviderError, match=r"no-such-image.*was not found"):
        await provider.create_instance(request(spec=InstanceSpec(image="no-such-image")))
    assert world.compute.live() == [] and world.fake.violations == []


@pytest.mark.asyncio
async def test_a_machine_type_that_cannot_run_the_technology_is_refused_before_any_call(
    world: GcpWorld, provider: GcpProvider
) -> None:
    before = world.proxy.count()
    with pytest.raises(InvalidInput) as info:
        await provider.create_instance(request(spec=InstanceSpec(instance_type="e2-medium")))
    assert info.value.field == "instance_type" and "SEV_SNP" in str(info.value)
    assert world.proxy.count() == before


# -- delete and list ---------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_delete_waits_for_the_operation_and_a_404_counts_as_deleted(
    world: GcpWorld, provider: GcpProvider
) -> None:
    world.compute.op_polls = 3
    instance = await provider.create_instance(request())
    world.proxy.add_rule("*", Fault.DROP_RESPONSE, method="DELETE")
    await provider.delete_instance(instance.id)
    assert world.compute.live() == []
    await provider.delete_instance(instance.id)
    with pytest.raises(InvalidInput):
        await provider.delete_instance("Not_A_Name")


@pytest.mark.asyncio
async def test_list_filters_on_labels_server_side_over_every_page(
    world: GcpWorld, provider: GcpProvider
) -> None:
    world.compute.page_size = 2
    mine = [await provider.create_instance(request(sandbox=f"{i:02x}" * 32)) for i in range(5)]
    other_node = {**NODE_TAGS, TAG_NODE: "node-b", TAG_SANDBOX: "cd" * 32}
    await provider.create_instance(request(sandbox="cd" * 32, tags=other_node))
    world.proxy.reset()
    listed = await provider.list_instances(NODE_TAGS)
    assert {i.id for i in listed} == {i.id for i in mine}
    assert all(i.tags[TAG_NODE] == NODE_TAGS[TAG_NODE] for i in listed)
    lists = [r for r in world.proxy.requests() if r.method == "GET"]
    assert len(lists) == 3  # five instances, two per page
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(lists[0].path).query)
    assert "labels.caa_node" in query["filter"][0] and "labels.caa_cluster" in query["filter"][0]


@pytest.mark.asyncio
async def test_the_catalogue_is_sorted_by_gpus_memory_and_vcpus(provider: GcpProvider) -> None:
    names = [i.name for i in await provider.describe_instance_types()]
    assert names == ["n2d-standard-2", "n2d-standard-4", "n2d-standard-8"]


# -- tags and doctor ---------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_tags_are_bound_as_resource_manager_tags(world: GcpWorld, provider: GcpProvider) -> None:
    [value] = list(world.compute.tag_values)
    instance = await provider.create_instance(request())
    [raw] = world.compute.live()
    assert [(b["parent"], b["tagValue"]) for b in world.compute.tag_bindings] == [
        (f"//compute.googleapis.com/projects/caa-test/zones/us-central1-a/instances/{raw['id']}", value)
    ]
    assert instance.id == raw["name"]


@pytest.mark.asyncio
async def test_a_missing_tag_aborts_with_the_go_text_before_any_instance(
    world: GcpWorld, provider: GcpProvider
) -> None:
    world.compute.add_tag("env", "test")
    with pytest.raises(PermanentProviderError, match="Aborting: Tag env=prod not found"):
        await provider.create_instance(request(tags={**NODE_TAGS, TAG_SANDBOX: SANDBOX, "env": "prod"}))
    assert world.compute.created_total == 0


@pytest.mark.asyncio
async def test_doctor_passes_and_names_what_is_wrong(world: GcpWorld) -> None:
    provider = world.provider()
    try:
        assert [r for r in await provider.verify() if not r.ok] == []
        world.compute.quotas["CPUS"]["usage"] = 999.0
        bad = {r.name: r.detail for r in await provider.verify() if not r.ok}
        assert list(bad) == ["quota"] and "CPUS" in bad["quota"]
        world.compute.quotas["CPUS"]["usage"] = 0.0
    finally:
        await provider.aclose()
    broken = world.provider(network="missing", image_name="gone")
    try:
        bad = {r.name for r in await broken.verify() if not r.ok}
        assert bad == {"network", "image"}
    finally:
        await broken.aclose()


@pytest.mark.asyncio
async def test_userdata_is_base64_in_metadata_and_the_limit_is_the_metadata_value(
    world: GcpWorld, provider: GcpProvider
) -> None:
    limit = provider.userdata_limit
    assert limit == 196608
    await provider.create_instance(request(userdata="x" * limit))
    [raw] = world.compute.live()
    value = next(i["value"] for i in raw["metadata"]["items"] if i["key"] == "user-data")
    assert len(value) == 262144 and base64.b64decode(value) == b"x" * limit
