"""Configuration keys of providers that have no distribution in this repository yet.

``make deploy-sync`` generates the Helm values, the kustomize env files and
docs/configuration.md from settings classes.  An installed provider plugin's
``settings_class`` is the source of truth; for azure, which is
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


#: Stand-in settings classes by provider name; only providers without a distribution here.
PROVIDER_SETTINGS: Mapping[str, type[Any]] = {
    "azure": AzureKeys,
}
