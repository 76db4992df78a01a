"""Configuration keys of providers that have no distribution in this repository yet.

``make deploy-sync`` generates the Helm values, the kustomize env files and
docs/configuration.md from settings classes.  An installed provider plugin's
``settings_class`` is the source of truth; for azure and gcp, which are
not written yet, these classes stand in so the chart and the overlays already
carry their keys (the Go version's names and defaults, so an existing
``peer-pods-cm`` keeps working).  When a provider's distribution lands, its
plugin's settings take over and its class here is deleted.

Secret keys go to the Secret ``peer-pods-secret``, the rest to the ConfigMap
``peer-pods-cm``.  ``required`` marks keys the provider cannot run without;
credentials are never required because workload identity can replace them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cloud_api_adaptor.options import boolean, integer, settings, text, text_list


@settings
class AzureKeys:
    """The azure provider's keys."""

    clientid: str = text(
        "clientid", "AZURE_CLIENT_ID", "Client ID of the service principal.", secret=True, default=""
    )
    secret: str = text(
        "secret",
        "AZURE_CLIENT_SECRET",
        "Client secret of the service principal (empty: workload identity).",
        secret=True,
        default="",
    )
    tenantid: str = text(
        "tenantid", "AZURE_TENANT_ID", "Tenant ID of the service principal.", secret=True, default=""
    )
    subscriptionid: str = text(
        "subscriptionid", "AZURE_SUBSCRIPTION_ID", "Subscription ID.", required=True, default=""
    )
    region: str = text("region", "AZURE_REGION", "Region for the pod VMs.", required=True, default="")
    resourcegroup: str = text(
        "resourcegroup", "AZURE_RESOURCE_GROUP", "Resource group for the pod VMs.", required=True, default=""
    )
    subnetid: str = text(
        "subnetid", "AZURE_SUBNET_ID", "Subnet ID for the pod VMs.", required=True, default=""
    )
    imageid: str = text(
        "imageid",
        "AZURE_IMAGE_ID",
        "Pod VM image ID (a /CommunityGalleries/ ID is a community gallery image).",
        required=True,
        default="",
    )
    instance_size: str = text(
        "instance-size", "AZURE_INSTANCE_SIZE", "Default VM size.", default="Standard_DC2as_v5"
    )
    instance_sizes: tuple[str, ...] = text_list(
        "instance-sizes", "AZURE_INSTANCE_SIZES", "Allowed VM sizes, comma separated.", default=()
    )
    securitygroupid: str = text(
        "securitygroupid", "AZURE_NSG_ID", "Network security group ID for the pod VM NICs.", default=""
    )
    ssh_username: str = text(
        "ssh-username", "SSH_USERNAME", "Admin user name on the pod VMs.", default="peerpod"
    )
    ssh_key_path: str = text(
        "ssh-key-path",
        None,
        "SSH public key file for the pod VMs (empty: a throw-away key is generated).",
        default="",
    )
    enable_secure_boot: bool = boolean(
        "enable-secure-boot", "ENABLE_SECURE_BOOT", "UEFI Secure Boot on pod VMs.", default=False
    )
    use_public_ip: bool = boolean(
        "use-public-ip", "USE_PUBLIC_IP", "Dial the pod VM on its public IP.", default=False
    )
    root_volume_size: int = integer(
        "root-volume-size", "ROOT_VOLUME_SIZE", "OS disk size in GiB (0: the image's).", default=0
    )
    disable_cvm: bool = boolean(
        "disable-cvm", "DISABLECVM", "Use ordinary VMs instead of confidential VMs.", default=False
    )


@settings
class GcpKeys:
    """The gcp provider's keys."""

    gcp_credentials: str = text(
        "gcp-credentials",
        "GCP_CREDENTIALS",
        "Service account key JSON (empty: workload identity / application default credentials).",
        secret=True,
        default="",
    )
    gcp_project_id: str = text("gcp-project-id", "GCP_PROJECT_ID", "Project ID.", required=True, default="")
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
    machine_type: str = text("machine-type", "GCP_MACHINE_TYPE", "Default machine type.", default="e2-medium")
    machine_types: tuple[str, ...] = text_list(
        "machine-types", "GCP_INSTANCE_TYPES", "Allowed machine types, comma separated.", default=()
    )
    disk_type: str = text("disk-type", "GCP_DISK_TYPE", "Boot disk type.", default="pd-standard")
    confidential_type: str = text(
        "confidential-type",
        "GCP_CONFIDENTIAL_TYPE",
        "TDX, SEV or SEV_SNP (required unless DISABLECVM is true).",
        default="",
    )
    root_volume_size: int = integer(
        "root-volume-size", "ROOT_VOLUME_SIZE", "Boot disk size in GiB (at least the image's).", default=10
    )
    use_public_ip: bool = boolean(
        "use-public-ip", "USE_PUBLIC_IP", "Dial the pod VM on its external IP.", default=False
    )
    disable_cvm: bool = boolean(
        "disable-cvm", "DISABLECVM", "Use ordinary VMs instead of confidential VMs.", default=False
    )


#: Stand-in settings classes by provider name; only providers without a distribution here.
PROVIDER_SETTINGS: Mapping[str, type[Any]] = {
    "azure": AzureKeys,
    "gcp": GcpKeys,
}
