"""The webhook's serving certificate: cert-manager's when mounted, else its own.

Own certificate: a CA and a serving certificate for the Service's DNS names,
kept in a Secret so every replica serves the same chain (a CA per replica would
leave the API server trusting only whichever replica patched last).  The first
replica to start creates the Secret; a replica that loses the create race reads
the winner's.  The CA is then patched into the MutatingWebhookConfiguration's
``caBundle``, again whenever the configuration is re-applied without it (a Helm
upgrade), by ``keep_ca_bundle``.

cert-manager: ``tls.crt``/``tls.key`` in the mounted directory, re-read into the
same SSL context when they change (cert-manager renews in place); its
cainjector fills the ``caBundle``.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import logging
import ssl
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.admissionregistration_v1 import MutatingWebhookConfiguration
from lightkube.resources.core_v1 import Secret
from lightkube.types import PatchType

from cloud_api_adaptor.transport.certs import CertKeyPair, new_ca
from cloud_api_adaptor.transport.tls import TlsProfile

logger = logging.getLogger(__name__)

CA_ORG = "cloud-api-adaptor-webhook"
VALID_FOR = dt.timedelta(days=365)
RENEW_BEFORE = dt.timedelta(days=30)
CA_KEY, CERT_KEY, KEY_KEY = "ca.crt", "tls.crt", "tls.key"


@dataclass(frozen=True)
class ServingChain:
    ca_pem: bytes
    pair: CertKeyPair


def service_hosts(service: str, namespace: str, extra: Sequence[str] = ()) -> tuple[str, ...]:
    """The names the API server dials a Service webhook by, plus ``extra``."""
    return (service, f"{service}.{namespace}", f"{service}.{namespace}.svc",
            f"{service}.{namespace}.svc.cluster.local", *extra)  # fmt: skip


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def issue_chain(hosts: Sequence[str], *, now: dt.datetime | None = None) -> ServingChain:
    """A new CA and a ServerAuth certificate it signs, for every name and address in ``hosts``."""
    now = now or dt.datetime.now(dt.UTC)
    ca = new_ca(CA_ORG, now=now)
    ca_cert = ca.certificate
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    not_before = ca_cert.not_valid_before_utc
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(min(not_before + VALID_FOR, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return ServingChain(ca.cert_pem, CertKeyPair(cert.public_bytes(serialization.Encoding.PEM), key_pem))


def chain_fits(chain: ServingChain, hosts: Sequence[str], *, now: dt.datetime | None = None) -> bool:
    """True if the certificate names every host and is not due for renewal."""
    now = now or dt.datetime.now(dt.UTC)
    cert = chain.pair.certificate
    if cert.not_valid_after_utc - RENEW_BEFORE < now:
        return False
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    present = {str(n) for n in names.get_values_for_type(x509.DNSName)}
    present |= {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    return all(str(_san(h).value) in present for h in hosts)


def _from_secret(secret: Secret) -> ServingChain | None:
    data = secret.data or {}
    if not all(k in data for k in (CA_KEY, CERT_KEY, KEY_KEY)):
        return None
    try:
        chain = ServingChain(
            base64.b64decode(data[CA_KEY]),
            CertKeyPair(base64.b64decode(data[CERT_KEY]), base64.b64decode(data[KEY_KEY])),
        )
        chain.pair.certificate  # noqa: B018 - parse check
    except ValueError:
        return None
    return chain


def _secret(name: str, namespace: str, chain: ServingChain, resource_version: str | None = None) -> Secret:
    def encode(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return Secret(
        metadata=ObjectMeta(name=name, namespace=namespace, resourceVersion=resource_version),
        type="kubernetes.io/tls",
        data={
            CA_KEY: encode(chain.ca_pem),
            CERT_KEY: encode(chain.pair.cert_pem),
            KEY_KEY: encode(chain.pair.key_pem),
        },
    )


async def shared_chain(client: AsyncClient, name: str, namespace: str, hosts: Sequence[str]) -> ServingChain:
    """The chain in Secret ``name``, created (or renewed) if missing or unfit; races end with one winner."""
    for _ in range(5):
        try:
            existing: Secret | None = await client.get(Secret, name, namespace=namespace)
        except ApiError as exc:
            if exc.status.code != 404:
                raise
            existing = None
        chain = _from_secret(existing) if existing is not None else None
        if chain is not None and chain_fits(chain, hosts):
            return chain
        fresh = issue_chain(hosts)
        try:
            if existing is None:
                await client.create(_secret(name, namespace, fresh))
            else:
                version = existing.metadata.resourceVersion if existing.metadata else None
                await client.replace(_secret(name, namespace, fresh, version))
        except ApiError as exc:
            if exc.status.code in {409, 404}:  # another replica won: read theirs
                continue
            raise
        logger.info("webhook: new serving certificate in Secret %s/%s", namespace, name)
        return fresh
    raise RuntimeError(f"could not settle the webhook certificate Secret {namespace}/{name}")


async def patch_ca_bundle(client: AsyncClient, config_name: str, ca_pem: bytes) -> bool:
    """Put ``ca_pem`` into every webhook of the configuration; False if the configuration does not exist."""
    try:
        config = await client.get(MutatingWebhookConfiguration, config_name)
    except ApiError as exc:
        if exc.status.code == 404:
            return False
        raise
    bundle = base64.b64encode(ca_pem).decode()
    ops = [
        {"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": bundle}
        for i, hook in enumerate(config.webhooks or ())
        if hook.clientConfig.caBundle != bundle
    ]
    if ops:
        version = config.metadata.resourceVersion if config.metadata else None
        ops.insert(0, {"op": "test", "path": "/metadata/resourceVersion", "value": version or ""})
        await client.patch(MutatingWebhookConfiguration, config_name, ops, patch_type=PatchType.JSON)
        logger.info("webhook: CA bundle set in MutatingWebhookConfiguration %s", config_name)
    return True


class ServerCertificate:
    """An SSL server context whose certificate can be swapped without restarting the server."""

    def __init__(self, profile: TlsProfile | None = None) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        (profile or TlsProfile()).apply(self.context)  # TLS_MIN_VERSION, TLS_CIPHER_SUITES (Go's rules)
        self._stamp: tuple[float, float] | None = None

    def load_pair(self, pair: CertKeyPair) -> None:
        """Load a certificate held in memory (written briefly to a private directory: ssl needs files)."""
        with tempfile.TemporaryDirectory(prefix="caa-webhook-") as directory:
            cert, key = Path(directory) / CERT_KEY, Path(directory) / KEY_KEY
            cert.write_bytes(pair.cert_pem)
            key.touch(mode=0o600)
            key.write_bytes(pair.key_pem)
            self.context.load_cert_chain(cert, key)

    def load_dir_if_changed(self, directory: Path) -> bool:
        """(Re)load ``tls.crt``/``tls.key`` from ``directory`` when they changed; False if absent."""
        cert, key = directory / CERT_KEY, directory / KEY_KEY
        try:
            stamp = (cert.stat().st_mtime, key.stat().st_mtime)
        except FileNotFoundError:
            return False
        if stamp != self._stamp:
            self.context.load_cert_chain(cert, key)
            self._stamp = stamp
            logger.info("webhook: serving certificate loaded from %s", directory)
        return True
