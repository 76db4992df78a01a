"""Pure parts of the IBM providers: tag grammar, error classification, request shapes."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests
from caa_provider_ibmcloud.errors import NameInUse, retry_after, translate
from caa_provider_ibmcloud.shapes import ProfileSpec, addresses_ready, confidential_settings, instance_ips
from caa_provider_ibmcloud.tags import (
    TAG_GRAMMAR,
    owner_tag,
    read_owner_tags,
    request_tags,
    search_query,
    user_tag,
)
from ibm_cloud_sdk_core import ApiException

from cloud_api_adaptor.errors import (
    InstanceNotFound,
    PermanentProviderError,
    QuotaExceeded,
    TemporaryProviderError,
)
from cloud_api_adaptor.provider import TAG_CLUSTER, TAG_NODE, TAG_SANDBOX


def api_error(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> ApiException:
    response = requests.Response()
    response.status_code = status
    response._content = json.dumps(body).encode()
    response.headers.update(headers or {})
    return ApiException(status, http_response=response)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (TAG_CLUSTER, "Prod/Cluster#1"),
        (TAG_NODE, "n" * 200),
        (TAG_SANDBOX, "a" * 64),
        ("team", "Blue Sky/ops"),
        (TAG_NODE, "sha-looks-like-a-digest"),
    ],
)
def test_every_tag_fits_ibm_grammar_and_a_query_finds_it_again(key: str, value: str) -> None:
    tag = owner_tag(key, value)
    assert TAG_GRAMMAR.match(tag) and tag == tag.lower()
    if key.startswith("caa."):
        assert read_owner_tags([tag], {key: value}) == {key: value}


def test_readable_owner_values_are_read_back_without_being_asked() -> None:
    tags = request_tags({TAG_CLUSTER: "c1", TAG_NODE: "node-a.example", TAG_SANDBOX: "ab" * 32})
    assert read_owner_tags(tags) == {TAG_CLUSTER: "c1", TAG_NODE: "node-a.example", TAG_SANDBOX: "ab" * 32}
    assert read_owner_tags([owner_tag(TAG_CLUSTER, "UPPER")]) == {}


def test_user_tags_are_lower_cased_and_cleaned() -> None:
    assert user_tag("Team", "Blue/Sky") == "team:blue-sky"
    assert len(user_tag("k", "v" * 300)) == 128


def test_search_query_shape() -> None:
    query = search_query({TAG_NODE: "n1", TAG_CLUSTER: "c1"}, ("instance", "volume"), "is")
    assert (
        query
        == 'family:is AND (type:instance OR type:volume) AND tags:"caa-cluster:c1" AND tags:"caa-node:n1"'
    )


def test_errors_are_classified_by_what_the_caller_should_do() -> None:
    throttled = translate(
        api_error(429, {"errors": [{"code": "too_many", "message": "slow"}]}, {"Retry-After": "7"}), "op"
    )
    assert isinstance(throttled, TemporaryProviderError) and throttled.retry_after == 7.0
    assert isinstance(translate(api_error(503, {}), "op"), TemporaryProviderError)
    assert isinstance(translate(api_error(404, {"errors": [{"code": "not_found"}]}), "op"), InstanceNotFound)
    name = api_error(400, {"errors": [{"code": "validation_unique_failed", "message": "not unique"}]})
    assert isinstance(translate(name, "op"), NameInUse)
    quota = translate(api_error(400, {"errors": [{"code": "over_quota", "message": "instances"}]}), "op")
    assert isinstance(quota, QuotaExceeded) and "quota" in str(quota)
    capacity = translate(api_error(400, {"errors": [{"code": "insufficient_capacity"}]}), "op")
    assert type(capacity) is PermanentProviderError and "capacity" in str(capacity)
    denied = translate(api_error(403, {"errors": [{"code": "forbidden", "message": "no"}]}), "op")
    assert type(denied) is PermanentProviderError and "API key or trusted profile" in str(denied)
    assert isinstance(translate(requests.ConnectionError("reset"), "op"), TemporaryProviderError)
    assert isinstance(translate(requests.exceptions.SSLError("bad cert"), "op"), PermanentProviderError)


def test_retry_after_takes_seconds_or_an_http_date() -> None:
    assert retry_after({"Retry-After": "2"}) == 2.0
    assert retry_after({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert retry_after({}) is None and retry_after({"Retry-After": "soon"}) is None


def test_confidential_settings_follow_architecture_and_disablecvm() -> None:
    amd = ProfileSpec("bx3dc-2x10", 2, 10240, 0, "amd64", ("disabled", "tdx"), (False, True))
    z = ProfileSpec("bz2e-2x8", 2, 8192, 0, "s390x", ("disabled",), (False,))
    assert confidential_settings(False, amd) == {
        "confidential_compute_mode": "tdx",
        "enable_secure_boot": True,
    }
    assert confidential_settings(False, z) == {}
    assert confidential_settings(True, z) == {
        "confidential_compute_mode": "disabled",
        "enable_secure_boot": False,
    }


def test_addresses_wait_for_every_interface_and_keep_the_primary_first() -> None:
    raw = {
        "primary_network_interface": {"id": "a", "primary_ip": {"address": "10.0.0.5"}},
        "network_interfaces": [
            {"id": "b", "primary_ip": {"address": "0.0.0.0"}},
            {"id": "a", "primary_ip": {"address": "10.0.0.5"}},
        ],
    }
    assert not addresses_ready(raw)
    raw["network_interfaces"][0]["primary_ip"]["address"] = "10.0.1.9"
    assert addresses_ready(raw)
    assert [str(ip) for ip in instance_ips(raw)] == ["10.0.0.5", "10.0.1.9"]
