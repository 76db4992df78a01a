"""Pure parts of the AWS provider: config, error translation, request and response shapes."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path
from typing import Any

import pytest
from aws_testkit import FAST_RETRY, FAST_WAIT
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)
from caa_provider_aws import PLUGIN, AwsConfig, AwsProvider
from caa_provider_aws.errors import translate
from caa_provider_aws.shapes import (
    TOKEN_TAG,
    client_token,
    instance_type_info,
    is_address_ready,
    root_device,
    run_instances_params,
    to_instance,
)

from cloud_api_adaptor.errors import (
    CapacityUnavailable,
    ConfigError,
    ImageNotFound,
    InstanceNotFound,
    InvalidInput,
    PermanentProviderError,
    QuotaExceeded,
    TemporaryProviderError,
)
from cloud_api_adaptor.options import load, options_of
from cloud_api_adaptor.provider import CreateRequest, InstanceSpec, ProviderContext, ProviderPlugin

# -- config ---------------------------------------------------------------------------------------------


def _context(tmp_path: Path) -> ProviderContext:
    return ProviderContext(node_name="n", cluster_id="c", state_dir=tmp_path, work_dir=tmp_path)


def test_go_keys_and_defaults_resolve_into_the_config() -> None:
    env = {
        "PODVM_AMI_ID": "ami-1",
        "AWS_REGION": "eu-west-1",
        "AWS_SG_IDS": "sg-1, sg-2",
        "USE_PUBLIC_IP": "true",
        "PODVM_INSTANCE_TYPES": "m6a.large,m6a.xlarge",
    }
    config = load(AwsConfig, env)
    assert config.image_id == "ami-1"
    assert config.instance_type == "m6a.large"
    assert config.instance_types == ("m6a.large", "m6a.xlarge")
    assert config.security_group_ids == ("sg-1", "sg-2")
    assert config.root_volume_size == 30
    assert config.launch_template_name == "kata"
    assert (config.use_public_ip, config.disable_cvm, config.use_launch_template) == (True, False, False)


def test_a_missing_ami_is_a_config_error_naming_the_key() -> None:
    with pytest.raises(ConfigError) as info:
        load(AwsConfig, {})
    assert info.value.key == "PODVM_AMI_ID"


def test_launch_template_mode_still_names_the_ami_as_the_go_version_does() -> None:
    with pytest.raises(ConfigError) as info:
        load(AwsConfig, {"USE_PODVM_LAUNCHTEMPLATE": "true"})
    assert info.value.key == "PODVM_AMI_ID"


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"ROOT_VOLUME_SIZE": "-1"}, "ROOT_VOLUME_SIZE"),
        ({"ROOT_VOLUME_SIZE": "big"}, "ROOT_VOLUME_SIZE"),
        ({"USE_PUBLIC_IP": "maybe"}, "USE_PUBLIC_IP"),
        ({"PODVM_INSTANCE_TYPE": "m6a large"}, "PODVM_INSTANCE_TYPE"),
        ({"AWS_ACCESS_KEY_ID": "AKIA"}, "AWS_SECRET_ACCESS_KEY"),
    ],
)
def test_bad_values_are_config_errors_naming_the_key(env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(AwsConfig, {"PODVM_AMI_ID": "ami-1", **env})
    assert info.value.key == key


def test_secrets_never_appear_in_reprs() -> None:
    env = {
        "PODVM_AMI_ID": "ami-1",
        "AWS_ACCESS_KEY_ID": "AKIASECRET1",
        "AWS_SECRET_ACCESS_KEY": "s3cr3t-value",
    }
    config = load(AwsConfig, env)
    assert "AKIASECRET1" not in repr(config) and "s3cr3t-value" not in repr(config)
    assert {o.env for o in options_of(AwsConfig) if o.secret} == {
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
    }


def test_the_plugin_builds_an_aws_provider(tmp_path: Path) -> None:
    assert isinstance(PLUGIN, ProviderPlugin) and PLUGIN.name == "aws"
    provider = PLUGIN.build(load(PLUGIN.settings_class, {"PODVM_AMI_ID": "ami-1"}), _context(tmp_path))
    assert isinstance(provider, AwsProvider)
    assert (provider.default_image, provider.default_instance_type, provider.userdata_limit) == (
        "ami-1",
        "m6a.large",
        16384,
    )


# -- error translation ----------------------------------------------------------------------------------


def _client_error(code: str, status: int = 400) -> ClientError:
    body: Any = {"Error": {"Code": code, "Message": "msg"}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(body, "RunInstances")


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (_client_error("RequestLimitExceeded", 503), TemporaryProviderError),
        (_client_error("Throttling"), TemporaryProviderError),
        (_client_error("InsufficientInstanceCapacity", 500), CapacityUnavailable),
        (_client_error("VcpuLimitExceeded"), QuotaExceeded),
        (_client_error("InstanceLimitExceeded"), QuotaExceeded),
        (_client_error("InvalidAMIID.NotFound"), ImageNotFound),
        (_client_error("SomethingNew", 502), TemporaryProviderError),
        (_client_error("InvalidInstanceID.NotFound"), InstanceNotFound),
        (_client_error("InvalidInstanceID.Malformed"), InvalidInput),
        (_client_error("UnauthorizedOperation", 403), PermanentProviderError),
        (_client_error("AuthFailure", 401), PermanentProviderError),
        (_client_error("InvalidParameterValue"), PermanentProviderError),
        (_client_error("IdempotentParameterMismatch"), PermanentProviderError),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), TemporaryProviderError),
        (ConnectionClosedError(endpoint_url="http://127.0.0.1:1"), TemporaryProviderError),
        (ReadTimeoutError(endpoint_url="http://127.0.0.1:1"), TemporaryProviderError),
        (NoCredentialsError(), PermanentProviderError),
        (ValueError("odd"), PermanentProviderError),
    ],
)
def test_botocore_errors_are_classified_by_what_the_caller_should_do(exc: Exception, expected: type) -> None:
    translated = translate(exc, "RunInstances")
    assert type(translated) is expected
    assert "RunInstances" in str(translated)


# -- request and response shapes ------------------------------------------------------------------------


def _request(**changes: Any) -> CreateRequest:
    fields: dict[str, Any] = {
        "name": "podvm-a",
        "sandbox_id": "sb",
        "token": "sb-0",
        "spec": InstanceSpec(),
        "userdata": "#cloud-config\n",
        "tags": {"owner": "me", "Name": "ignored"},
    }
    fields.update(changes)
    return CreateRequest(**fields)


def test_client_token_is_stable_and_within_ec2s_64_character_limit() -> None:
    long_token = "f" * 64 + "-3"
    assert client_token(long_token) == client_token(long_token)
    assert client_token(long_token) != client_token("f" * 64 + "-4")
    assert len(client_token(long_token)) == 64 and client_token(long_token).isascii()


def test_run_instances_params_for_the_default_path() -> None:
    config = AwsConfig(image_id="ami-1", subnet_id="subnet-1", security_group_ids=("sg-1",), key_name="kp")
    root = root_device(
        {
            "RootDeviceName": "/dev/xvda",
            "BlockDeviceMappings": [{"DeviceName": "/dev/xvda", "Ebs": {"VolumeSize": 8}}],
        },
        30,
    )
    params = run_instances_params(config, _request(), "tok", root)
    tags = [
        {"Key": "Name", "Value": "podvm-a"},
        {"Key": TOKEN_TAG, "Value": "tok"},
        {"Key": "owner", "Value": "me"},
    ]
    assert params == {
        "MinCount": 1,
        "MaxCount": 1,
        "ClientToken": "tok",
        "TagSpecifications": [
            {"ResourceType": "instance", "Tags": tags},
            {"ResourceType": "volume", "Tags": tags},
        ],
        "UserData": "#cloud-config\n",
        "BlockDeviceMappings": [
            {"DeviceName": "/dev/xvda", "Ebs": {"VolumeSize": 30, "DeleteOnTermination": True}}
        ],
        "ImageId": "ami-1",
        "InstanceType": "m6a.large",
        "KeyName": "kp",
        "CpuOptions": {"AmdSevSnp": "enabled"},
        "SubnetId": "subnet-1",
        "SecurityGroupIds": ["sg-1"],
    }


def test_launch_template_path_leaves_image_type_network_and_cpu_to_the_template() -> None:
    config = AwsConfig(
        image_id="", use_launch_template=True, launch_template_name="kata", subnet_id="subnet-1"
    )
    params = run_instances_params(config, _request(spec=InstanceSpec(instance_type="c5.large")), "tok", None)
    assert params["LaunchTemplate"] == {"LaunchTemplateName": "kata"}
    for key in ("ImageId", "InstanceType", "SubnetId", "CpuOptions", "BlockDeviceMappings"):
        assert key not in params


def test_addresses_and_readiness_are_parsed_from_ec2_answers() -> None:
    launched = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    raw: dict[str, Any] = {
        "InstanceId": "i-1",
        "State": {"Name": "pending"},
        "PrivateIpAddress": "10.0.1.5",
        "LaunchTime": launched,
        "Tags": [{"Key": "Name", "Value": "podvm-a"}],
        "NetworkInterfaces": [{"Attachment": {"DeviceIndex": 0}, "PrivateIpAddress": "10.0.1.5"}],
    }
    assert is_address_ready(raw, use_public_ip=False)
    assert not is_address_ready(raw, use_public_ip=True)
    instance = to_instance(raw, use_public_ip=False)
    assert (instance.id, instance.name, instance.created_at) == ("i-1", "podvm-a", launched.timestamp())
    assert instance.ips == (ipaddress.ip_address("10.0.1.5"),)

    raw["State"] = {"Name": "running"}
    raw["NetworkInterfaces"][0]["Association"] = {"PublicIp": "203.0.113.9"}
    assert is_address_ready(raw, use_public_ip=True)
    assert to_instance(raw, use_public_ip=True).ips == (
        ipaddress.ip_address("203.0.113.9"),
        ipaddress.ip_address("10.0.1.5"),
    )
    assert not is_address_ready({"InstanceId": "i-2", "PrivateIpAddress": "0.0.0.0"}, use_public_ip=False)


def test_instance_type_info_sums_gpus() -> None:
    raw = {
        "InstanceType": "p4d.24xlarge",
        "VCpuInfo": {"DefaultVCpus": 96},
        "MemoryInfo": {"SizeInMiB": 1179648},
        "GpuInfo": {"Gpus": [{"Count": 4}, {"Count": 4}]},
    }
    info = instance_type_info(raw)
    assert (info.name, info.vcpus, info.memory_mib, info.gpus) == ("p4d.24xlarge", 96, 1179648, 8)


# -- branches moto cannot produce -----------------------------------------------------------------------


class StubEc2:
    """Just enough of Ec2Port for create: no instance carries the token; launches answer ``launched``."""

    def __init__(self, launched: dict[str, Any]) -> None:
        self.launched = launched
        self.polls = 0

    async def run_instances(self, params: Any) -> dict[str, Any]:
        return self.launched

    async def describe_instances(self, *, instance_ids: Any = (), filters: Any = ()) -> list[dict[str, Any]]:
        if instance_ids:
            self.polls += 1
            return [self.launched]
        return []

    async def aclose(self) -> None:
        pass


def _stub_provider(stub: StubEc2) -> AwsProvider:
    config = AwsConfig(image_id="ami-1", root_volume_size=0, imds_disabled=True)
    return AwsProvider(config, ec2_factory=lambda _: stub, retry=FAST_RETRY, wait=FAST_WAIT)  # type: ignore[arg-type,return-value]


@pytest.mark.asyncio
async def test_an_instance_that_never_gets_an_address_is_a_bounded_temporary_error() -> None:
    stub = StubEc2({"InstanceId": "i-1", "State": {"Name": "pending"}})
    with pytest.raises(TemporaryProviderError, match="no IP address"):
        await _stub_provider(stub).create_instance(_request())
    assert stub.polls == 5


@pytest.mark.asyncio
async def test_a_token_answered_with_a_terminated_instance_is_a_permanent_error() -> None:
    stub = StubEc2({"InstanceId": "i-1", "State": {"Name": "terminated"}, "PrivateIpAddress": "10.0.0.1"})
    with pytest.raises(PermanentProviderError, match="new token"):
        await _stub_provider(stub).create_instance(_request())
