"""TLS both ends of the agent channel share: the profile and the SSL contexts.

The worker (``cloud_api_adaptor.proxy``) dials each pod VM's
agent-protocol-forwarder (``cloud_api_adaptor.vm``) over mutual TLS; both build
their contexts here, so they cannot disagree on versions or suites.

Profile parsing follows the Go rules (``pkg/util/tlsconfig``) and error texts so
an existing ``peer-pods-cm`` is accepted or rejected exactly as before.  Suites
are given as IANA names and mapped to OpenSSL names for ``set_ciphers``; TLS 1.3
suites cannot be configured through Python's ``ssl`` (as in Go), so they are
accepted and left to OpenSSL's defaults.
"""

from __future__ import annotations

import contextlib
import logging
import os
import ssl
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cloud_api_adaptor.errors import ConfigError
from cloud_api_adaptor.transport.certs import CertKeyPair

logger = logging.getLogger(__name__)

__all__ = ["CertKeyPair", "TlsProfile", "make_client_context", "make_server_context"]

VERSION_TLS12 = "VersionTLS12"
VERSION_TLS13 = "VersionTLS13"
MANUAL_SERVER_NAME = "podvm-server"

_VERSIONS = {VERSION_TLS12: ssl.TLSVersion.TLSv1_2, VERSION_TLS13: ssl.TLSVersion.TLSv1_3}
_REJECTED_VERSIONS = frozenset({"VersionTLS10", "VersionTLS11"})

# IANA name -> OpenSSL name; None marks a TLS 1.3 suite (not configurable, always on with 1.3).
# The names are those Go's crypto/tls knows, secure and insecure, plus Go's legacy
# CHACHA20 aliases, so every name the Go adaptor accepts is accepted here.
_IANA_TO_OPENSSL: dict[str, str | None] = {
    "TLS_AES_128_GCM_SHA256": None,
    "TLS_AES_256_GCM_SHA384": None,
    "TLS_CHACHA20_POLY1305_SHA256": None,
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_RSA_WITH_AES_128_CBC_SHA256": "AES128-SHA256",
    "TLS_RSA_WITH_RC4_128_SHA": "RC4-SHA",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA": "DES-CBC3-SHA",
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA": "ECDHE-ECDSA-RC4-SHA",
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA": "ECDHE-RSA-RC4-SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA": "ECDHE-RSA-DES-CBC3-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256": "ECDHE-ECDSA-AES128-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256": "ECDHE-RSA-AES128-SHA256",
}


# --------------------------------------------------------------------------- profile


