"""GCP provider configuration: the Go version's keys and defaults, validated once.

``GcpConfig`` declares every key on the field it fills; loading it raises
``ConfigError`` naming the key at fault.  ``GCP_CREDENTIALS`` (the service-account
key JSON from ``peer-pods-secret``) is a secret: it stays out of ``repr`` and is
only ever parsed in memory, never written to a file.
"""

from __future__ import annotations

import json
import re

from cloud_api_adaptor.errors import ConfigError
from cloud_api_adaptor.options import boolean, integer, settings, text, text_list

DEFAULT_MACHINE_TYPE = "e2-medium"
DEFAULT_COMPUTE_ENDPOINT = "https://compute.googleapis.com"
CONFIDENTIAL_TYPES = ("SEV", "SEV_SNP", "TDX")
#: the Go version's error text when Confidential VM is on without a type
CONFIDENTIAL_TYPE_REQUIRED = "ConfidentialType must be set when using Confidential VM."
#: largest persistent disk GiB
MAX_DISK_GIB = 65536

#: machine series that run each Confidential VM technology (the series is the name up to the first "-")
CONFIDENTIAL_SERIES: dict[str, frozenset[str]] = {
    "SEV": frozenset({"n2d", "c2d", "c3d", "c4d"}),
    "SEV_SNP": frozenset({"n2d", "c3d", "c4d"}),
    "TDX": frozenset({"c3", "a3"}),
}
#: series known to this table; a series outside it is left for Compute Engine to judge
KNOWN_SERIES = frozenset(
    {"e2", "n1", "n2", "n4", "c2", "c4", "t2d", "t2a", "m1", "m2", "m3", "a2", "g2", "h3", "z3"}
).union(*CONFIDENTIAL_SERIES.values())
#: series whose machines cannot attach pd-standard disks
NO_PD_STANDARD = frozenset({"c3", "c3d", "c4", "c4d", "n4", "a3", "h3", "z3"})

