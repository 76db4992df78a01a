"""A real Kubernetes control plane on 127.0.0.1 for the tests: etcd, kube-apiserver, and
kube-controller-manager on demand.

No scheduler and no kubelet: tests create Node objects and pods bound with ``nodeName``
themselves.  Certificates are generated per run (a CA, a serving certificate for
127.0.0.1/localhost, an admin client certificate in ``system:masters``), plus static
bearer tokens for a few service-account identities so least-privilege RBAC can be
exercised with the deploy/ roles.  See docs/kubernetes.md and
../shared/reference/kubernetes-in-tests.md for the measured recipe.
"""

from __future__ import annotations

import contextlib
import datetime
import http.client
import ipaddress
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from cloud_api_adaptor.testing.eventually import eventually_sync

ROOT = Path(__file__).resolve().parents[2]
KUBE_VERSION = "v1.37.2"
BUILD_SCRIPT = ROOT / "scripts" / "build-kube.sh"
BUILD_TIMEOUT = 1800.0  # a cold build is 5-10 min on 2 cores; far above that is a hang
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0

#: identities with static bearer tokens: name -> (user, groups)
SERVICE_ACCOUNT_USERS: Mapping[str, tuple[str, tuple[str, ...]]] = {
    "daemon": (
        "system:serviceaccount:confidential-containers-system:cloud-api-adaptor",
        ("system:serviceaccounts", "system:serviceaccounts:confidential-containers-system"),
    ),
    "controller": (
        "system:serviceaccount:confidential-containers-system:peerpod-controller",
        ("system:serviceaccounts", "system:serviceaccounts:confidential-containers-system"),
    ),
    "webhook": (
        "system:serviceaccount:confidential-containers-system:peerpod-webhook",
        ("system:serviceaccounts", "system:serviceaccounts:confidential-containers-system"),
    ),
}


class KubeUnavailable(RuntimeError):
    """The binaries are missing and cannot be built here; the message says why."""


