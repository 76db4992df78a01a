"""Certificates, SSL contexts and AgentTls: chains verify, material persists, manual mode loads files."""

from __future__ import annotations

import datetime as dt
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cloud_api_adaptor.errors import ConfigError
from cloud_api_adaptor.proxy.tls import (
    AgentTls,
    CertKeyPair,
    TlsProfile,
    issue_server_cert,
    make_client_context,
    make_server_context,
    new_ca,
    new_client_cert,
)
from cloud_api_adaptor.settings import TlsSettings

T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def handshake(client: ssl.SSLContext, server: ssl.SSLContext, hostname: str | None) -> None:
    """Run a TLS handshake in memory; raises ssl.SSLError on refusal by either side."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(c_in, c_out, server_side=False, server_hostname=hostname)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    c_done = s_done = False
    for _ in range(20):
        if not c_done:
            try:
                c.do_handshake()
                c_done = True
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        if not s_done:
            try:
                s.do_handshake()
                s_done = True
            except ssl.SSLWantReadError:
                pass
        c_in.write(s_out.read())
        if c_done and s_done:
            # TLS 1.3: the server verifies the client certificate after the client is "done";
            # exchange application data so a refusal surfaces on both sides.
            c.write(b"ping")
            s_in.write(c_out.read())
            assert s.read(4) == b"ping"
            return
    raise AssertionError("handshake did not finish")


def org(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value)


def test_ca_is_a_p256_self_signed_authority_valid_from_five_minutes_ago() -> None:
    ca = new_ca(now=T0).certificate
    assert org(ca) == "agent-protocol-forwarder"
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    key = ca.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert key.curve.name == "secp256r1"
    assert ca.not_valid_before_utc == T0 - dt.timedelta(minutes=5)
    assert ca.not_valid_after_utc == T0 - dt.timedelta(minutes=5) + dt.timedelta(days=730)
    ca.verify_directly_issued_by(ca)


def test_server_certificate_names_the_instance_and_chains_to_the_ca() -> None:
    ca = new_ca(now=T0)
    server = issue_server_cert(ca, "podvm-web-1a2b3c", now=T0).certificate
    assert server.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "podvm-web-1a2b3c"
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["podvm-web-1a2b3c"]
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    server.verify_directly_issued_by(ca.certificate)


def test_server_certificate_validity_is_clamped_to_the_cas() -> None:
    ca = new_ca(now=T0)
    late = issue_server_cert(ca, "vm", now=T0 + dt.timedelta(days=700)).certificate
    assert late.not_valid_after_utc == ca.certificate.not_valid_after_utc
    early = issue_server_cert(ca, "vm", now=T0 - dt.timedelta(days=1)).certificate
    assert early.not_valid_before_utc == ca.certificate.not_valid_before_utc


def test_client_certificate_is_self_signed_for_client_auth() -> None:
    client = new_client_cert(now=T0).certificate
    assert org(client) == "cloud-api-adaptor"
    eku = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    client.verify_directly_issued_by(client)
    assert client.not_valid_before_utc == T0 - dt.timedelta(minutes=5)


def contexts(name: str = "vm-1") -> tuple[CertKeyPair, CertKeyPair, ssl.SSLContext, ssl.SSLContext]:
    ca, client = new_ca(), new_client_cert()
    server_ctx = make_server_context(
        server=issue_server_cert(ca, name), client_ca_pem=client.cert_pem, profile=None
    )
    client_ctx = make_client_context(ca_pem=ca.cert_pem, client=client, profile=None)
    return ca, client, server_ctx, client_ctx


def test_mutual_tls_handshake_succeeds_with_generated_material() -> None:
    _, _, server_ctx, client_ctx = contexts("vm-1")
    handshake(client_ctx, server_ctx, "vm-1")


def test_client_refuses_a_server_certificate_for_another_name() -> None:
    _, _, server_ctx, client_ctx = contexts("vm-1")
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(client_ctx, server_ctx, "vm-2")


def test_server_refuses_a_client_without_a_certificate() -> None:
    ca, _, server_ctx, _ = contexts("vm-1")
    anonymous = make_client_context(ca_pem=ca.cert_pem, client=None, profile=None)
    with pytest.raises(ssl.SSLError):
        handshake(anonymous, server_ctx, "vm-1")


def test_server_refuses_a_client_certificate_it_does_not_trust() -> None:
    ca, _, server_ctx, _ = contexts("vm-1")
    stranger = make_client_context(ca_pem=ca.cert_pem, client=new_client_cert(), profile=None)
    with pytest.raises(ssl.SSLError):
        handshake(stranger, server_ctx, "vm-1")


def test_profile_min_version_is_enforced_on_contexts() -> None:
    profile = TlsProfile.parse("VersionTLS13", [])
    ca, client = new_ca(), new_client_cert()
    server_ctx = make_server_context(
        server=issue_server_cert(ca, "vm"), client_ca_pem=client.cert_pem, profile=profile
    )
    tls12_client = make_client_context(ca_pem=ca.cert_pem, client=client, profile=None)
    tls12_client.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        handshake(tls12_client, server_ctx, "vm")


# ---------------------------------------------------------------------------- AgentTls


def test_automatic_mode_persists_ca_and_client_certificate(tmp_path: Path) -> None:
    first = AgentTls.from_settings(TlsSettings(), tmp_path)
    second = AgentTls.from_settings(TlsSettings(), tmp_path)
    assert first.has_ca_service and second.has_ca_service
    assert first.ca_cert_pem == second.ca_cert_pem
    assert first.client_cert_pem == second.client_cert_pem
    for name in ("ca.crt", "ca.key", "client.crt", "client.key"):
        mode = stat.S_IMODE((tmp_path / "tls" / name).stat().st_mode)
        assert mode == 0o600, name


def test_a_vm_configured_before_a_restart_still_handshakes_after_it(tmp_path: Path) -> None:
    before = AgentTls.from_settings(TlsSettings(), tmp_path)
    fields = before.apf_tls_fields("podvm-a")
    after = AgentTls.from_settings(TlsSettings(), tmp_path)
    server_ctx = make_server_context(
        server=CertKeyPair(fields["tls-server-cert"].encode(), fields["tls-server-key"].encode()),
        client_ca_pem=fields["tls-client-ca"].encode(),
        profile=None,
    )
    client_ctx = after.client_context()
    assert client_ctx is not None
    handshake(client_ctx, server_ctx, after.server_hostname("podvm-a"))


def test_apf_fields_in_automatic_mode(tmp_path: Path) -> None:
    tls = AgentTls.from_settings(
        TlsSettings(min_version="VersionTLS12", cipher_suites=("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",)),
        tmp_path,
    )
    fields = tls.apf_tls_fields("podvm-b")
    assert set(fields) == {
        "tls-server-cert",
        "tls-server-key",
        "tls-client-ca",
        "tls-min-version",
        "tls-cipher-suites",
    }
    assert fields["tls-client-ca"].encode() == tls.client_cert_pem
    assert fields["tls-min-version"] == "VersionTLS12"
    assert fields["tls-cipher-suites"] == ["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"]
    cert = x509.load_pem_x509_certificate(fields["tls-server-cert"].encode())
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    ) == ["podvm-b"]
    assert tls.server_hostname("podvm-b") == "podvm-b"


def test_disabled_tls_sends_nothing_and_dials_plain(tmp_path: Path) -> None:
    tls = AgentTls.from_settings(TlsSettings(disabled=True), tmp_path)
    assert tls.apf_tls_fields("vm") == {}
    assert tls.client_context() is None
    assert not (tmp_path / "tls").exists()


def write_pair(directory: Path, name: str, pair: CertKeyPair) -> tuple[str, str]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    cert.write_bytes(pair.cert_pem)
    key.write_bytes(pair.key_pem)
    return str(cert), str(key)


def test_manual_mode_loads_files_and_uses_the_fixed_server_name(tmp_path: Path) -> None:
    ca = new_ca()
    ca_file, _ = write_pair(tmp_path, "ca", ca)
    cert_file, key_file = write_pair(tmp_path, "client", new_client_cert())
    tls = AgentTls.from_settings(
        TlsSettings(ca_cert_file=ca_file, cert_file=cert_file, cert_key=key_file), tmp_path / "state"
    )
    assert not tls.has_ca_service
    assert tls.server_hostname("anything") == "podvm-server"
    assert tls.apf_tls_fields("vm") == {}
    assert tls.ca_cert_pem == ca.cert_pem
    server_ctx = make_server_context(
        server=issue_server_cert(ca, "podvm-server"), client_ca_pem=Path(cert_file).read_bytes(), profile=None
    )
    client_ctx = tls.client_context()
    assert client_ctx is not None
    handshake(client_ctx, server_ctx, "podvm-server")
    assert not (tmp_path / "state" / "tls" / "ca.key").exists()


def test_ca_file_with_skip_verify_is_refused(tmp_path: Path) -> None:
    ca_file, _ = write_pair(tmp_path, "ca", new_ca())
    with pytest.raises(ConfigError) as err:
        AgentTls.from_settings(TlsSettings(ca_cert_file=ca_file, skip_verify=True), tmp_path)
    assert "specifying a root certificates file with the insecure flag is not allowed" in str(err.value)


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        (TlsSettings(ca_cert_file="/nonexistent/ca.crt"), "CACERT_FILE"),
        (TlsSettings(cert_file="/nonexistent/c.crt", cert_key="/nonexistent/c.key"), "CERT_FILE"),
        (TlsSettings(cert_file="/nonexistent/c.crt"), "CERT_KEY"),
        (TlsSettings(min_version="VersionTLS10"), "TLS_MIN_VERSION"),
    ],
)
def test_manual_mode_errors_name_the_key(settings: TlsSettings, key: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        AgentTls.from_settings(settings, tmp_path)
    assert err.value.key == key


def test_garbage_in_a_cert_file_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    with pytest.raises(ConfigError) as err:
        AgentTls.from_settings(TlsSettings(cert_file=str(bad), cert_key=str(bad)), tmp_path)
    assert err.value.key == "CERT_FILE"


def test_skip_verify_in_automatic_mode_dials_without_verifying(tmp_path: Path) -> None:
    tls = AgentTls.from_settings(TlsSettings(skip_verify=True), tmp_path)
    ctx = tls.client_context()
    assert ctx is not None
    assert ctx.verify_mode == ssl.CERT_NONE
    assert "tls-server-cert" in tls.apf_tls_fields("vm")


def test_secrets_never_appear_in_reprs(tmp_path: Path) -> None:
    tls = AgentTls.from_settings(TlsSettings(), tmp_path)
    pair = new_client_cert()
    assert "PRIVATE KEY" not in repr(tls)
    assert "PRIVATE KEY" not in repr(pair)
    assert "redacted" in repr(tls)
