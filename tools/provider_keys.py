"""Configuration keys of providers that have no distribution in this repository yet.

``make deploy-sync`` generates the Helm values, the kustomize env files and
docs/configuration.md from settings classes.  An installed provider plugin's
``settings_class`` is the source of truth; for azure and ibmcloud, which are
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
class IbmcloudKeys:
    """The ibmcloud provider's keys."""

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
    iam_service_url: str = text(
        "iam-service-url",
        "IBMCLOUD_IAM_ENDPOINT",
        "IAM token endpoint.",
        default="https://iam.cloud.ibm.com/identity/token",
    )
    vpc_endpoint: str = text(
        "vpc-endpoint",
        "IBMCLOUD_VPC_ENDPOINT",
        "VPC API endpoint (empty: https://<node region>.iaas.cloud.ibm.com/v1).",
        default="",
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
    zone_name: str = text(
        "zone-name", "IBMCLOUD_ZONE", "Zone (on IKS: from the node's zone label).", default=""
    )
    primary_subnet_id: str = text(
        "primary-subnet-id", "IBMCLOUD_VPC_SUBNET_ID", "Subnet ID of the primary NIC.", default=""
    )
    key_id: str = text("key-id", "IBMCLOUD_SSH_KEY_ID", "SSH key ID for the pod VMs.", default="")
    vpc_id: str = text("vpc-id", "IBMCLOUD_VPC_ID", "VPC ID.", default="")
    ibmcloud_cluster_id: str = text(
        "ibmcloud-cluster-id",
        "IBMCLOUD_CLUSTER_ID",
        "Cluster ID (empty: read from kube-system/cluster-info).",
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
        "Extra security group IDs (the cluster's kube-<id> group is always added).",
        default=(),
    )
    dedicated_host_ids: tuple[str, ...] = text_list(
        "dedicated-host-ids", "IBMCLOUD_DEDICATED_HOST_IDS", "Dedicated host IDs.", default=()
    )
    dedicated_host_group_ids: tuple[str, ...] = text_list(
        "dedicated-host-group-ids",
        "IBMCLOUD_DEDICATED_HOST_GROUP_IDS",
        "Dedicated host group IDs.",
        default=(),
    )
    secondary_subnet_id: str = text("secondary-subnet-id", None, "Subnet ID of a secondary NIC.", default="")
    secondary_security_group_id: str = text(
        "secondary-security-group-id", None, "Security group of the secondary NIC.", default=""
    )
    disable_cvm: bool = boolean(
        "disable-cvm", "DISABLECVM", "Use ordinary VMs instead of confidential VMs.", default=True
    )


#: Stand-in settings classes by provider name; only providers without a distribution here.
PROVIDER_SETTINGS: Mapping[str, type[Any]] = {
    "azure": AzureKeys,
    "ibmcloud": IbmcloudKeys,
}