@dataclass(frozen=True)
class TlsProfile:
    """A validated TLS profile: minimum version and (TLS 1.2) cipher suites by IANA name."""

    min_version: str = VERSION_TLS12
    cipher_suites: tuple[str, ...] = ()

    @classmethod
    def parse(
        cls,
        min_version: str,
        cipher_suites: Iterable[str],
        *,
        version_key: str = "TLS_MIN_VERSION",
        suites_key: str = "TLS_CIPHER_SUITES",
    ) -> TlsProfile | None:
        """Apply the Go rules; ``None`` when neither is set.  Errors name the key at fault."""
        version = min_version.strip()
        suites = tuple(s.strip() for s in cipher_suites if s.strip())
        if not version and not suites:
            return None
        if version in _REJECTED_VERSIONS:
            raise ConfigError(
                version_key,
                f'invalid TLS profile: invalid minVersion "{version}": TLS 1.0 and 1.1 are not supported, '
                "use VersionTLS12 or VersionTLS13",
            )
        if version and version not in _VERSIONS:
            raise ConfigError(
                version_key,
                f'invalid TLS profile: invalid minVersion "{version}": unknown tls version "{version}"',
            )
        version = version or VERSION_TLS12
        if version == VERSION_TLS13 and suites:
            raise ConfigError(
                suites_key,
                "invalid TLS profile: cipherSuites may not be specified when minVersion is VersionTLS13: "
                "TLS 1.3 cipher suites are not configurable",
            )
        for name in suites:
            if name not in _IANA_TO_OPENSSL:
                raise ConfigError(
                    suites_key,
                    "invalid TLS profile: invalid cipherSuites: "
                    f"Cipher suite {name} not supported or doesn't exist; "
                    f"valid names: {sorted(_IANA_TO_OPENSSL)}",
                )
        profile = cls(version, suites)
        try:
            profile.apply(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
        except ssl.SSLError as exc:
            raise ConfigError(
                suites_key,
                f"invalid TLS profile: invalid cipherSuites: none of {list(suites)} is available in this "
                f"OpenSSL build ({exc.reason})",
            ) from exc
        return profile

    @property
    def ssl_min_version(self) -> ssl.TLSVersion:
        return _VERSIONS[self.min_version]

    def openssl_ciphers(self) -> list[str]:
        """The TLS 1.2 suites as OpenSSL names (TLS 1.3 names dropped)."""
        out: list[str] = []
        for name in self.cipher_suites:
            mapped = _IANA_TO_OPENSSL[name]
            if mapped is not None and mapped not in out:
                out.append(mapped)
        return out

    def apply(self, ctx: ssl.SSLContext) -> None:
        """Raise the context's floor (never below TLS 1.2) and restrict the TLS 1.2 suites."""
        ctx.minimum_version = max(ctx.minimum_version, ssl.TLSVersion.TLSv1_2, self.ssl_min_version)
        if not self.cipher_suites:
            return
        names = self.openssl_ciphers()
        if names:
            ctx.set_ciphers(":".join(names))
        else:
            # Only TLS 1.3 suites were named: TLS 1.2 has none left, exactly as in Go.
            ctx.minimum_version = ssl.TLSVersion.TLSv1_3


# --------------------------------------------------------------------------- SSL contexts


@contextlib.contextmanager
def _pem_files(cert_pem: bytes, key_pem: bytes) -> Iterator[tuple[str, str]]:
    """Expose in-memory PEMs as paths for ``load_cert_chain`` without touching a disk.

    ``ssl`` only loads keys from files; an anonymous memfd keeps the key off the
    file system (fallback: a private temporary directory, removed at once).
    """
    memfd = getattr(os, "memfd_create", None)
    if memfd is not None:
        fds: list[int] = []
        try:
            for blob in (cert_pem, key_pem):
                fd = memfd("caa-tls", getattr(os, "MFD_CLOEXEC", 0))
                fds.append(fd)
                os.write(fd, blob)
            yield f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}"
        finally:
            for fd in fds:
                os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="caa-tls-") as tmp:  # pragma: no cover - non-Linux
        cert_path, key_path = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
        for path, blob in ((cert_path, cert_pem), (key_path, key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(blob)
        yield str(cert_path), str(key_path)


def _load_pair(ctx: ssl.SSLContext, pair: CertKeyPair, key: str) -> None:
    try:
        with _pem_files(pair.cert_pem, pair.key_pem) as (cert_path, key_path):
            ctx.load_cert_chain(cert_path, key_path)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(key, f"cannot load certificate and key: {exc}") from exc


def _load_ca(ctx: ssl.SSLContext, ca_pem: bytes, key: str) -> None:
    try:
        ctx.load_verify_locations(cadata=ca_pem.decode("ascii", errors="replace"))
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigError(key, f"cannot load CA certificates: {exc}") from exc


def _base_context(purpose: int) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # Go accepts the self-signed client certificate as a trust anchor even though
    # it carries no CA flag; strict RFC 5280 checking would reject it.
    ctx.verify_flags &= ~ssl.VERIFY_X509_STRICT
    return ctx


def make_client_context(
    *,
    ca_pem: bytes | None,
    client: CertKeyPair | None,
    profile: TlsProfile | None,
    skip_verify: bool = False,
    ca_key: str = "CACERT_FILE",
    cert_key: str = "CERT_FILE",
) -> ssl.SSLContext:
    """The dialling side: verify the server against ``ca_pem`` and present ``client``."""
    if ca_pem and skip_verify:
        raise ConfigError(
            "TLS_SKIP_VERIFY", "specifying a root certificates file with the insecure flag is not allowed"
        )
    ctx = _base_context(ssl.PROTOCOL_TLS_CLIENT)
    if skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif ca_pem:
        _load_ca(ctx, ca_pem, ca_key)
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if client is not None:
        _load_pair(ctx, client, cert_key)
    if profile is not None:
        profile.apply(ctx)
    return ctx


def make_server_context(
    *,
    server: CertKeyPair,
    client_ca_pem: bytes | None,
    profile: TlsProfile | None,
    ca_key: str = "ca-cert-file",
    cert_key: str = "cert-file",
) -> ssl.SSLContext:
    """The listening side; with a client CA, a verified client certificate is required."""
    ctx = _base_context(ssl.PROTOCOL_TLS_SERVER)
    _load_pair(ctx, server, cert_key)
    if client_ca_pem:
        _load_ca(ctx, client_ca_pem, ca_key)
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        logger.warning("no client CA configured: client certificates are not verified")
    if profile is not None:
        profile.apply(ctx)
    return ctx
