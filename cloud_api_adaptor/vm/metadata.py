"""Where the pod VM finds its user data: the cidata file or a cloud's metadata service.

One small class per source, each with ``async fetch() -> bytes`` returning the
cloud-config document.  HTTP uses the stdlib (urllib, run off the event loop):
the VM image should not grow a client library for five GET requests.  Proxies
from the environment are ignored; metadata services are link-local.

Detection follows the Go process-user-data order (first match wins):

1. ``<cidata>/user-data`` exists: the file (libvirt, BYOM, docker).
2. Hyper-V: Azure IMDS.
3. DMI system vendor ``Amazon EC2``: AWS IMDS (v2 token, falling back to v1).
4. KVM, and the GCP metadata server answers: GCP.
5. DMI system vendor ``Alibaba Cloud``: Alibaba metadata.
6. Otherwise none: cloud-init has written the files (IBM Cloud and others).

Go reads the hypervisor vendor with the CPUID instruction, which Python cannot
issue without native code.  ``read_platform`` uses what the kernel exposes
instead: a VMBus (``/sys/bus/vmbus``) exists only in Hyper-V guests, and
``kvm-clock`` is offered only to KVM guests.  GCP is also probed when DMI says
``Google`` (in case a confidential guest hides kvm-clock); the probe decides.
Every input sits under a ``root`` directory, so a pod VM emulated in a
directory never sees the host's DMI data or metadata service.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import http.client
import logging
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cloud_api_adaptor.errors import AdaptorError

logger = logging.getLogger(__name__)

#: the cpuid hypervisor vendor strings detection compares against
HV_MICROSOFT = "Microsoft Hv"
HV_KVM = "KVMKVMKVM"

#: user data larger than this is refused (clouds cap it far lower: 16 KiB to 256 KiB)
MAX_USERDATA_BYTES = 4 * 1024 * 1024
#: per-request timeout (seconds); the caller bounds the whole run
REQUEST_TIMEOUT = 10.0
#: AWS: the IMDSv2 token request gives up after this (seconds) and falls back to IMDSv1
AWS_TOKEN_TIMEOUT = 5.0


class MetadataError(AdaptorError):
    """Fetching user data failed; a later attempt may succeed."""


@dataclass(frozen=True)
class Endpoints:
    """Base URLs of the metadata services (tests point them at 127.0.0.1)."""

    azure: str = "http://169.254.169.254"
    aws: str = "http://169.254.169.254"
    gcp: str = "http://metadata.google.internal"
    alibaba: str = "http://100.100.100.200"


@dataclass(frozen=True)
class Platform:
    """The facts detection looks at."""

    #: DMI system manufacturer (``/sys/class/dmi/id/sys_vendor``), stripped
    sys_vendor: str = ""
    #: cpuid-style hypervisor vendor: ``HV_MICROSOFT``, ``HV_KVM`` or "" (unknown / none)
    hypervisor_vendor: str = ""
    #: the cidata ``user-data`` file, when it exists
    cidata_user_data: Path | None = None


class UserDataSource(Protocol):
    """Somewhere the cloud-config document can be fetched from."""

    name: str

    async def fetch(self) -> bytes: ...


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""


def read_platform(root: Path, cidata_dir: Path) -> Platform:
    """Read detection inputs from the kernel's view under ``root``."""
    sysfs = root / "sys"
    if (sysfs / "bus" / "vmbus").is_dir():
        hypervisor = HV_MICROSOFT
    elif "kvm-clock" in _read_text(sysfs / "devices/system/clocksource/clocksource0/available_clocksource"):
        hypervisor = HV_KVM
    else:
        hypervisor = ""
    user_data = cidata_dir / "user-data"
    return Platform(
        sys_vendor=_read_text(sysfs / "class/dmi/id/sys_vendor"),
        hypervisor_vendor=hypervisor,
        cidata_user_data=user_data if user_data.is_file() else None,
    )


def _http(method: str, url: str, headers: Mapping[str, str], timeout: float) -> bytes:
    """One blocking request; anything but a 200 becomes ``MetadataError``."""
    request = urllib.request.Request(
        url, method=method, headers=dict(headers), data=b"" if method == "PUT" else None
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout) as response:
            if response.status != 200:
                raise MetadataError(f"{method} {url}: HTTP {response.status}")
            body: bytes = response.read(MAX_USERDATA_BYTES + 1)
    except urllib.error.HTTPError as exc:
        exc.close()
        raise MetadataError(f"{method} {url}: HTTP {exc.code}") from exc
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise MetadataError(f"{method} {url}: {exc}") from exc
    if len(body) > MAX_USERDATA_BYTES:
        raise MetadataError(f"{method} {url}: response larger than {MAX_USERDATA_BYTES} bytes")
    return body


async def _request(method: str, url: str, headers: Mapping[str, str], timeout: float) -> bytes:
    return await asyncio.to_thread(_http, method, url, headers, timeout)


