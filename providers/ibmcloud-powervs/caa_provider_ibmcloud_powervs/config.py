"""PowerVS provider configuration: the Go version's keys and defaults, validated once."""

from __future__ import annotations

import math
import re

from caa_provider_ibmcloud.config import DEFAULT_IAM_ENDPOINT, DEFAULT_SEARCH_ENDPOINT

from cloud_api_adaptor.errors import ConfigError
from cloud_api_adaptor.options import boolean, custom, duration, settings, text

PROC_TYPES = ("dedicated", "shared", "capped")
_ZONE = re.compile(r"^[a-z]+(?:-[a-z]+)*-?[0-9]*$")
#: the API region that serves each PowerVS zone (a zone not listed is its own region)
ZONE_REGIONS = {
    "dal10": "us-south",
    "dal12": "us-south",
    "dal14": "us-south",
    "us-south": "us-south",
    "wdc06": "us-east",
    "wdc07": "us-east",
    "us-east": "us-east",
    "eu-de-1": "eu-de",
    "eu-de-2": "eu-de",
    "lon04": "lon",
    "lon06": "lon",
    "mad02": "mad",
    "mad04": "mad",
    "syd04": "syd",
    "syd05": "syd",
    "tok04": "tok",
    "osa21": "osa",
    "sao01": "sao",
    "sao04": "sao",
    "tor01": "tor",
    "mon01": "mon",
    "che01": "che",
}


def _positive_number(key: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(key, f"not a number: {raw!r}") from None
    if not value > 0 or math.isnan(value) or math.isinf(value):
        raise ConfigError(key, f"must be positive, got {raw!r}")
    return value


def _number_text(value: float) -> str:
    return f"{value:g}"


@settings
class PowervsConfig:
    """Validated PowerVS provider settings."""

    api_key: str = text(
        "api-key", "IBMCLOUD_API_KEY", "IBM Cloud API key.", secret=True, required=True, default=""
    )
    iam_endpoint: str = text(
        "iam-service-url", "IBMCLOUD_IAM_ENDPOINT", "IAM token endpoint.", default=DEFAULT_IAM_ENDPOINT
    )
    search_endpoint: str = text(
        "global-search-endpoint",
        "IBMCLOUD_GLOBAL_SEARCH_ENDPOINT",
        "Global Search API endpoint (lists this node's instances by tag).",
        default=DEFAULT_SEARCH_ENDPOINT,
    )
    endpoint: str = text(
        "powervs-endpoint",
        "POWERVS_ENDPOINT",
        "PowerVS API endpoint (empty: https://<region of POWERVS_ZONE>.power-iaas.cloud.ibm.com).",
        default="",
    )
    zone: str = text("zone", "POWERVS_ZONE", "Zone of the workspace (e.g. dal12).", required=True, default="")
    service_instance_id: str = text(
        "service-instance-id",
        "POWERVS_SERVICE_INSTANCE_ID",
        "Workspace (service instance) GUID.",
        required=True,
        default="",
    )
    network_id: str = text(
        "network-id", "POWERVS_NETWORK_ID", "Network ID for the pod VMs.", required=True, default=""
    )
    image_id: str = text("image-id", "POWERVS_IMAGE_ID", "Pod VM image ID.", required=True, default="")
    ssh_key_name: str = text("ssh-key", "POWERVS_SSH_KEY_NAME", "SSH key name in the workspace.", default="")
    processor_type: str = text(
        "proc-type",
        "POWERVS_PROCESSOR_TYPE",
        "Processor type: dedicated, shared or capped.",
        default="shared",
    )
    system_type: str = text("sys-type", "POWERVS_SYSTEM_TYPE", "System type.", default="s922")
    memory: float = custom(
        "memory", "POWERVS_MEMORY", "Memory in GB.", parse=_positive_number, default=2.0, default_text="2"
    )
    processors: float = custom(
        "cpu", "POWERVS_PROCESSORS", "Processors.", parse=_positive_number, default=0.5, default_text="0.5"
    )
    use_public_ip: bool = boolean(
        "use-public-ip", "USE_PUBLIC_IP", "Dial the pod VM on its external IP.", default=False
    )
    build_timeout: float = duration(
        "build-timeout",
        "POWERVS_BUILD_TIMEOUT",
        "How long a pod VM may take to become ACTIVE; then it is deleted and StartVM fails.",
        default=150.0,
        positive=True,
    )

    def __post_init__(self) -> None:
        if self.processor_type not in PROC_TYPES:
            raise ConfigError(
                "POWERVS_PROCESSOR_TYPE", f"{self.processor_type!r} is not one of {', '.join(PROC_TYPES)}"
            )
        if self.zone and not _ZONE.match(self.zone):
            raise ConfigError("POWERVS_ZONE", f"invalid zone {self.zone!r} (e.g. dal12)")
        for key, url in (
            ("IBMCLOUD_IAM_ENDPOINT", self.iam_endpoint),
            ("POWERVS_ENDPOINT", self.endpoint),
            ("IBMCLOUD_GLOBAL_SEARCH_ENDPOINT", self.search_endpoint),
        ):
            if url and not url.startswith(("https://", "http://")):
                raise ConfigError(key, f"not an http(s) URL: {url!r}")

    @property
    def region(self) -> str:
        return ZONE_REGIONS.get(self.zone, self.zone)

    @property
    def url(self) -> str:
        return self.endpoint or f"https://{self.region}.power-iaas.cloud.ibm.com"

    @property
    def default_shape(self) -> str:
        """The default ``<systype>-<cpu>x<memGB>`` (the machine_type annotation's grammar)."""
        return f"{self.system_type}-{_number_text(self.processors)}x{_number_text(self.memory)}"
