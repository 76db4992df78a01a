"""TLS profile parsing follows the Go adaptor's rules and error texts (a peer-pods-cm keeps working)."""

from __future__ import annotations

import ssl

import pytest

from cloud_api_adaptor.errors import ConfigError
from cloud_api_adaptor.transport.tls import TlsProfile


def test_empty_version_and_no_suites_means_no_profile() -> None:
    assert TlsProfile.parse("", []) is None
    assert TlsProfile.parse("  ", ["", "  "]) is None


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("VersionTLS12", ssl.TLSVersion.TLSv1_2),
        ("VersionTLS13", ssl.TLSVersion.TLSv1_3),
        (" VersionTLS13 ", ssl.TLSVersion.TLSv1_3),
    ],
)
def test_supported_versions_parse(version: str, expected: ssl.TLSVersion) -> None:
    profile = TlsProfile.parse(version, [])
    assert profile is not None
    assert profile.ssl_min_version == expected
    assert profile.cipher_suites == ()


@pytest.mark.parametrize("version", ["VersionTLS10", "VersionTLS11"])
def test_tls10_and_tls11_are_rejected(version: str) -> None:
    with pytest.raises(ConfigError) as err:
        TlsProfile.parse(version, [])
    assert err.value.key == "TLS_MIN_VERSION"
    assert err.value.reason.startswith("invalid TLS profile: ")
    assert "TLS 1.0 and 1.1 are not supported" in err.value.reason


@pytest.mark.parametrize("version", ["VersionTLS99", "TLS1.2", "1.3"])
def test_unknown_versions_are_rejected(version: str) -> None:
    with pytest.raises(ConfigError) as err:
        TlsProfile.parse(version, [])
    assert err.value.key == "TLS_MIN_VERSION"
    assert f'invalid minVersion "{version}"' in err.value.reason


def test_valid_suites_keep_their_order_and_map_to_openssl_names() -> None:
    profile = TlsProfile.parse(
        "VersionTLS12", ["TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"]
    )
    assert profile is not None
    assert profile.cipher_suites == (
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    )
    assert profile.openssl_ciphers() == ["ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES128-GCM-SHA256"]


def test_suite_names_are_trimmed_and_empty_names_dropped() -> None:
    profile = TlsProfile.parse("VersionTLS12", [" TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 ", "", "  "])
    assert profile is not None
    assert profile.cipher_suites == ("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",)


def test_unknown_suite_names_are_an_error_naming_the_suites_key() -> None:
    with pytest.raises(ConfigError) as err:
        TlsProfile.parse("VersionTLS12", ["INVALID_CIPHER_SUITE"])
    assert err.value.key == "TLS_CIPHER_SUITES"
    assert "invalid cipherSuites" in err.value.reason
    assert "INVALID_CIPHER_SUITE" in err.value.reason


def test_suites_with_tls13_are_an_error() -> None:
    with pytest.raises(ConfigError) as err:
        TlsProfile.parse("VersionTLS13", ["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"])
    assert err.value.key == "TLS_CIPHER_SUITES"
    assert "may not be specified when minVersion is VersionTLS13" in err.value.reason


def test_empty_version_with_suites_means_tls12() -> None:
    profile = TlsProfile.parse("", ["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"])
    assert profile is not None
    assert profile.min_version == "VersionTLS12"
    assert profile.ssl_min_version == ssl.TLSVersion.TLSv1_2


def test_error_keys_can_be_renamed_for_the_forwarder() -> None:
    with pytest.raises(ConfigError) as err:
        TlsProfile.parse("VersionTLS11", [], version_key="tls-min-version", suites_key="tls-cipher-suites")
    assert err.value.key == "tls-min-version"


def test_apply_never_lowers_the_floor_below_tls12_and_restricts_tls12_suites() -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # floor: MINIMUM_SUPPORTED
    profile = TlsProfile.parse("", ["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"])
    assert profile is not None
    profile.apply(ctx)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    tls12 = {c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert tls12 == {"ECDHE-ECDSA-AES128-GCM-SHA256"}


def test_tls13_only_suite_names_leave_no_tls12_suites() -> None:
    profile = TlsProfile.parse("VersionTLS12", ["TLS_AES_128_GCM_SHA256"])
    assert profile is not None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    profile.apply(ctx)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3


def test_tls13_profile_raises_the_floor() -> None:
    profile = TlsProfile.parse("VersionTLS13", [])
    assert profile is not None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    profile.apply(ctx)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