def kube_binaries() -> Path:
    """The directory holding kube-apiserver and kube-controller-manager, built if missing."""
    if shutil.which("go") is None and not _cached_dir().joinpath("kube-apiserver").is_file():
        raise KubeUnavailable(
            "kube-apiserver is not built and Go is not installed (see scripts/build-kube.sh)"
        )
    if shutil.which("etcd") is None:
        raise KubeUnavailable("etcd is not installed (Debian package etcd-server: run `make deps` as root)")
    proc = subprocess.run(
        ["bash", os.fspath(BUILD_SCRIPT)],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
        env={**os.environ, "KUBE_VERSION": KUBE_VERSION},
    )
    if proc.returncode != 0:
        raise KubeUnavailable(f"scripts/build-kube.sh failed (exit {proc.returncode}): {proc.stderr[-3000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


def binaries_cached() -> bool:
    return all((_cached_dir() / name).is_file() for name in ("kube-apiserver", "kube-controller-manager"))


def _cached_dir() -> Path:
    base = os.environ.get("CAA_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "cloud-api-adaptor"
    )
    return Path(base) / "k8s" / KUBE_VERSION


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# ---- certificates ----------------------------------------------------------------------------


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _issue(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer or (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        sans: list[x509.GeneralName] = [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.DNSName("kubernetes.default.svc"),
            x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
        ]
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass
class Pki:
    """The per-run certificates, as files under ``dir``."""

    dir: Path
    ca_cert: Path = field(init=False)
    ca_key: Path = field(init=False)
    serving_cert: Path = field(init=False)
    serving_key: Path = field(init=False)
    admin_cert: Path = field(init=False)
    admin_key: Path = field(init=False)
    sa_key: Path = field(init=False)
    sa_pub: Path = field(init=False)

    def __post_init__(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = _issue(_name("caa-test-ca"), ca_key, None, ca=True)
        files: dict[str, bytes] = {
            "ca.crt": ca.public_bytes(serialization.Encoding.PEM),
            "ca.key": _pem_key(ca_key),
        }
        for stem, subject, server in (
            ("serving", _name("kube-apiserver"), True),
            ("admin", _name("caa-test-admin", "system:masters"), False),
        ):
            key = ec.generate_private_key(ec.SECP256R1())
            cert = _issue(subject, key, (ca.subject, ca_key), server=server)
            files[f"{stem}.crt"] = cert.public_bytes(serialization.Encoding.PEM)
            files[f"{stem}.key"] = _pem_key(key)
        sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        files["sa.key"] = _pem_key(sa)
        files["sa.pub"] = sa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        for name, data in files.items():
            path = self.dir / name
            path.write_bytes(data)
            path.chmod(0o600)
        self.ca_cert, self.ca_key = self.dir / "ca.crt", self.dir / "ca.key"
        self.serving_cert, self.serving_key = self.dir / "serving.crt", self.dir / "serving.key"
        self.admin_cert, self.admin_key = self.dir / "admin.crt", self.dir / "admin.key"
        self.sa_key, self.sa_pub = self.dir / "sa.key", self.dir / "sa.pub"


# ---- processes -------------------------------------------------------------------------------


class _Process:
    """A child process whose output goes to a log file (its tail is shown when it dies)."""

    def __init__(self, name: str, argv: Sequence[str], log: Path) -> None:
        self.name = name
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")

    def tail(self, size: int = 4000) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_bytes()[-size:].decode(errors="replace")
        return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class KubeCluster:
    """etcd + kube-apiserver (+ kube-controller-manager) under one temporary directory.

    ``start()`` returns once ``/readyz`` answers ``ok``; ``stop()`` is idempotent and
    removes everything, also after a failed start.  ``stop_apiserver()`` and
    ``start_apiserver()`` simulate an API-server outage (etcd keeps the data).
    """

    def __init__(self, binaries: Path, etcd: str = "etcd") -> None:
        self.binaries = binaries
        self.etcd_binary = etcd
        self.dir = Path(tempfile.mkdtemp(prefix="caa-k8s-", dir="/tmp"))
        self.pki = Pki(self.dir / "pki")
        self.etcd_port = free_port()
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.tokens = {name: secrets.token_hex(16) for name in SERVICE_ACCOUNT_USERS}
        self.kubeconfig = self.write_kubeconfig("admin", self.dir / "admin.kubeconfig")
        self._etcd: _Process | None = None
        self._apiserver: _Process | None = None
        self._kcm: _Process | None = None

    # -- kubeconfigs --

    def write_kubeconfig(self, user: str, path: Path) -> Path:
        """A kubeconfig for ``admin`` (client certificate) or one of SERVICE_ACCOUNT_USERS (token)."""
        if user == "admin":
            credentials = {
                "client-certificate": str(self.pki.admin_cert),
                "client-key": str(self.pki.admin_key),
            }
        else:
            credentials = {"token": self.tokens[user]}
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "test",
                    "cluster": {"server": self.url, "certificate-authority": str(self.pki.ca_cert)},
                }
            ],
            "users": [{"name": user, "user": credentials}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": user}}],
            "current-context": "test",
        }
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    # -- lifecycle --

    def start(self) -> None:
        try:
            self._start_etcd()
            self.start_apiserver()
        except BaseException:
            self.stop()
            raise

    def _start_etcd(self) -> None:
        peer = free_port()
        self._etcd = _Process(
            "etcd",
            [
                self.etcd_binary,
                "--name=caa-test",
                f"--data-dir={self.dir / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{self.etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{self.etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=caa-test=http://127.0.0.1:{peer}",
                "--logger=zap",
                "--log-level=warn",
            ],
            self.dir / "etcd.log",
        )

    def start_apiserver(self) -> None:
        """Start kube-apiserver (again); a no-op while it runs."""
        if self._apiserver is not None and self._apiserver.proc.poll() is None:
            return
        tokens = self.dir / "tokens.csv"
        tokens.write_text(
            "".join(
                f'{self.tokens[name]},{user},{user},"{",".join(groups)}"\n'
                for name, (user, groups) in SERVICE_ACCOUNT_USERS.items()
            )
        )
        tokens.chmod(0o600)
        pki = self.pki
        self._apiserver = _Process(
            "kube-apiserver",
            [
                str(self.binaries / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.port}",
                f"--tls-cert-file={pki.serving_cert}",
                f"--tls-private-key-file={pki.serving_key}",
                f"--client-ca-file={pki.ca_cert}",
                f"--token-auth-file={tokens}",
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-account-key-file={pki.sa_pub}",
                f"--service-account-signing-key-file={pki.sa_key}",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--endpoint-reconciler-type=none",
                "--authorization-mode=RBAC",
                "--allow-privileged=true",
                "--disable-admission-plugins=ServiceAccount",
                f"--cert-dir={self.dir / 'apiserver-certs'}",
            ],
            self.dir / "kube-apiserver.log",
        )
        eventually_sync(self._ready, "kube-apiserver /readyz", timeout=START_TIMEOUT, interval=0.1)

    def stop_apiserver(self) -> None:
        if self._apiserver is not None:
            self._apiserver.stop()
            self._apiserver = None

    def start_controller_manager(self) -> None:
        """Garbage collection (owner references), namespaces, service accounts.

        Start it after the CRDs exist: the garbage collector only notices a later CRD
        at its ~30 s discovery resync.
        """
        if self._kcm is not None:
            return
        self._kcm = _Process(
            "kube-controller-manager",
            [
                str(self.binaries / "kube-controller-manager"),
                f"--kubeconfig={self.kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                "--secure-port=0",
                f"--service-account-private-key-file={self.pki.sa_key}",
                f"--root-ca-file={self.pki.ca_cert}",
                "--controllers=garbagecollector,namespace,serviceaccount,serviceaccount-token",
                "--concurrent-gc-syncs=5",
            ],
            self.dir / "kube-controller-manager.log",
        )

    def stop(self) -> None:
        for proc in (self._kcm, self._apiserver, self._etcd):
            if proc is not None:
                proc.stop()
        self._kcm = self._apiserver = self._etcd = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name} ---\n{p.tail()}" for p in (self._etcd, self._apiserver, self._kcm) if p is not None
        )

    # -- readiness --

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        ctx.load_cert_chain(str(self.pki.admin_cert), str(self.pki.admin_key))
        return ctx

    def _ready(self) -> bool:
        for proc in (self._etcd, self._apiserver):
            if proc is not None:
                proc.check_alive()
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ssl_context(), timeout=5)
        try:
            conn.request("GET", "/readyz")
            response = conn.getresponse()
            return response.status == 200 and response.read() == b"ok"
        except OSError:
            return False
        finally:
            conn.close()
