"""A test certificate authority for fakes that must speak HTTPS on 127.0.0.1.

Cloud SDKs verify TLS: a fake cloud served over HTTPS with a certificate from
``TestCA`` lets the real credential flow and the real transport run, with the
SDK pointed at ``ca_file`` (``REQUESTS_CA_BUNDLE``, ``SSL_CERT_FILE`` or the
SDK's own option).
"""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path

from cloud_api_adaptor.transport.certs import CertKeyPair, issue_server_cert, new_ca

LOOPBACK = ipaddress.IPv4Address("127.0.0.1")


class TestCA:
    """A CA written to ``directory/ca.pem``, issuing server certificates for localhost and 127.0.0.1."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._directory = directory
        self._ca = new_ca("caa-test-ca")
        self.ca_file = directory / "ca.pem"
        self.ca_file.write_bytes(self._ca.cert_pem)

    def server_pair(
        self, name: str = "localhost", ip_addresses: tuple[ipaddress.IPv4Address, ...] = ()
    ) -> CertKeyPair:
        return issue_server_cert(self._ca, name, ip_addresses=(LOOPBACK, *ip_addresses))

    def server_context(
        self, name: str = "localhost", ip_addresses: tuple[ipaddress.IPv4Address, ...] = ()
    ) -> ssl.SSLContext:
        """A server context whose certificate is valid for ``name``, 127.0.0.1 and ``ip_addresses``."""
        pair = self.server_pair(name, ip_addresses)
        cert, key = self._directory / f"{name}.crt", self._directory / f"{name}.key"
        cert.write_bytes(pair.cert_pem)
        key.write_bytes(pair.key_pem)
        key.chmod(0o600)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        return context

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts this CA only."""
        return ssl.create_default_context(cafile=str(self.ca_file))
