"""Units: configuration (Go keys, defaults and error texts), label encoding, the discovery validator,
the credential flows against the fake's token endpoint, and start-up imports."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from caa_provider_gcp.config import CONFIDENTIAL_TYPE_REQUIRED, GcpConfig
from caa_provider_gcp.labels import (
    KEY_PATTERN,
    VALUE_PATTERN,
    decode_value,
    encode_value,
    label_filter,
    labels_for,
    tags_from_labels,
)
from caa_provider_gcp.shapes import insert_request_id
from gcp_testkit import GcpWorld
from gcpfake import discovery
from gcpfake.auth import new_service_account

from cloud_api_adaptor.errors import ConfigError, PermanentProviderError
from cloud_api_adaptor.options import check_declarations, load
from cloud_api_adaptor.provider import TAG_CLUSTER, TAG_NODE, TAG_SANDBOX, CreateRequest, InstanceSpec

BASE_ENV = {
    "GCP_PROJECT_ID": "proj",
    "GCP_ZONE": "europe-west4-a",
    "GCP_NETWORK": "default",
    "PODVM_IMAGE_NAME": "podvm",
    "GCP_CONFIDENTIAL_TYPE": "sev",
    "GCP_MACHINE_TYPE": "n2d-standard-2",
}

# -- configuration -----------------------------------------------------------------------------------------


def test_declarations_and_go_defaults() -> None:
    assert check_declarations(GcpConfig) == []
    config = load(GcpConfig, BASE_ENV)
    assert config.confidential_type == "SEV"
    assert (config.disk_type, config.root_volume_size, config.use_public_ip) == ("pd-standard", 10, False)
    assert GcpConfig.__dataclass_fields__["machine_type"].default == "e2-medium"
    assert config.network_url == "projects/proj/global/networks/default"
    assert load(GcpConfig, {**BASE_ENV, "GCP_SUBNETWORK": "pods"}).subnetwork_url == (
        "projects/proj/regions/europe-west4/subnetworks/pods"
    )
    assert config.image_url() == "projects/proj/global/images/podvm"
    assert (
        config.image_url("projects/other/global/images/family/x") == "projects/other/global/images/family/x"
    )


def test_confidential_type_is_required_with_the_go_text() -> None:
    env = {k: v for k, v in BASE_ENV.items() if k != "GCP_CONFIDENTIAL_TYPE"}
    with pytest.raises(ConfigError) as info:
        load(GcpConfig, env)
    assert info.value.key == "GCP_CONFIDENTIAL_TYPE" and info.value.reason == CONFIDENTIAL_TYPE_REQUIRED
    assert load(GcpConfig, {**env, "DISABLECVM": "true", "GCP_MACHINE_TYPE": "e2-medium"}).disable_cvm


@pytest.mark.parametrize(
    ("changes", "key", "words"),
    [
        ({"GCP_CONFIDENTIAL_TYPE": "SGX"}, "GCP_CONFIDENTIAL_TYPE", "unknown value"),
        ({"GCP_MACHINE_TYPE": "e2-medium"}, "GCP_MACHINE_TYPE", "does not run SEV"),
        ({"GCP_INSTANCE_TYPES": "n2d-standard-4,c3-standard-4"}, "GCP_INSTANCE_TYPES", "does not run SEV"),
        (
            {"GCP_CONFIDENTIAL_TYPE": "TDX", "GCP_MACHINE_TYPE": "c3-standard-4"},
            "GCP_DISK_TYPE",
            "cannot attach pd-standard",
        ),
        ({"GCP_ZONE": "europe-west4"}, "GCP_ZONE", "invalid zone"),
        ({"GCP_CREDENTIALS": "{not json"}, "GCP_CREDENTIALS", "not valid JSON"),
        ({"GCP_CREDENTIALS": '{"type": "service_account"}'}, "GCP_CREDENTIALS", "lacks client_email"),
        ({"GCP_COMPUTE_ENDPOINT": "compute.internal"}, "GCP_COMPUTE_ENDPOINT", "http(s)://"),
    ],
)
def test_bad_settings_name_the_key(changes: dict[str, str], key: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(GcpConfig, {**BASE_ENV, **changes})
    assert info.value.key == key and words in info.value.reason


def test_the_credentials_never_show_in_repr_or_errors() -> None:
    key = new_service_account("proj").key_json("proj", "https://oauth2.googleapis.com/token")
    config = load(GcpConfig, {**BASE_ENV, "GCP_CREDENTIALS": key})
    assert "PRIVATE KEY" not in repr(config) and "credentials" not in repr(config)
    broken = key.replace('"private_key": "-----BEGIN PRIVATE KEY-----', '"private_key": "-----BEGIN X')
    from caa_provider_gcp.compute import make_credentials

    with pytest.raises(ConfigError) as info:
        make_credentials(dataclasses.replace(config, credentials=broken))
    assert "PRIVATE" not in str(info.value) and "MII" not in str(info.value)


# -- labels ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["node-a", "", "3f" * 32, "ip-10-0-0-1.ec2.internal", "Cluster_One", "x" * 63, "é", "a" * 200],
)
def test_label_values_fit_the_grammar_and_round_trip_when_they_can(value: str) -> None:
    encoded = encode_value(value)
    assert VALUE_PATTERN.fullmatch(encoded)
    assert decode_value(encoded) in (value, None)
    if len(value.encode()) <= 38 or (len(value) <= 126 and value.isalnum() and value == value.lower()):
        assert decode_value(encoded) == value


def test_owner_tags_and_user_tags_become_valid_labels() -> None:
    sid = "ab" * 32
    tags = {TAG_CLUSTER: "c", TAG_NODE: "n", TAG_SANDBOX: sid, "Cost.Center": "R&D", "9lives": "yes"}
    labels = labels_for(tags, f"{sid}-1")
    assert all(KEY_PATTERN.fullmatch(k) and VALUE_PATTERN.fullmatch(v) for k, v in labels.items())
    back = tags_from_labels(labels)
    assert back[TAG_SANDBOX] == sid and back["cost_center"] == "R&D" and back["t_9lives"] == "yes"
    assert label_filter({TAG_CLUSTER: "c", TAG_NODE: "n"}) == (
        '(labels.caa_cluster = "c") AND (labels.caa_node = "n")'
    )


def test_request_ids_are_stable_uuids_per_token() -> None:
    assert insert_request_id("a-0") == insert_request_id("a-0") != insert_request_id("a-1")
    assert insert_request_id("a-0") != "00000000-0000-0000-0000-000000000000"


# -- the discovery document --------------------------------------------------------------------------------


def test_the_validator_refuses_what_the_document_does() -> None:
    body = {
        "name": "Podvm",
        "networkInterfaces": [{"stackType": "IPV4_Only", "network": "global/networks/default"}],
        "confidentialInstanceConfig": {"confidentialInstanceType": "SGX"},
        "disks": [{"initializeParams": {"diskSizeGb": 20}}],
        "id": "1",
        "bogus": True,
    }
    problems = "\n".join(discovery.validate_body("compute.instances.insert", "Instance", body))
    for words in (
        "does not match",
        "'IPV4_Only' is not one of",
        "'SGX' is not one of",
        "diskSizeGb: expected a string",
        "output-only",
        "unknown field",
    ):
        assert words in problems
    assert discovery.validate_body("compute.instances.insert", "Instance", {}) == [
        "resource.name: required by compute.instances.insert"
    ]
    assert discovery.validate_parameters("instances", "insert", {"requestId": "x", "nope": "1"}) == [
        "query parameter 'nope' is not a parameter of instances.insert"
    ]


# -- credentials -------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_an_access_token_from_the_token_uri_is_accepted(world: GcpWorld) -> None:
    """The other google-auth flow: exchange a signed assertion at token_uri, then call with the token."""
    import google.auth.transport.requests
    from google.cloud import compute_v1
    from google.oauth2 import service_account

    info = json.loads(world.fake.key_json(world.url))
    creds = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
        info, scopes=["https://www.googleapis.com/auth/cloud-platform"]
    )
    creds.refresh(google.auth.transport.requests.Request())  # type: ignore[no-untyped-call]
    assert world.fake.accounts.exchanged == 1 and creds.token.startswith("ya29.fake-")
    client = compute_v1.ZonesClient(
        credentials=creds, transport="rest", client_options={"api_endpoint": world.url}
    )
    assert client.get(project="caa-test", zone="us-central1-a").status == "UP"


@pytest.mark.asyncio
async def test_application_default_credentials_from_a_key_file(
    world: GcpWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = tmp_path / "key.json"
    key.write_text(world.fake.key_json(world.url))
    key.chmod(0o600)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
    provider = world.provider(credentials="")
    try:
        assert (await provider.verify())[0].ok
    finally:
        await provider.aclose()
    assert world.fake.accounts.self_signed > 0


@pytest.mark.asyncio
async def test_a_key_the_cloud_does_not_know_is_rejected_as_permanent(world: GcpWorld) -> None:
    stranger = new_service_account("caa-test", "stranger").key_json("caa-test", f"{world.url}/token")
    provider = world.provider(credentials=stranger)
    try:
        request = CreateRequest(
            "podvm-x-12345678", "s", "s-0", InstanceSpec(), "#cloud-config\n", {TAG_NODE: "n"}
        )
        with pytest.raises(PermanentProviderError, match="401"):
            await provider.create_instance(request)
    finally:
        await provider.aclose()
    assert world.compute.live() == []


def test_loading_the_plugin_imports_no_google_library() -> None:
    probe = (
        "import json, sys\n"
        "from cloud_api_adaptor.plugins import load_plugin\n"
        "load_plugin('gcp')\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & {'google', 'googleapiclient'})))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True)
    assert json.loads(out.stdout) == []
