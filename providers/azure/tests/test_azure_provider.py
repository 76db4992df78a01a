"""AzureProvider against the fake ARM: the VM body on the wire, create-once under faults, complete
deletion, Azure's errors reaching the caller by name, tags, lists and doctor.

Every test runs the real credential flow (client secret at the fake's token endpoint
over HTTPS) and ends with the fake's schema check of every VM body (conftest).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import time
import uuid
from pathlib import Path

import pytest
from azure_testkit import FAST_RETRY, AzureWorld

from cloud_api_adaptor.errors import DeadlineExceeded, InvalidInput, PermanentProviderError, QuotaExceeded
from cloud_api_adaptor.provider import TAG_CLUSTER, TAG_NODE, TAG_SANDBOX, CreateRequest, InstanceSpec
from cloud_api_adaptor.testing.faultproxy import Fault

VM_PATH = r"/virtualMachines/[^/]+$"
OPERATION = r"/operations/"
THROTTLED = b'{"error": {"code": "TooManyRequests", "message": "The request is being throttled."}}'


def request(
    token: str | None = None,
    *,
    name: str | None = None,
    userdata: str = "#cloud-config\n",
    tags: dict[str, str] | None = None,
    size: str = "",
    deadline: float | None = None,
) -> CreateRequest:
    sid = uuid.uuid4().hex + uuid.uuid4().hex
    return CreateRequest(
        name=name or f"podvm-web-{sid[:8]}",
        sandbox_id=sid,
        token=token or f"{sid}-0",
        spec=InstanceSpec(instance_type=size),
        userdata=userdata,
        tags=tags if tags is not None else {TAG_CLUSTER: "c1", TAG_NODE: "n1", TAG_SANDBOX: sid},
        deadline=deadline,
    )


def puts(world: AzureWorld) -> int:
    return sum(1 for r in world.proxy.requests() if r.method == "PUT")


@pytest.mark.asyncio
async def test_the_vm_body_declares_a_confidential_vm_and_its_resources_with_delete_on_vm_delete(
    world: AzureWorld,
) -> None:
    provider = world.provider(enable_secure_boot=True)
    try:
        req = request(userdata="#cloud-config\nwrite_files: []\n")
        instance = await provider.create_instance(req)
        [body] = world.fake.bodies
        props = body["properties"]
        assert props["securityProfile"] == {
            "securityType": "ConfidentialVM",
            "uefiSettings": {"secureBootEnabled": True, "vTpmEnabled": True},
        }
        os_disk = props["storageProfile"]["osDisk"]
        assert os_disk["managedDisk"] == {
            "storageAccountType": "Premium_LRS",
            "securityProfile": {"securityEncryptionType": "VMGuestStateOnly"},
        }
        assert os_disk["deleteOption"] == "Delete"
        [nic] = props["networkProfile"]["networkInterfaceConfigurations"]
        assert nic["properties"]["deleteOption"] == "Delete"
        assert nic["properties"]["networkSecurityGroup"] == {"id": world.arm.nsg_id}
        [ipc] = nic["properties"]["ipConfigurations"]
        assert "publicIPAddressConfiguration" not in ipc["properties"]
        assert props["diagnosticsProfile"] == {"bootDiagnostics": {"enabled": True}}
        assert base64.b64decode(props["userData"]).decode() == req.userdata
        assert props["hardwareProfile"] == {"vmSize": "Standard_DC2as_v5"}
        # owner tags in Azure's grammar: no '/' in names, the token's digest beside them
        assert body["tags"]["caa-sandbox"] == req.sandbox_id
        assert all("/" not in k for k in body["tags"])
        # the daemon dials the NIC's private IP
        assert str(instance.ips[0]) == world.arm.private_ip(req.name)
        assert instance.tags[TAG_SANDBOX] == req.sandbox_id
        # the real credential flow: a client-secret token for ARM's scope, sent on every call
        assert world.fake.token_grants == ["client-secret"]
        assert world.fake.scopes == [f"{world.proxy.url}/.default"]
        assert world.fake.calls("unrouted") == 0

        await provider.delete_instance(instance.id)
        assert world.arm.leftovers() == {}
    finally:
        await provider.aclose()


@pytest.mark.asyncio
async def test_a_public_ip_is_declared_inside_the_vm_dialled_and_deleted_with_it(world: AzureWorld) -> None:
    provider = world.provider(use_public_ip=True)
    try:
        instance = await provider.create_instance(request())
        [ip] = world.arm.public_ips.values()
        assert str(instance.ips[0]) == ip["ipAddress"] and ip["deleteOption"] == "Delete"
        await provider.delete_instance(instance.id)
        assert world.arm.leftovers() == {}
    finally:
        await provider.aclose()


@pytest.mark.asyncio
async def test_disablecvm_sends_no_security_profile_and_accepts_an_ordinary_size(world: AzureWorld) -> None:
    provider = world.provider(disable_cvm=True, instance_size="Standard_D2as_v5", instance_sizes=())
    try:
        instance = await provider.create_instance(request())
        [body] = world.fake.bodies
        assert "securityProfile" not in body["properties"]
        assert "securityProfile" not in body["properties"]["storageProfile"]["osDisk"]["managedDisk"]
        await provider.delete_instance(instance.id)
    finally:
        await provider.aclose()


@pytest.mark.asyncio
async def test_a_lifecycle_costs_one_put_its_polls_one_nic_read_and_one_delete_with_its_polls(
    world: AzureWorld,
) -> None:
    provider = world.provider()
    try:
        instance = await provider.create_instance(request())
        await provider.delete_instance(instance.id)
    finally:
        await provider.aclose()
    names = world.fake.call_names()
    assert names.count("virtualMachines.createOrUpdate") == 1
    assert names.count("virtualMachines.get") == 1  # the SDK's final GET of the PUT's operation
    assert names.count("networkInterfaces.get") == 1
    assert names.count("virtualMachines.delete") == 1
    assert names.count("virtualMachines.list") == 0
    assert names.count("operations.get") == 2 * (world.arm.op_polls + 1)  # InProgress answers, then done


@pytest.mark.asyncio
async def test_a_lost_put_response_is_retried_and_converges_on_the_same_vm(world: AzureWorld) -> None:
    world.proxy.add_rule("*", Fault.DROP_RESPONSE, method="PUT", path=VM_PATH)
    provider = world.provider()
    try:
        instance = await provider.create_instance(request())
        assert puts(world) == 2 and world.arm.created_total == 1
        assert world.live_names() == {instance.id}
        await provider.delete_instance(instance.id)
        assert world.arm.leftovers() == {}
    finally:
        await provider.aclose()


@pytest.mark.asyncio
async def test_429_with_retry_after_and_503_on_every_call_still_give_one_vm_then_none(
    world: AzureWorld,
) -> None:
    slept: list[float] = []

    async def record(delay: float) -> None:
        slept.append(delay)

    throttled = {"Retry-After": "7", "Content-Type": "application/json"}
    for method, path, fault in [
        ("PUT", VM_PATH, Fault.RESPOND),
        ("PUT", VM_PATH, Fault.UNAVAILABLE),
        ("GET", OPERATION, Fault.UNAVAILABLE),
        ("GET", OPERATION, Fault.RESPOND),
        ("GET", r"/networkInterfaces/", Fault.RESPOND),
        ("DELETE", VM_PATH, Fault.UNAVAILABLE),
        ("DELETE", VM_PATH, Fault.RESPOND),
    ]:
        world.proxy.add_rule(
            "*", fault, method=method, path=path, status=429, headers=throttled, body=THROTTLED
        )
    azure = world.provider(retry=dataclasses.replace(FAST_RETRY, attempts=8, sleep=record))
    try:
        instance = await azure.create_instance(request())
        await azure.delete_instance(instance.id)
    finally:
        await azure.aclose()
    assert world.proxy.pending_rules() == []
    assert world.arm.created_total == 1 and world.arm.leftovers() == {}
    assert slept.count(7.0) == 4, "each 429's Retry-After was honoured"


@pytest.mark.asyncio
async def test_an_operation_that_fails_for_good_reaches_the_caller_by_name_and_leaves_nothing(
    world: AzureWorld,
) -> None:
    world.arm.fail_creates.append(
        ("AllocationFailed", "Allocation failed. We do not have sufficient capacity.")
    )
    provider = world.provider()
    try:
        with pytest.raises(PermanentProviderError, match="AllocationFailed") as err:
            await provider.create_instance(request())
        assert "try another size or region" in str(err.value)
        assert world.arm.created_total == 1 and world.arm.leftovers() == {}
    finally:
        await provider.aclose()


@pytest.mark.asyncio
async def test_a_name_held_by_a_different_vm_is_refused_like_arm_and_that_vm_is_left_alone(
    world: AzureWorld,
) -> None:
    provider = world.provider()
    other_image = world.arm.add_image(image="other")
    try:
        theirs = await provider.create_instance(request(name="podvm-shared-name"))
        clash = dataclasses.replace(request(name="podvm-shared-name"), spec=InstanceSpec(image=other_image))
        with pytest.raises(PermanentProviderError, match="PropertyChangeNotAllowed"):
            await provider.create_instance(clash)
        assert world.live_names() == {theirs.id}
        assert world.arm.get_vm(theirs.id)["tags"]["caa-sandbox"] == theirs.tags[TAG_SANDBOX]
    finally:
        await provider.aclose()


@pytest.mark.asyncio
async def test_a_retryable_operation_failure_is_retried_on_the_same_vm(world: AzureWorld) -> None:
    world.arm.fail_creates.append(("RetryableError", "A retryable error occurred."))
    provider = world.provider()
    try:
        instance = await provider.create_instance(request())
        assert world.arm.created_total == 1 and puts(world) == 2
        assert world.arm.get_vm(instance.id)["properties"]["provisioningState"] == "Succeeded"
    finally:
        await provider.aclose()


@pytest.mark.asyncio
async def test_core_quota_exhaustion_names_the_quota_and_creates_nothing(world: AzureWorld) -> None:
    world.arm.quotas["standardDCASv5Family"] = 1
    provider = world.provider()
    try:
        with pytest.raises(QuotaExceeded) as err:  # the pod's event: PeerPodQuotaExceeded
            await provider.create_instance(request())
        text = str(err.value)
        assert "OperationNotAllowed" in text and "standardDCASv5Family Cores quota" in text
        assert "raise the subscription's quota" in text
        assert world.arm.created_total == 0 and world.arm.leftovers() == {}
    finally:
        await provider.aclose()


@pytest.mark.asyncio
async def test_the_create_wait_is_bounded_by_the_callers_deadline(world: AzureWorld) -> None:
    world.arm.hold_operations = True
    provider = world.provider()
    try:
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded, match="deadline"):
            await provider.create_instance(request(deadline=time.monotonic() + 0.5))
        assert time.monotonic() - started < 10
        assert len(world.arm.live()) == 1  # left for the daemon's teardown (it lists by owner tags)
    finally:
        world.arm.release_operations()
        for vm in world.arm.live():
            await provider.delete_instance(vm["name"])
        await provider.aclose()


@pytest.mark.asyncio
async def test_tags_are_encoded_in_azure_grammar_and_refused_before_any_call_when_impossible(
    world: AzureWorld,
) -> None:
    provider = world.provider()
    try:
        long_value = "v" * 300
        sid = uuid.uuid4().hex
        tags = {TAG_CLUSTER: long_value, TAG_NODE: "n1", TAG_SANDBOX: sid, "team/app": "shop"}
        instance = await provider.create_instance(request(tags=tags))
        [body] = world.fake.bodies
        assert body["tags"]["team_app"] == "shop"
        assert body["tags"]["caa-cluster"].startswith("sha256:")
        listed = await provider.list_instances({TAG_CLUSTER: long_value, TAG_SANDBOX: sid})
        assert [i.id for i in listed] == [instance.id]
        calls = world.proxy.count()
        for bad in ({"azure-owner": "x"}, {f"k{i}": "v" for i in range(50)}):
            with pytest.raises(InvalidInput) as err:
                await provider.create_instance(request(tags=bad))
            assert err.value.field == "tags"
        assert world.proxy.count() == calls
    finally:
        await provider.aclose()


@pytest.mark.asyncio
async def test_list_reads_every_page_and_filters_by_owner_tags(world: AzureWorld) -> None:
    world.fake.page_size = 2
    provider = world.provider()
    try:
        mine = [await provider.create_instance(request()) for _ in range(3)]
        await provider.create_instance(request(tags={TAG_CLUSTER: "c1", TAG_NODE: "other"}))
        listed = await provider.list_instances({TAG_CLUSTER: "c1", TAG_NODE: "n1"})
        assert {i.id for i in listed} == {i.id for i in mine}
        assert world.fake.calls("virtualMachines.list") == 2
    finally:
        await provider.aclose()


@pytest.mark.asyncio
async def test_the_catalogue_comes_from_resource_skus_and_a_non_cvm_size_is_refused(
    world: AzureWorld,
) -> None:
    provider = world.provider(instance_sizes=("Standard_DC2as_v5", "Standard_D2as_v5"))
    try:
        catalogue = await provider.describe_instance_types()
        assert [(i.name, i.vcpus, i.memory_mib) for i in catalogue] == [
            ("Standard_DC2as_v5", 2, 8192),
            ("Standard_D2as_v5", 2, 8192),
        ]
        with pytest.raises(InvalidInput, match="cannot run confidential VMs") as err:
            await provider.check_spec(InstanceSpec(instance_type="Standard_D2as_v5"))
        assert err.value.field == "instance_type"
        await provider.check_spec(InstanceSpec(instance_type="Standard_DC2as_v5"))
    finally:
        await provider.aclose()


@pytest.mark.asyncio
async def test_doctor_passes_and_fails_on_a_missing_image_and_on_no_quota_headroom(world: AzureWorld) -> None:
    provider = world.provider()
    try:
        results = await provider.verify()
        assert [r for r in results if not r.ok] == []
        world.arm.images.clear()
        world.arm.quotas["cores"] = 1
        failed = {r.name: r.detail for r in await provider.verify() if not r.ok}
        assert set(failed) == {"image", "quota"}
        assert "cores" in failed["quota"]
    finally:
        await provider.aclose()


@pytest.mark.asyncio
async def test_workload_identity_is_used_when_the_secret_is_empty(world: AzureWorld, tmp_path: Path) -> None:
    token_file = tmp_path / "azure-identity-token"
    token_file.write_text(world.fake.federated_token)
    provider = world.provider(client_secret="", federated_token_file=str(token_file))
    try:
        instance = await provider.create_instance(request())
        await provider.delete_instance(instance.id)
        assert world.fake.token_grants == ["workload-identity"]
    finally:
        await provider.aclose()


@pytest.mark.asyncio
async def test_a_rejected_secret_is_a_permanent_error_naming_the_credentials(world: AzureWorld) -> None:
    provider = world.provider(client_secret="wrong")
    try:
        with pytest.raises(PermanentProviderError, match="credentials rejected"):
            await provider.list_instances({TAG_CLUSTER: "c1"})
    finally:
        await provider.aclose()


@pytest.mark.asyncio
async def test_concurrent_creates_with_one_token_make_one_vm(world: AzureWorld) -> None:
    provider = world.provider()
    try:
        req = request()
        first, second = await asyncio.gather(provider.create_instance(req), provider.create_instance(req))
        assert first.id == second.id and world.arm.created_total == 1
    finally:
        await provider.aclose()
