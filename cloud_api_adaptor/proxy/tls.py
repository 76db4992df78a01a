"""The worker's agent-channel TLS material: ``AgentTls`` (profiles and contexts: ``transport.tls``).

In automatic mode (no certificate files configured) the daemon owns a CA that
issues one server certificate per VM (CN = DNS SAN = instance name) and a
self-signed client certificate that the VM trusts as its client CA; both go to
the VM in apf.json.  The CA and the client certificate are persisted under
``<state_dir>/tls/`` so that VMs booted before a daemon restart still trust us
and are still trusted: sandboxes survive a restart only if this material does.
"""

from __future__ import annotations

import datetime as dt
import logging
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from cloud_api_adaptor.errors import ConfigError
from cloud_api_adaptor.fsutil import atomic_write, make_private_dirs
from cloud_api_adaptor.settings import TlsSettings
from cloud_api_adaptor.transport.certs import (
    CA_ORG,
    CLIENT_ORG,
    CertKeyPair,
    issue_server_cert,
    new_ca,
    new_client_cert,
)
from cloud_api_adaptor.transport.resume import ALPN as RESUME_ALPN
from cloud_api_adaptor.transport.tls import (
    MANUAL_SERVER_NAME,
    TlsProfile,
    make_client_context,
    make_server_context,
)

logger = logging.getLogger(__name__)

__all__ = [
    "CA_ORG",
    "CLIENT_ORG",
    "AgentTls",
    "CertKeyPair",
    "TlsProfile",
    "issue_server_cert",
    "make_client_context",
    "make_server_context",
    "new_ca",
    "new_client_cert",
]


# --------------------------------------------------------------------------- AgentTls


def _read(key: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror or exc}") from exc


