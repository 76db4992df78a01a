"""Units of the Azure provider: configuration keys, tag grammar, error classes, the VM body limits."""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

import pytest
from caa_provider_azure import PLUGIN, USERDATA_LIMIT, AzureConfig
from caa_provider_azure.errors import classify
from caa_provider_azure.shapes import encoded_userdata_size, image_reference
from caa_provider_azure.tags import decode, encode_value, matches, tags_for

from cloud_api_adaptor import plugins
from cloud_api_adaptor.errors import (
    ConfigError,
    InstanceNotFound,
    InvalidInput,
    PermanentProviderError,
    QuotaExceeded,
    TemporaryProviderError,
)
from cloud_api_adaptor.options import load
from cloud_api_adaptor.provider import TAG_CLUSTER, TAG_NODE, TAG_SANDBOX

SUB = "5d3b8a4e-2c1f-4f3a-9b7e-0a1b2c3d4e5f"
GROUP = f"/subscriptions/{SUB}/resourceGroups/rg"
ENV = {
    "AZURE_SUBSCRIPTION_ID": SUB,
    "AZURE_REGION": "eastus",
    "AZURE_RESOURCE_GROUP": "rg",
    "AZURE_SUBNET_ID": f"{GROUP}/providers/Microsoft.Network/virtualNetworks/v/subnets/s",
    "AZURE_IMAGE_ID": "/CommunityGalleries/cocopodvm-d0e4f35f/Images/podvm_image0/Versions/latest",
}


def config(**env: str) -> AzureConfig:
    return load(AzureConfig, {**ENV, **env})


def test_the_go_versions_keys_and_defaults_load() -> None:
    loaded = config()
    assert loaded.instance_size == "Standard_DC2as_v5"
    assert loaded.ssh_username == "peerpod"
    assert loaded.resource_manager_endpoint == "https://management.azure.com"
    assert not (loaded.disable_cvm or loaded.use_public_ip or loaded.enable_secure_boot)
    assert loaded.root_volume_size == 0
    assert config(AZURE_INSTANCE_SIZES="Standard_DC2as_v5,Standard_DC4as_v5").allowed_sizes == (
        "Standard_DC2as_v5",
        "Standard_DC4as_v5",
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("AZURE_SUBSCRIPTION_ID", "not-a-guid"),
        ("AZURE_REGION", "East US"),
        ("AZURE_SUBNET_ID", "/subscriptions/x/subnets/y"),
        ("AZURE_NSG_ID", "nsg"),
        ("AZURE_IMAGE_ID", "podvm-image"),
        ("AZURE_INSTANCE_SIZE", "DC2as v5"),
        ("SSH_USERNAME", "root"),
        ("AZURE_RESOURCE_MANAGER_ENDPOINT", "http://management.azure.com"),
        ("AZURE_AUTHORITY_HOST", "login.microsoftonline.com"),
        ("AZURE_CLIENT_SECRET", "a secret without its client and tenant"),
    ],
)
def test_a_bad_value_is_refused_naming_its_key(key: str, value: str) -> None:
    with pytest.raises(ConfigError) as err:
        config(**{key: value})
    assert err.value.key in (key, "AZURE_CLIENT_ID")


def test_the_secret_stays_out_of_repr() -> None:
    loaded = config(AZURE_CLIENT_SECRET="s3cr3t-value", AZURE_CLIENT_ID="c", AZURE_TENANT_ID="t")
    assert "s3cr3t-value" not in repr(loaded)


def test_the_entry_point_names_the_plugin() -> None:
    assert "azure" in plugins.installed_providers()
    assert plugins.load_plugin("azure") is PLUGIN
    assert PLUGIN.settings_class is AzureConfig


def test_owner_tags_travel_in_azure_grammar_and_read_back() -> None:
    owner = {TAG_CLUSTER: "c", TAG_NODE: "n", TAG_SANDBOX: "s" * 64}
    tags = tags_for({**owner, "a/b?c": "v"}, "token")
    assert set(tags) == {"caa-cluster", "caa-node", "caa-sandbox", "a_b_c", "caa-token"}
    assert matches(tags, owner)
    assert decode(tags) == {**owner, "a_b_c": "v"}
    assert encode_value("x" * 257).startswith("sha256:") and len(encode_value("x" * 257)) == 71


@pytest.mark.parametrize(
    "tags",
    [
        {"Microsoft.owner": "x"},
        {"k" * 513: "x"},
        {"a/b": "1", "a?b": "2"},
        {f"k{i}": "v" for i in range(50)},
    ],
)
def test_tags_azure_would_refuse_are_refused_naming_the_field(tags: dict[str, str]) -> None:
    with pytest.raises(InvalidInput) as err:
        tags_for(tags, "token")
    assert err.value.field == "tags"


@pytest.mark.parametrize(
    ("status", "code", "message", "kind"),
    [
        (429, "TooManyRequests", "slow down", TemporaryProviderError),
        (503, "", "unavailable", TemporaryProviderError),
        (200, "RetryableError", "retry", TemporaryProviderError),
        (409, "OperationNotAllowed", "since the VM is marked for deletion", TemporaryProviderError),
        (
            409,
            "OperationNotAllowed",
            "exceeding approved standardDCASv5Family Cores quota",
            QuotaExceeded,
        ),
        (409, "QuotaExceeded", "quota", QuotaExceeded),
        (409, "SkuNotAvailable", "not available", PermanentProviderError),
        (200, "AllocationFailed", "no capacity", PermanentProviderError),
        (400, "InvalidParameter", "bad", PermanentProviderError),
        (403, "AuthorizationFailed", "no rights", PermanentProviderError),
        (404, "ResourceNotFound", "gone", InstanceNotFound),
    ],
)
def test_arm_answers_are_classified_by_what_the_caller_should_do(
    status: int, code: str, message: str, kind: type[Exception]
) -> None:
    error = classify(status, code, message, "creating VM x", retry_after=3.0)
    assert type(error) is kind
    assert code in str(error) and message in str(error)
    if isinstance(error, TemporaryProviderError) and status == 429:
        assert error.retry_after == 3.0


def test_the_quota_error_names_the_quota_and_says_what_to_do() -> None:
    text = str(classify(409, "OperationNotAllowed", "exceeding approved cores quota", "creating VM x"))
    assert "cores quota" in text and "raise the subscription's quota" in text


def test_userdata_limit_is_64_kib_of_base64() -> None:
    assert encoded_userdata_size("x" * USERDATA_LIMIT) == 65536
    assert encoded_userdata_size("x" * (USERDATA_LIMIT + 1)) > 65536
    assert len(base64.b64encode(b"x" * USERDATA_LIMIT)) == 65536


def test_image_ids_become_the_right_image_reference() -> None:
    assert image_reference("/CommunityGalleries/g/Images/i/Versions/1") == {
        "communityGalleryImageId": "/CommunityGalleries/g/Images/i/Versions/1"
    }
    assert "sharedGalleryImageId" in image_reference("/SharedGalleries/g/Images/i")
    assert image_reference(f"{GROUP}/providers/Microsoft.Compute/galleries/g/images/i") == {
        "id": f"{GROUP}/providers/Microsoft.Compute/galleries/g/images/i"
    }


def test_plugin_build_makes_no_cloud_call(tmp_path: Any) -> None:
    from cloud_api_adaptor.provider import ProviderContext

    provider = PLUGIN.build(config(), ProviderContext("n", "c", tmp_path, tmp_path))
    assert provider.default_instance_type == "Standard_DC2as_v5"
    assert dataclasses.is_dataclass(provider.config)
