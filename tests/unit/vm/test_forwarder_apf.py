"""apf.json: Go-compatible encoding (order, indent, omitempty, base64, escaping) and strict decoding."""

from __future__ import annotations

import json
import logging

import pytest

from cloud_api_adaptor.apf import ApfConfig
from cloud_api_adaptor.errors import InvalidInput

NETWORK = {"podip": "10.244.1.5/24", "interface": "eth0", "mtu": 1450, "routes": [], "vxlan-id": 555000}


def test_minimal_config_matches_go_marshal_indent() -> None:
    text = ApfConfig(pod_namespace="default", pod_name="web").to_json()
    assert text == '{\n    "pod-network": null,\n    "pod-namespace": "default",\n    "pod-name": "web"\n}'


def test_full_config_keeps_go_field_order_and_encodings() -> None:
    cfg = ApfConfig(
        pod_namespace="ns",
        pod_name="p",
        pod_network=NETWORK,
        tls_server_key="K",
        tls_server_cert="C",
        tls_client_ca="CA",
        tls_min_version="VersionTLS12",
        tls_cipher_suites=("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",),
        sc_pp_prv=b"\x00\x01",
        sc_wn_pub=b"pub",
    )
    obj = json.loads(cfg.to_json())
    assert list(obj) == [
        "pod-network",
        "pod-namespace",
        "pod-name",
        "tls-server-key",
        "tls-server-cert",
        "tls-client-ca",
        "tls-min-version",
        "tls-cipher-suites",
        "sc-pp-prv",
        "sc-wn-pub",
    ]
    assert obj["sc-pp-prv"] == "AAE="
    assert obj["tls-cipher-suites"] == ["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"]
    assert cfg.to_json().splitlines()[1] == '    "pod-network": {'


def test_round_trip() -> None:
    cfg = ApfConfig(
        pod_namespace="ns",
        pod_name="p",
        pod_network=NETWORK,
        tls_server_cert="-----BEGIN CERTIFICATE-----\nabc\n-----END CERTIFICATE-----\n",
        tls_cipher_suites=("A", "B"),
        sc_wn_pub=b"\xff\x00",
    )
    assert ApfConfig.from_json(cfg.to_json()) == cfg


def test_html_sensitive_characters_are_escaped_like_go() -> None:
    text = ApfConfig(pod_name="a<b>&c\u2028").to_json()
    assert '"a\\u003cb\\u003e\\u0026c\\u2028"' in text
    assert ApfConfig.from_json(text).pod_name == "a<b>&c\u2028"


def test_from_mapping_accepts_the_tls_fields_dict() -> None:
    cfg = ApfConfig.from_mapping(
        {
            "pod-namespace": "ns",
            "pod-name": "p",
            "pod-network": None,
            "tls-cipher-suites": ["X"],
            "tls-client-ca": "C",
        }
    )
    assert cfg.tls_cipher_suites == ("X",)
    assert cfg.tls_client_ca == "C"
    assert cfg.pod_network is None


def test_go_written_file_with_nulls_and_legacy_keys_decodes() -> None:
    text = json.dumps(
        {"pod-network": None, "pod-namespace": "ns", "pod-name": "p", "tls-cipher-suites": None, "sc": False}
    )
    assert ApfConfig.from_json(text) == ApfConfig(pod_namespace="ns", pod_name="p")


def test_unknown_keys_are_ignored_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="cloud_api_adaptor.apf"):
        cfg = ApfConfig.from_json('{"pod-name": "p", "future-field": 1}')
    assert cfg.pod_name == "p"
    assert "future-field" in caplog.text


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('{"pod-name": 5}', "pod-name"),
        ('{"pod-network": []}', "pod-network"),
        ('{"tls-cipher-suites": "A,B"}', "tls-cipher-suites"),
        ('{"tls-cipher-suites": [1]}', "tls-cipher-suites"),
        ('{"sc-pp-prv": "%%%"}', "sc-pp-prv"),
        ('{"tls-server-key": true}', "tls-server-key"),
        ("[1, 2]", "apf.json"),
        ("{not json", "apf.json"),
    ],
)
def test_wrong_types_name_the_field(text: str, field: str) -> None:
    with pytest.raises(InvalidInput) as err:
        ApfConfig.from_json(text)
    assert err.value.field == field


def test_repr_hides_keys() -> None:
    cfg = ApfConfig(tls_server_key="-----BEGIN PRIVATE KEY-----", sc_pp_prv=b"secret")
    assert "PRIVATE KEY" not in repr(cfg)
    assert "secret" not in repr(cfg)