def _b64(body: bytes, what: str) -> bytes:
    try:
        return base64.b64decode(b"".join(body.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MetadataError(f"{what}: user data is not valid base64: {exc}") from exc


class FileSource:
    """``user-data`` on the cidata ISO (libvirt) or SFTP drop (BYOM)."""

    name = "file"

    def __init__(self, path: Path) -> None:
        self._path = path

    async def fetch(self) -> bytes:
        return await asyncio.to_thread(self._read)

    def _read(self) -> bytes:
        try:
            with self._path.open("rb") as f:
                data = f.read(MAX_USERDATA_BYTES + 1)
        except OSError as exc:
            raise MetadataError(f"reading {self._path}: {exc}") from exc
        if len(data) > MAX_USERDATA_BYTES:
            raise MetadataError(f"{self._path} is larger than {MAX_USERDATA_BYTES} bytes")
        return data


class AzureSource:
    """Azure IMDS ``userData`` (the VM's ``properties.userData``, base64 in the answer)."""

    name = "azure"
    PATH = "/metadata/instance/compute/userData?api-version=2021-01-01&format=text"

    def __init__(self, base_url: str = Endpoints.azure, timeout: float = REQUEST_TIMEOUT) -> None:
        self._url = base_url.rstrip("/") + self.PATH
        self._timeout = timeout

    async def fetch(self) -> bytes:
        body = await _request("GET", self._url, {"Metadata": "true"}, self._timeout)
        return _b64(body, "azure")


class AwsSource:
    """EC2 IMDS: an IMDSv2 session token if the service gives one, else plain IMDSv1."""

    name = "aws"
    TOKEN_PATH = "/latest/api/token"
    USER_DATA_PATH = "/latest/user-data"

    def __init__(
        self,
        base_url: str = Endpoints.aws,
        timeout: float = REQUEST_TIMEOUT,
        token_timeout: float = AWS_TOKEN_TIMEOUT,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._timeout = timeout
        self._token_timeout = token_timeout

    async def token(self) -> str | None:
        """An IMDSv2 token, or None when the service does not hand one out (IMDSv1)."""
        try:
            body = await _request(
                "PUT",
                self._base + self.TOKEN_PATH,
                {"X-aws-ec2-metadata-token-ttl-seconds": "60"},
                self._token_timeout,
            )
        except MetadataError as exc:
            logger.info("aws: no IMDSv2 token (%s); falling back to IMDSv1", exc)
            return None
        return body.decode("ascii", errors="replace").strip() or None

    async def fetch(self) -> bytes:
        token = await self.token()
        headers = {"X-aws-ec2-metadata-token": token} if token else {}
        return await _request("GET", self._base + self.USER_DATA_PATH, headers, self._timeout)


class GcpSource:
    """GCE metadata attribute ``user-data`` (CAA stores it base64-encoded)."""

    name = "gcp"
    INSTANCE_PATH = "/computeMetadata/v1/instance"
    USER_DATA_PATH = "/computeMetadata/v1/instance/attributes/user-data"
    HEADERS = {"Metadata-Flavor": "Google"}

    def __init__(self, base_url: str = Endpoints.gcp, timeout: float = REQUEST_TIMEOUT) -> None:
        self._base = base_url.rstrip("/")
        self._timeout = timeout

    async def probe(self) -> bool:
        """Whether a GCE metadata server answers."""
        try:
            await _request("GET", self._base + self.INSTANCE_PATH, self.HEADERS, self._timeout)
        except MetadataError as exc:
            logger.info("gcp: metadata server probe failed: %s", exc)
            return False
        return True

    async def fetch(self) -> bytes:
        body = await _request("GET", self._base + self.USER_DATA_PATH, self.HEADERS, self._timeout)
        return _b64(body, "gcp")


class AlibabaSource:
    """Alibaba Cloud ECS metadata ``user-data`` (raw)."""

    name = "alibaba"
    USER_DATA_PATH = "/latest/user-data"

    def __init__(self, base_url: str = Endpoints.alibaba, timeout: float = REQUEST_TIMEOUT) -> None:
        self._url = base_url.rstrip("/") + self.USER_DATA_PATH
        self._timeout = timeout

    async def fetch(self) -> bytes:
        return await _request("GET", self._url, {}, self._timeout)


async def detect_source(platform: Platform, endpoints: Endpoints) -> UserDataSource | None:
    """The source for this platform, in the Go detection order; None: nothing to fetch."""
    if platform.cidata_user_data is not None:
        return FileSource(platform.cidata_user_data)
    if platform.hypervisor_vendor == HV_MICROSOFT:
        return AzureSource(endpoints.azure)
    if platform.sys_vendor == "Amazon EC2":
        return AwsSource(endpoints.aws)
    if platform.hypervisor_vendor == HV_KVM or platform.sys_vendor == "Google":
        gcp = GcpSource(endpoints.gcp)
        if await gcp.probe():
            return gcp
    if platform.sys_vendor == "Alibaba Cloud":
        return AlibabaSource(endpoints.alibaba)
    return None
