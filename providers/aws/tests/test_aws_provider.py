"""AwsProvider against moto in server mode, with the fault proxy between boto3 and moto.

Outcomes are read from moto directly (instances, tags, user data, volumes) and,
for what moto does not store (CpuOptions), from the request log on the wire.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from aws_testkit import AMI, AMI_ROOT_GIB, AwsWorld
from caa_provider_aws.provider import AwsProvider
from caa_provider_aws.shapes import TOKEN_TAG, client_token

from cloud_api_adaptor.errors import InvalidInput, PermanentProviderError, TemporaryProviderError
from cloud_api_adaptor.provider import TAG_CLUSTER, TAG_NODE, TAG_SANDBOX, CreateRequest, InstanceSpec
from cloud_api_adaptor.testing.faultproxy import Fault

NODE_TAGS = {TAG_CLUSTER: "cluster-1", TAG_NODE: "node-a"}


def request(sandbox: str = "sb-1", attempt: int = 0, **changes: object) -> CreateRequest:
    fields: dict[str, object] = {
        "name": f"podvm-web-{sandbox}",
        "sandbox_id": sandbox,
        "token": f"{sandbox}-{attempt}",
        "spec": InstanceSpec(),
        "userdata": "#cloud-config\nwrite_files: []\n",
        "tags": {**NODE_TAGS, TAG_SANDBOX: sandbox, "team": "blue"},
    }
    fields.update(changes)
    return CreateRequest(**fields)  # type: ignore[arg-type]


@pytest_asyncio.fixture
async def provider(world: AwsWorld) -> AsyncIterator[AwsProvider]:
    provider = world.provider()
    try:
        yield provider
    finally:
        await provider.aclose()


# -- what RunInstances asked for ------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_run_instances_arguments_land_in_moto(world: AwsWorld, provider: AwsProvider) -> None:
    req = request(userdata="#cloud-config\n# \u00e9t\u00e9\n")
    instance = await provider.create_instance(req)

    [raw] = world.live_instances()
    assert raw["InstanceId"] == instance.id
    assert raw["InstanceType"] == "m6a.large"
    assert raw["ImageId"] == AMI
    assert raw["SubnetId"] == world.subnet_id
    assert [g["GroupId"] for g in raw["SecurityGroups"]] == [world.sg_id]
    tags = {t["Key"]: t["Value"] for t in raw["Tags"]}
    assert tags == {
        "Name": req.name,
        TOKEN_TAG: client_token(req.token),
        TAG_CLUSTER: "cluster-1",
        TAG_NODE: "node-a",
        TAG_SANDBOX: "sb-1",
        "team": "blue",
    }
    assert instance.tags == tags
    assert instance.ips == (ipaddress.ip_address(raw["PrivateIpAddress"]),)
    assert raw.get("ClientToken") == client_token(req.token)
    stored = world.ec2.describe_instance_attribute(InstanceId=instance.id, Attribute="userData")
    assert base64.b64decode(stored["UserData"]["Value"]) == req.userdata.encode()


@pytest.mark.asyncio
async def test_sev_snp_is_requested_on_the_wire_unless_disabled(world: AwsWorld) -> None:
    snp = world.provider()
    plain = world.provider(disable_cvm=True)
    try:
        await snp.create_instance(request("sb-snp"))
        await plain.create_instance(request("sb-plain"))
    finally:
        await snp.aclose()
        await plain.aclose()
    sent = world.proxy.requests("RunInstances")
    assert [r.params.get("CpuOptions.AmdSevSnp") for r in sent] == ["enabled", None]


@pytest.mark.asyncio
async def test_root_volume_is_sized_from_the_ami_and_deleted_with_the_instance(world: AwsWorld) -> None:
    big = world.provider(root_volume_size=40)
    small = world.provider(root_volume_size=10)
    try:
        a = await big.create_instance(request("sb-big"))
        b = await small.create_instance(request("sb-small"))
        sizes = {}
        for inst in (a, b):
            volumes = world.ec2.describe_volumes(
                Filters=[{"Name": "attachment.instance-id", "Values": [inst.id]}]
            )["Volumes"]
            sizes[inst.id] = [v["Size"] for v in volumes]
            # the volume carries the owner tags too, so a leaked disk is findable
            assert all({"Key": TAG_NODE, "Value": "node-a"} in v["Tags"] for v in volumes)
        assert sizes == {a.id: [40], b.id: [AMI_ROOT_GIB]}
        await big.delete_instance(a.id)
        await small.delete_instance(b.id)
    finally:
        await big.aclose()
        await small.aclose()
    left = world.ec2.describe_volumes(Filters=[{"Name": f"tag:{TAG_NODE}", "Values": ["node-a"]}])["Volumes"]
    assert [v for v in left if v.get("Attachments") or v["State"] != "deleted"] == []
    assert len(world.proxy.requests("DescribeImages")) == 2, "one DescribeImages per provider, then cached"


@pytest.mark.asyncio
async def test_pod_instance_type_and_image_override_the_defaults(
    world: AwsWorld, provider: AwsProvider
) -> None:
    other_ami = world.ec2.describe_images(
        Owners=["amazon"], Filters=[{"Name": "name", "Values": ["amzn2-ami-hvm*"]}]
    )["Images"][-1]["ImageId"]
    spec = InstanceSpec(instance_type="c5.xlarge", image=other_ami)
    instance = await provider.create_instance(request(spec=spec))
    [raw] = world.live_instances()
    assert (raw["InstanceId"], raw["InstanceType"], raw["ImageId"]) == (instance.id, "c5.xlarge", other_ami)


@pytest.mark.asyncio
async def test_public_ip_mode_dials_the_public_address_first(world: AwsWorld) -> None:
    provider = world.provider(use_public_ip=True)
    try:
        instance = await provider.create_instance(request())
        [raw] = world.live_instances()
        assert instance.ips == (
            ipaddress.ip_address(raw["PublicIpAddress"]),
            ipaddress.ip_address(raw["PrivateIpAddress"]),
        )
        [sent] = world.proxy.requests("RunInstances")
        assert sent.params["NetworkInterface.1.AssociatePublicIpAddress"] == "true"
        assert sent.params["NetworkInterface.1.SubnetId"] == world.subnet_id
        assert "SubnetId" not in sent.params
        await provider.delete_instance(instance.id)
    finally:
        await provider.aclose()
    assert world.live_instances() == []


@pytest.mark.asyncio
async def test_userdata_over_16_kib_is_refused_without_any_call(
    world: AwsWorld, provider: AwsProvider
) -> None:
    with pytest.raises(InvalidInput) as info:
        await provider.create_instance(request(userdata="\u00e9" * 8193))  # 16386 bytes in UTF-8
    assert info.value.field == "userdata"
    assert "16384" in str(info.value)
    assert world.proxy.count() == 0
    assert world.live_instances() == []


# -- faults between boto3 and moto ----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_lost_run_instances_response_leaves_exactly_one_instance(
    world: AwsWorld, provider: AwsProvider
) -> None:
    world.proxy.add_rule("RunInstances", Fault.DROP_RESPONSE)
    instance = await provider.create_instance(request())
    assert world.live_ids() == {instance.id}
    assert world.proxy.count("RunInstances") == 1, "the retry adopted the instance instead of launching"
    assert world.proxy.pending_rules() == []
    await provider.delete_instance(instance.id)
    assert world.live_instances() == []


@pytest.mark.asyncio
async def test_throttling_and_503s_are_retried_with_one_client_token(
    world: AwsWorld, provider: AwsProvider
) -> None:
    world.proxy.add_rule("RunInstances", Fault.THROTTLE)
    world.proxy.add_rule("RunInstances", Fault.UNAVAILABLE)
    world.proxy.add_rule("DescribeInstances", Fault.THROTTLE)
    world.proxy.add_rule("TerminateInstances", Fault.UNAVAILABLE)
    req = request()
    instance = await provider.create_instance(req)
    assert world.live_ids() == {instance.id}
    tokens = {r.params["ClientToken"] for r in world.proxy.requests("RunInstances")}
    assert tokens == {client_token(req.token)}
    assert world.proxy.count("RunInstances") == 3
    await provider.delete_instance(instance.id)
    assert world.proxy.pending_rules() == []
    assert world.live_instances() == []


@pytest.mark.asyncio
async def test_duplicates_left_by_a_cloud_ignoring_client_token_are_reconciled(
    world: AwsWorld, provider: AwsProvider
) -> None:
    req = request()
    token = client_token(req.token)
    # what moto leaves when RunInstances is sent twice with one token: two instances
    for _ in range(2):
        world.ec2.run_instances(
            ImageId=AMI,
            MinCount=1,
            MaxCount=1,
            SubnetId=world.subnet_id,
            ClientToken=token,
            TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": TOKEN_TAG, "Value": token}]}],
        )
    before = sorted(world.live_ids())
    instance = await provider.create_instance(req)
    assert instance.id in before
    assert world.live_ids() == {instance.id}
    assert world.proxy.count("RunInstances") == 0


@pytest.mark.asyncio
async def test_concurrent_creates_with_one_token_launch_once(world: AwsWorld, provider: AwsProvider) -> None:
    req = request()
    results = await asyncio.gather(*(provider.create_instance(req) for _ in range(3)))
    assert len({r.id for r in results}) == 1
    assert world.live_ids() == {results[0].id}
    assert world.proxy.count("RunInstances") == 1


@pytest.mark.asyncio
async def test_persistent_unavailability_gives_a_temporary_error_after_bounded_attempts(
    world: AwsWorld, provider: AwsProvider
) -> None:
    await provider.delete_instance((await provider.create_instance(request("sb-warm"))).id)
    world.proxy.reset()
    world.proxy.add_rule("*", Fault.UNAVAILABLE, times=100)
    with pytest.raises(TemporaryProviderError):
        await provider.create_instance(request())
    assert world.proxy.counts() == {"DescribeInstances": 4}, "the policy's four attempts, then give up"


@pytest.mark.asyncio
async def test_an_unknown_ami_is_a_permanent_error_with_nothing_created(world: AwsWorld) -> None:
    provider = world.provider(image_id="ami-0000000000000dead")
    try:
        with pytest.raises(PermanentProviderError, match=r"InvalidAMIID\.NotFound"):
            await provider.create_instance(request())
    finally:
        await provider.aclose()
    assert world.proxy.count("DescribeImages") == 1, "permanent errors are not retried"
    assert world.live_instances() == []


# -- cost and listing -----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_pod_lifecycle_costs_at_most_three_ec2_calls(world: AwsWorld, provider: AwsProvider) -> None:
    warm = await provider.create_instance(request("sb-warm"))  # one-time: DescribeImages
    await provider.delete_instance(warm.id)
    world.proxy.reset()
    instance = await provider.create_instance(request("sb-1"))
    await provider.delete_instance(instance.id)
    counts = world.proxy.counts()
    assert sum(counts.values()) <= 3, counts
    assert counts["RunInstances"] == 1 and counts["TerminateInstances"] == 1
    assert world.live_instances() == []


@pytest.mark.asyncio
async def test_list_sees_only_this_nodes_instances_with_launch_times(
    world: AwsWorld, provider: AwsProvider
) -> None:
    mine = await provider.create_instance(request("sb-mine"))
    other_tags = {TAG_CLUSTER: "cluster-1", TAG_NODE: "node-b", TAG_SANDBOX: "sb-theirs"}
    theirs = await provider.create_instance(request("sb-theirs", tags=other_tags))
    listed = await provider.list_instances(NODE_TAGS)
    assert [i.id for i in listed] == [mine.id]
    assert listed[0].created_at is not None and listed[0].created_at > 0
    await provider.delete_instance(mine.id)
    assert await provider.list_instances(NODE_TAGS) == []
    assert world.live_ids() == {theirs.id}


@pytest.mark.asyncio
async def test_listing_with_no_owner_tags_is_refused(provider: AwsProvider) -> None:
    with pytest.raises(InvalidInput):
        await provider.list_instances({})


@pytest.mark.asyncio
async def test_instance_type_catalogue_comes_from_describe_instance_types(world: AwsWorld) -> None:
    provider = world.provider(instance_types=("g4dn.xlarge", "m6a.large", "m6a.xlarge"))
    try:
        catalogue = await provider.describe_instance_types()
    finally:
        await provider.aclose()
    assert [(i.name, i.vcpus, i.memory_mib, i.gpus) for i in catalogue] == [
        ("m6a.large", 2, 8192, 0),
        ("m6a.xlarge", 4, 16384, 0),
        ("g4dn.xlarge", 4, 16384, 1),
    ]


# -- doctor ---------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_verify_passes_for_a_good_configuration(world: AwsWorld, provider: AwsProvider) -> None:
    results = {r.name: r for r in await provider.verify()}
    assert set(results) == {
        "credentials",
        "image",
        "instance types",
        "subnet",
        "security groups",
        "userdata limit",
    }
    assert all(r.ok for r in results.values()), results
    assert AMI in results["image"].detail


@pytest.mark.asyncio
async def test_verify_names_each_broken_setting(world: AwsWorld) -> None:
    provider = world.provider(
        image_id="ami-0000000000000dead",
        instance_types=("m6a.large", "nope.large"),
        subnet_id="subnet-00000000000000000",
        security_group_ids=("sg-00000000000000000",),
        key_name="no-such-key",
    )
    try:
        results = {r.name: r for r in await provider.verify()}
    finally:
        await provider.aclose()
    failed = {name for name, r in results.items() if not r.ok}
    assert failed == {"image", "instance types", "subnet", "security groups", "key pair"}
    assert results["credentials"].ok
    assert "nope.large" in results["instance types"].detail
