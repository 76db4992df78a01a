"""IBM Cloud VPC provider configuration: the Go version's keys and defaults, validated once.

``IbmcloudConfig`` declares every key on the field it fills, so the CLI, the Helm
values and the docs come from one place; loading it raises ``ConfigError`` naming
the key at fault.  Credentials are kept out of ``repr``.
"""

from __future__ import annotations

import re

from cloud_api_adaptor.errors import ConfigError
from cloud_api_adaptor.options import boolean, settings, text, text_list

DEFAULT_IAM_ENDPOINT = "https://iam.cloud.ibm.com/identity/token"
DEFAULT_TAGGING_ENDPOINT = "https://tags.global-search-tagging.cloud.ibm.com"
DEFAULT_SEARCH_ENDPOINT = "https://api.global-search-tagging.cloud.ibm.com"
#: where Kubernetes projects the service account token a trusted profile trusts
DEFAULT_CR_TOKEN_FILE = "/var/run/secrets/tokens/vault-token"

#: zones are named ``<region>-<n>`` (us-south-1, eu-de-2, jp-tok-3)
_ZONE = re.compile(r"^(?P<region>[a-z]+(?:-[a-z]+)+)-(?P<n>[0-9]+)$")
_PROFILE = re.compile(r"^[a-z0-9]+-[0-9]+x[0-9]+[a-z0-9x-]*$")