_MACHINE_TYPE = re.compile(r"[a-z][a-z0-9-]{0,62}")
_NAME = re.compile(r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?")
_ZONE = re.compile(r"[a-z]+-[a-z]+[0-9]+-[a-z]")


def machine_series(machine_type: str) -> str:
    return machine_type.split("-", 1)[0]


def confidential_support_problem(machine_type: str, confidential_type: str) -> str:
    """Why ``machine_type`` cannot run ``confidential_type`` ("" if it can or the series is unknown)."""
    series = machine_series(machine_type)
    supported = CONFIDENTIAL_SERIES.get(confidential_type, frozenset())
    if series in KNOWN_SERIES and series not in supported:
        return (
            f"machine type {machine_type} does not run {confidential_type} Confidential VMs "
            f"(use one of the series {', '.join(sorted(supported))}, or set DISABLECVM=true)"
        )
    return ""


@settings
class GcpConfig:
    """Validated GCP provider settings."""

    credentials: str = text(
        "gcp-credentials",
        "GCP_CREDENTIALS",
        "Service account key JSON (empty: workload identity / application default credentials).",
        secret=True,
        default="",
    )
    project_id: str = text("gcp-project-id", "GCP_PROJECT_ID", "Project ID.", required=True, default="")
    zone: str = text("zone", "GCP_ZONE", "Zone for the pod VMs.", required=True, default="")
    network: str = text("network", "GCP_NETWORK", "VPC network for the pod VMs.", required=True, default="")
    subnetwork: str = text(
        "subnetwork",
        "GCP_SUBNETWORK",
        "Subnetwork (a short name expands to projects/<p>/regions/<region>/subnetworks/<name>).",
        default="",
    )
    image_name: str = text(
        "image-name", "PODVM_IMAGE_NAME", "Pod VM image name or full path.", required=True, default=""
    )
    machine_type: str = text(
        "machine-type", "GCP_MACHINE_TYPE", "Default machine type.", default=DEFAULT_MACHINE_TYPE
    )
    machine_types: tuple[str, ...] = text_list(
        "machine-types", "GCP_INSTANCE_TYPES", "Allowed machine types, comma separated.", default=()
    )
    disk_type: str = text("disk-type", "GCP_DISK_TYPE", "Boot disk type.", default="pd-standard")
    confidential_type: str = text(
        "confidential-type",
        "GCP_CONFIDENTIAL_TYPE",
        "TDX, SEV or SEV_SNP (required unless DISABLECVM is true).",
        choices=CONFIDENTIAL_TYPES,
        default="",
    )
    root_volume_size: int = integer(
        "root-volume-size",
        "ROOT_VOLUME_SIZE",
        "Boot disk size in GiB (at least the image's).",
        default=10,
        minimum=0,
        maximum=MAX_DISK_GIB,
    )
    use_public_ip: bool = boolean(
        "use-public-ip",
        "USE_PUBLIC_IP",
        "Give pod VMs an external IP and dial it (off: internal IP only, no external IP at all).",
        default=False,
    )
    disable_cvm: bool = boolean(
        "disable-cvm", "DISABLECVM", "Use ordinary VMs instead of confidential VMs.", default=False
    )
    compute_endpoint: str = text(
        "gcp-compute-endpoint",
        "GCP_COMPUTE_ENDPOINT",
        "Compute Engine API endpoint (Private Service Connect, tests).",
        default=DEFAULT_COMPUTE_ENDPOINT,
    )
    resource_manager_endpoint: str = text(
        "gcp-resource-manager-endpoint",
        "GCP_RESOURCE_MANAGER_ENDPOINT",
        "Resource Manager endpoint for TAGS tag bindings (empty: the public global and zonal ones).",
        default="",
    )

    def __post_init__(self) -> None:
        self._check_names()
        if not self.disable_cvm and not self.confidential_type:
            raise ConfigError("GCP_CONFIDENTIAL_TYPE", CONFIDENTIAL_TYPE_REQUIRED)
        checked = [("GCP_MACHINE_TYPE", self.machine_type)]
        checked += [("GCP_INSTANCE_TYPES", t) for t in self.machine_types]
        for key, machine_type in checked:
            if not _MACHINE_TYPE.fullmatch(machine_type):
                raise ConfigError(key, f"invalid machine type {machine_type!r} (e.g. n2d-standard-2)")
            if not self.disable_cvm:
                problem = confidential_support_problem(machine_type, self.confidential_type)
                if problem:
                    raise ConfigError(key, problem)
            if self.disk_type == "pd-standard" and machine_series(machine_type) in NO_PD_STANDARD:
                raise ConfigError(
                    "GCP_DISK_TYPE",
                    f"{machine_type} cannot attach pd-standard disks (use pd-balanced or pd-ssd)",
                )
        if self.credentials:
            _check_credentials(self.credentials)

    def _check_names(self) -> None:
        if not _ZONE.fullmatch(self.zone):
            raise ConfigError("GCP_ZONE", f"invalid zone {self.zone!r} (e.g. us-central1-a)")
        for key, value in (("GCP_NETWORK", self.network), ("GCP_SUBNETWORK", self.subnetwork)):
            if value and "/" not in value and not _NAME.fullmatch(value):
                raise ConfigError(key, f"invalid name {value!r}")
        for key, value in (
            ("GCP_COMPUTE_ENDPOINT", self.compute_endpoint),
            ("GCP_RESOURCE_MANAGER_ENDPOINT", self.resource_manager_endpoint),
        ):
            if value and not value.startswith(("https://", "http://")):
                raise ConfigError(key, f"must be an http(s):// URL, got {value!r}")

    @property
    def region(self) -> str:
        """The zone's region (``us-central1-a`` -> ``us-central1``)."""
        return self.zone.rsplit("-", 1)[0]

    @property
    def allowed_machine_types(self) -> tuple[str, ...]:
        """The catalogue to describe: the allowlist, else just the default."""
        return self.machine_types or (self.machine_type,)

    @property
    def network_url(self) -> str:
        """``GCP_NETWORK`` as a partial URL (a bare name expands to the project's global network)."""
        if "/" in self.network:
            return self.network
        return f"projects/{self.project_id}/global/networks/{self.network}"

    @property
    def subnetwork_url(self) -> str:
        """``GCP_SUBNETWORK`` as a partial URL ("" when unset): a bare name is in the zone's region."""
        if not self.subnetwork or "/" in self.subnetwork:
            return self.subnetwork
        return f"projects/{self.project_id}/regions/{self.region}/subnetworks/{self.subnetwork}"

    def image_url(self, image: str = "") -> str:
        """An image name as Compute Engine takes it: a bare name is in the project's images."""
        name = image or self.image_name
        if name.startswith(("projects/", "/projects", "https://", "global/")):
            return name.lstrip("/")
        return f"projects/{self.project_id}/global/images/{name}"


def _check_credentials(raw: str) -> None:
    """A service-account key JSON; the error never echoes its content."""
    try:
        info = json.loads(raw)
    except ValueError:
        raise ConfigError(
            "GCP_CREDENTIALS", "not valid JSON (a service account key file's content)"
        ) from None
    if not isinstance(info, dict):
        raise ConfigError("GCP_CREDENTIALS", "not a JSON object")
    kind = info.get("type")
    if kind == "service_account":
        missing = [k for k in ("client_email", "private_key", "token_uri") if not info.get(k)]
        if missing:
            raise ConfigError("GCP_CREDENTIALS", f"service account key lacks {', '.join(missing)}")
    elif kind not in ("external_account", "authorized_user", "impersonated_service_account"):
        raise ConfigError("GCP_CREDENTIALS", f"unsupported credentials type {kind!r}")
