"""Certificate generation for the agent channel (ECDSA P-256, as the Go adaptor makes them).

A CA (Organization ``agent-protocol-forwarder``) issues one ServerAuth
certificate per pod VM, CN = DNS SAN = instance name; the daemon's client
certificate (Organization ``cloud-api-adaptor``) is self-signed and doubles as
the VMs' client CA.  Validity starts five minutes in the past (clock skew
between worker and a freshly booted VM) and lasts two years; a server
certificate never outlives its CA.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_ORG = "agent-protocol-forwarder"
CLIENT_ORG = "cloud-api-adaptor"
VALID_FOR = dt.timedelta(days=2 * 365)
CLOCK_SKEW = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class CertKeyPair:
    """A PEM certificate and its PEM (PKCS#8) private key; the key never appears in a repr."""

    cert_pem: bytes
    key_pem: bytes = field(repr=False)

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _builder(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
    )


def _usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def new_ca(org: str = CA_ORG, *, now: dt.datetime | None = None) -> CertKeyPair:
    """A self-signed ECDSA P-256 CA (Organization ``org``), valid two years from now - 5 min."""
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)])
    not_before = (now or _now()) - CLOCK_SKEW
    cert = (
        _builder(name, name, key)
        .not_valid_before(not_before)
        .not_valid_after(not_before + VALID_FOR)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_usage(cert_sign=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertKeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def issue_server_cert(
    ca: CertKeyPair,
    server_name: str,
    *,
    now: dt.datetime | None = None,
    ip_addresses: Sequence[IPv4Address | IPv6Address] = (),
) -> CertKeyPair:
    """A ServerAuth certificate for ``server_name`` (CN and DNS SAN) signed by ``ca``.

    ``ip_addresses`` become IP SANs too (a server that clients reach by address).

    Its validity is clamped to the CA's, so a VM never holds a certificate that
    outlives the authority that vouches for it.
    """
    if not server_name:
        raise ValueError("server name must not be empty")
    ca_cert = ca.certificate
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("CA key is not an ECDSA key")
    key = _new_key()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, CA_ORG),
            x509.NameAttribute(NameOID.COMMON_NAME, server_name),
        ]
    )
    not_before = max((now or _now()) - CLOCK_SKEW, ca_cert.not_valid_before_utc)
    not_after = min(not_before + VALID_FOR, ca_cert.not_valid_after_utc)
    cert = (
        _builder(subject, ca_cert.subject, key)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(server_name), *(x509.IPAddress(ip) for ip in ip_addresses)]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return CertKeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def new_client_cert(org: str = CLIENT_ORG, *, now: dt.datetime | None = None) -> CertKeyPair:
    """A self-signed ClientAuth certificate; the VM uses it as its client CA (as in Go)."""
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)])
    not_before = (now or _now()) - CLOCK_SKEW
    cert = (
        _builder(name, name, key)
        .not_valid_before(not_before)
        .not_valid_after(not_before + VALID_FOR)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertKeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))