@settings
class IbmcloudConfig:
    """Validated IBM Cloud VPC provider settings."""

    api_key: str = text(
        "api-key",
        "IBMCLOUD_API_KEY",
        "IBM Cloud API key (or use a trusted profile).",
        secret=True,
        default="",
    )
    iam_profile_id: str = text(
        "iam-profile-id",
        "IBMCLOUD_IAM_PROFILE_ID",
        "Trusted profile ID, used with the projected service account token instead of an API key.",
        secret=True,
        default="",
    )
    iam_endpoint: str = text(
        "iam-service-url", "IBMCLOUD_IAM_ENDPOINT", "IAM token endpoint.", default=DEFAULT_IAM_ENDPOINT
    )
    cr_token_file: str = text(
        "cr-token-file",
        None,
        "Projected service account token read with IBMCLOUD_IAM_PROFILE_ID.",
        default=DEFAULT_CR_TOKEN_FILE,
    )
    vpc_endpoint: str = text(
        "vpc-endpoint",
        "IBMCLOUD_VPC_ENDPOINT",
        "VPC API endpoint (empty: https://<region of IBMCLOUD_ZONE>.iaas.cloud.ibm.com/v1).",
        default="",
    )
    tagging_endpoint: str = text(
        "global-tagging-endpoint",
        "IBMCLOUD_GLOBAL_TAGGING_ENDPOINT",
        "Global Tagging API endpoint.",
        default=DEFAULT_TAGGING_ENDPOINT,
    )
    search_endpoint: str = text(
        "global-search-endpoint",
        "IBMCLOUD_GLOBAL_SEARCH_ENDPOINT",
        "Global Search API endpoint.",
        default=DEFAULT_SEARCH_ENDPOINT,
    )
    resource_group_id: str = text(
        "resource-group-id", "IBMCLOUD_RESOURCE_GROUP_ID", "Resource group ID.", default=""
    )
    profile_name: str = text(
        "profile-name", "IBMCLOUD_PODVM_INSTANCE_PROFILE_NAME", "Default instance profile.", default=""
    )
    profile_list: tuple[str, ...] = text_list(
        "profile-list",
        "IBMCLOUD_PODVM_INSTANCE_PROFILE_LIST",
        "Allowed instance profiles, comma separated.",
        default=(),
    )
    zone_name: str = text("zone-name", "IBMCLOUD_ZONE", "Zone of the pod VMs (e.g. us-south-1).", default="")
    primary_subnet_id: str = text(
        "primary-subnet-id", "IBMCLOUD_VPC_SUBNET_ID", "Subnet ID of the primary NIC.", default=""
    )
    key_id: str = text("key-id", "IBMCLOUD_SSH_KEY_ID", "SSH key ID for the pod VMs.", default="")
    vpc_id: str = text("vpc-id", "IBMCLOUD_VPC_ID", "VPC ID.", default="")
    ibmcloud_cluster_id: str = text(
        "ibmcloud-cluster-id",
        "IBMCLOUD_CLUSTER_ID",
        "Cluster ID for the coco-pod-vm:<id> tag (empty: the daemon's CLUSTER_ID).",
        default="",
    )
    image_id: tuple[str, ...] = text_list(
        "image-id",
        "IBMCLOUD_PODVM_IMAGE_ID",
        "Pod VM image IDs, comma separated (one per architecture).",
        required=True,
        default=(),
    )
    security_group_ids: tuple[str, ...] = text_list(
        "security-group-ids",
        "IBMCLOUD_SECURITY_GROUP_IDS",
        "Security group IDs of the primary NIC.",
        default=(),
    )
    dedicated_host_ids: tuple[str, ...] = text_list(
        "dedicated-host-ids", "IBMCLOUD_DEDICATED_HOST_IDS", "Dedicated host IDs.", default=()
    )
    dedicated_host_group_ids: tuple[str, ...] = text_list(
        "dedicated-host-group-ids",
        "IBMCLOUD_DEDICATED_HOST_GROUP_IDS",
        "Dedicated host group IDs (used when no dedicated host is set).",
        default=(),
    )
    secondary_subnet_id: str = text("secondary-subnet-id", None, "Subnet ID of a secondary NIC.", default="")
    secondary_security_group_id: str = text(
        "secondary-security-group-id", None, "Security group of the secondary NIC.", default=""
    )
    disable_cvm: bool = boolean(
        "disable-cvm", "DISABLECVM", "Use ordinary VMs instead of confidential VMs.", default=True
    )

    def __post_init__(self) -> None:
        if not self.api_key and not self.iam_profile_id:
            raise ConfigError("IBMCLOUD_API_KEY", "set IBMCLOUD_API_KEY or IBMCLOUD_IAM_PROFILE_ID")
        if not self.image_id:
            raise ConfigError("IBMCLOUD_PODVM_IMAGE_ID", "at least one pod VM image ID is required")
        if self.zone_name and not _ZONE.match(self.zone_name):
            raise ConfigError("IBMCLOUD_ZONE", f"invalid zone {self.zone_name!r} (e.g. us-south-1)")
        if not self.vpc_endpoint and not self.zone_name:
            raise ConfigError("IBMCLOUD_VPC_ENDPOINT", "set IBMCLOUD_VPC_ENDPOINT or IBMCLOUD_ZONE")
        for key, name in [("IBMCLOUD_PODVM_INSTANCE_PROFILE_NAME", self.profile_name)] + [
            ("IBMCLOUD_PODVM_INSTANCE_PROFILE_LIST", p) for p in self.profile_list
        ]:
            if name and not _PROFILE.match(name):
                raise ConfigError(key, f"invalid instance profile {name!r} (e.g. bx2-2x8)")
        for key, url in (
            ("IBMCLOUD_IAM_ENDPOINT", self.iam_endpoint),
            ("IBMCLOUD_VPC_ENDPOINT", self.vpc_endpoint),
            ("IBMCLOUD_GLOBAL_TAGGING_ENDPOINT", self.tagging_endpoint),
            ("IBMCLOUD_GLOBAL_SEARCH_ENDPOINT", self.search_endpoint),
        ):
            if url and not url.startswith(("https://", "http://")):
                raise ConfigError(key, f"not an http(s) URL: {url!r}")

    @property
    def region(self) -> str:
        """The region of ``IBMCLOUD_ZONE`` ("" when no zone is set)."""
        match = _ZONE.match(self.zone_name)
        return match.group("region") if match else ""

    @property
    def vpc_url(self) -> str:
        """The VPC API base URL: the configured one, else the region's public endpoint."""
        return self.vpc_endpoint or f"https://{self.region}.iaas.cloud.ibm.com/v1"

    @property
    def allowed_profiles(self) -> tuple[str, ...]:
        """The catalogue to describe: the allowlist plus the default, without repeats."""
        names = [*self.profile_list, *([self.profile_name] if self.profile_name else [])]
        return tuple(dict.fromkeys(names))