def _check_pair(pair: CertKeyPair, key: str) -> CertKeyPair:
    try:
        x509.load_pem_x509_certificate(pair.cert_pem)
        serialization.load_pem_private_key(pair.key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(key, f"not a PEM certificate and key: {exc}") from exc
    return pair


class _MemoryStore:
    """Automatic-mode material that lives only as long as the process (``cloud-api-adaptor plan``)."""

    def load_or_create(self, name: str, make: Callable[[], CertKeyPair]) -> CertKeyPair:
        return make()


class _Store:
    """The persisted automatic-mode material: ``<state_dir>/tls/{ca,client}.{crt,key}``, mode 0600."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def load_or_create(self, name: str, make: Callable[[], CertKeyPair]) -> CertKeyPair:
        cert_path, key_path = self.directory / f"{name}.crt", self.directory / f"{name}.key"
        if cert_path.exists() and key_path.exists():
            pair = _check_pair(CertKeyPair(cert_path.read_bytes(), key_path.read_bytes()), "STATE_DIR")
            if pair.certificate.not_valid_after_utc > dt.datetime.now(dt.UTC) + dt.timedelta(days=1):
                logger.info("loaded persisted agent-channel %s certificate from %s", name, cert_path)
                return pair
            logger.warning("persisted agent-channel %s certificate expires soon; generating a new one", name)
        pair = make()
        try:
            make_private_dirs(self.directory)
            # Key first: a crash between the two writes leaves a key without a
            # certificate, which the check above treats as "absent".
            atomic_write(key_path, pair.key_pem, mode=0o600)
            atomic_write(cert_path, pair.cert_pem, mode=0o600)
        except OSError as exc:
            raise ConfigError(
                "STATE_DIR", f"cannot persist agent-channel TLS material in {self.directory}: {exc}"
            ) from exc
        logger.info("generated agent-channel %s certificate in %s", name, cert_path)
        return pair


class AgentTls:
    """The worker side's TLS material, built once at start-up and shared by every sandbox."""

    def __init__(
        self,
        *,
        disabled: bool = False,
        ca_service: CertKeyPair | None = None,
        trust_pem: bytes | None = None,
        client: CertKeyPair | None = None,
        profile: TlsProfile | None = None,
        skip_verify: bool = False,
        min_version: str = "",
        cipher_suites: tuple[str, ...] = (),
    ) -> None:
        self._disabled = disabled
        self._ca_service = ca_service
        self._trust_pem = trust_pem
        self._client = client
        self._profile = profile
        self._skip_verify = skip_verify
        self._min_version = min_version
        self._cipher_suites = cipher_suites
        self._context: ssl.SSLContext | None = None
        self._resumable_context: ssl.SSLContext | None = None
        if not disabled:
            self._context = make_client_context(
                ca_pem=None if skip_verify else trust_pem,
                client=client,
                profile=profile,
                skip_verify=skip_verify,
            )

    @classmethod
    def from_settings(cls, settings: TlsSettings, state_dir: Path | None) -> AgentTls:
        """Validate the profile, then load (manual) or load-or-create (automatic) the material.

        With ``state_dir`` None the automatic-mode material is made in memory and never
        written (what ``plan`` uses to size the userdata a VM would get).
        """
        profile = TlsProfile.parse(settings.min_version, settings.cipher_suites)
        min_version = settings.min_version.strip()
        suites = tuple(s.strip() for s in settings.cipher_suites if s.strip())
        if settings.disabled:
            logger.warning("TLS is disabled on the agent channel; -disable-tls must be set in the pod VM too")
            return cls(disabled=True, profile=profile, min_version=min_version, cipher_suites=suites)
        if settings.ca_cert_file and settings.skip_verify:
            raise ConfigError(
                "TLS_SKIP_VERIFY", "specifying a root certificates file with the insecure flag is not allowed"
            )
        store: _Store | _MemoryStore = _MemoryStore() if state_dir is None else _Store(state_dir / "tls")
        ca_service: CertKeyPair | None = None
        if settings.ca_cert_file:
            trust = _read("CACERT_FILE", settings.ca_cert_file)
        else:
            ca_service = store.load_or_create("ca", new_ca)
            trust = ca_service.cert_pem
        if bool(settings.cert_file) != bool(settings.cert_key):
            key = "CERT_KEY" if settings.cert_file else "CERT_FILE"
            raise ConfigError(key, "CERT_FILE and CERT_KEY must be given together")
        if settings.cert_file:
            client = _check_pair(
                CertKeyPair(_read("CERT_FILE", settings.cert_file), _read("CERT_KEY", settings.cert_key)),
                "CERT_FILE",
            )
        else:
            client = store.load_or_create("client", new_client_cert)
        if settings.skip_verify:
            logger.warning("TLS_SKIP_VERIFY is set: the pod VM's certificate is not verified")
        if profile is not None:
            logger.warning(
                "TLS profile (min version %s, %d cipher suites) is sent to pod VMs at creation and cannot "
                "change afterwards",
                profile.min_version,
                len(profile.cipher_suites),
            )
        return cls(
            ca_service=ca_service,
            trust_pem=trust,
            client=client,
            profile=profile,
            skip_verify=settings.skip_verify,
            min_version=min_version,
            cipher_suites=suites,
        )

    @property
    def is_enabled(self) -> bool:
        return not self._disabled

    @property
    def has_ca_service(self) -> bool:
        return self._ca_service is not None

    @property
    def ca_cert_pem(self) -> bytes | None:
        """The trust anchor for the VMs' server certificates (None when disabled)."""
        return None if self._disabled else self._trust_pem

    @property
    def client_cert_pem(self) -> bytes | None:
        return None if self._client is None else self._client.cert_pem

    def issue_server_cert(self, instance_name: str) -> CertKeyPair:
        if self._ca_service is None:
            raise RuntimeError("no CA service: certificates are provided manually")
        return issue_server_cert(self._ca_service, instance_name)

    def apf_tls_fields(self, instance_name: str) -> dict[str, Any]:
        """The apf.json TLS fields for a new VM, filled as the Go version fills them.

        ``tls-client-ca`` is our client certificate unless a CA file was given;
        server certificate and key only when we run the CA; the profile as configured.
        """
        if self._disabled:
            return {}
        fields: dict[str, Any] = {}
        if self._ca_service is not None:
            server = self.issue_server_cert(instance_name)
            fields["tls-server-cert"] = server.cert_pem.decode()
            fields["tls-server-key"] = server.key_pem.decode()
            if self._client is not None:
                fields["tls-client-ca"] = self._client.cert_pem.decode()
        if self._min_version:
            fields["tls-min-version"] = self._min_version
        if self._cipher_suites:
            fields["tls-cipher-suites"] = list(self._cipher_suites)
        return fields

    def client_context(self, *, resumable: bool = False) -> ssl.SSLContext | None:
        """The shared context for dialling forwarders; None when TLS is disabled.

        ``resumable``: a second context that offers the resumable agent channel by
        ALPN (a context's ALPN list is shared by every connection made with it).
        """
        if not resumable or self._context is None:
            return self._context
        if self._resumable_context is None:
            ctx = make_client_context(
                ca_pem=None if self._skip_verify else self._trust_pem,
                client=self._client,
                profile=self._profile,
                skip_verify=self._skip_verify,
            )
            ctx.set_alpn_protocols([RESUME_ALPN])
            self._resumable_context = ctx
        return self._resumable_context

    def server_hostname(self, instance_name: str) -> str:
        """The name the VM's certificate must carry: the instance name with our CA, else ``podvm-server``."""
        return instance_name if self._ca_service is not None else MANUAL_SERVER_NAME

    def __repr__(self) -> str:
        mode = "disabled" if self._disabled else ("automatic" if self._ca_service else "manual")
        return (
            f"AgentTls(mode={mode}, skip_verify={self._skip_verify}, min_version={self._min_version!r}, "
            f"cipher_suites={len(self._cipher_suites)}, keys=<redacted>)"
        )
