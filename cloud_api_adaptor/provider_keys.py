"""Configuration keys of providers that have no distribution in this repository yet.

``make deploy-sync`` generates the Helm values, the kustomize env files and
docs/configuration.md from option definitions.  An installed provider plugin's
``.options`` are the source of truth; for azure, gcp and ibmcloud, which are not
written yet, these static definitions stand in so the chart and the overlays
already carry their keys (the Go version's names and defaults, so an existing
``peer-pods-cm`` keeps working).  When a provider's distribution lands, its
plugin's options take over and its entry here should be deleted.

Secret keys (``secret=True``) go to the Secret ``peer-pods-secret``, the rest to
the ConfigMap ``peer-pods-cm``.  ``required`` marks keys the provider cannot run
without; credentials are never marked required because workload identity can
replace them.
"""

from __future__ import annotations

from collections.abc import Mapping

from cloud_api_adaptor.options import Kind, Option


def _azure(flag: str, env: str | None, default: str, help: str, kind: Kind = "str", **flags: bool) -> Option:
    return Option(flag, env, default, help, kind, group="azure", **flags)


def _gcp(flag: str, env: str | None, default: str, help: str, kind: Kind = "str", **flags: bool) -> Option:
    return Option(flag, env, default, help, kind, group="gcp", **flags)


def _ibm(flag: str, env: str | None, default: str, help: str, kind: Kind = "str", **flags: bool) -> Option:
    return Option(flag, env, default, help, kind, group="ibmcloud", **flags)


_AZURE: tuple[Option, ...] = (
    _azure("clientid", "AZURE_CLIENT_ID", "", "Client ID of the service principal.", secret=True),
    _azure(
        "secret",
        "AZURE_CLIENT_SECRET",
        "",
        "Client secret of the service principal (empty: workload identity).",
        secret=True,
    ),
    _azure("tenantid", "AZURE_TENANT_ID", "", "Tenant ID of the service principal.", secret=True),
    _azure("subscriptionid", "AZURE_SUBSCRIPTION_ID", "", "Subscription ID.", required=True),
    _azure("region", "AZURE_REGION", "", "Region for the pod VMs.", required=True),
    _azure("resourcegroup", "AZURE_RESOURCE_GROUP", "", "Resource group for the pod VMs.", required=True),
    _azure("subnetid", "AZURE_SUBNET_ID", "", "Subnet ID for the pod VMs.", required=True),
    _azure(
        "imageid",
        "AZURE_IMAGE_ID",
        "",
        "Pod VM image ID (a /CommunityGalleries/ ID is a community gallery image).",
        required=True,
    ),
    _azure("instance-size", "AZURE_INSTANCE_SIZE", "Standard_DC2as_v5", "Default VM size."),
    _azure("instance-sizes", "AZURE_INSTANCE_SIZES", "", "Allowed VM sizes, comma separated.", "list"),
    _azure("securitygroupid", "AZURE_NSG_ID", "", "Network security group ID for the pod VM NICs."),
    _azure("ssh-username", "SSH_USERNAME", "peerpod", "Admin user name on the pod VMs."),
    _azure(
        "ssh-key-path",
        None,
        "",
        "SSH public key file for the pod VMs (empty: a throw-away key is generated).",
    ),
    _azure("enable-secure-boot", "ENABLE_SECURE_BOOT", "false", "UEFI Secure Boot on pod VMs.", "bool"),
    _azure("use-public-ip", "USE_PUBLIC_IP", "false", "Dial the pod VM on its public IP.", "bool"),
    _azure("root-volume-size", "ROOT_VOLUME_SIZE", "0", "OS disk size in GiB (0: the image's).", "int"),
    _azure("disable-cvm", "DISABLECVM", "false", "Use ordinary VMs instead of confidential VMs.", "bool"),
)

_GCP: tuple[Option, ...] = (
    _gcp(
        "gcp-credentials",
        "GCP_CREDENTIALS",
        "",
        "Service account key JSON (empty: workload identity / application default credentials).",
        secret=True,
    ),
    _gcp("gcp-project-id", "GCP_PROJECT_ID", "", "Project ID.", required=True),
    _gcp("zone", "GCP_ZONE", "", "Zone for the pod VMs.", required=True),
    _gcp("network", "GCP_NETWORK", "", "VPC network for the pod VMs.", required=True),
    _gcp(
        "subnetwork",
        "GCP_SUBNETWORK",
        "",
        "Subnetwork (a short name expands to projects/<p>/regions/<region>/subnetworks/<name>).",
    ),
    _gcp("image-name", "PODVM_IMAGE_NAME", "", "Pod VM image name or full path.", required=True),
    _gcp("machine-type", "GCP_MACHINE_TYPE", "e2-medium", "Default machine type."),
    _gcp("machine-types", "GCP_INSTANCE_TYPES", "", "Allowed machine types, comma separated.", "list"),
    _gcp("disk-type", "GCP_DISK_TYPE", "pd-standard", "Boot disk type."),
    _gcp(
        "confidential-type",
        "GCP_CONFIDENTIAL_TYPE",
        "",
        "TDX, SEV or SEV_SNP (required unless DISABLECVM is true).",
    ),
    _gcp(
        "root-volume-size", "ROOT_VOLUME_SIZE", "10", "Boot disk size in GiB (at least the image's).", "int"
    ),
    _gcp("use-public-ip", "USE_PUBLIC_IP", "false", "Dial the pod VM on its external IP.", "bool"),
    _gcp("disable-cvm", "DISABLECVM", "false", "Use ordinary VMs instead of confidential VMs.", "bool"),
)

_IBMCLOUD: tuple[Option, ...] = (
    _ibm("api-key", "IBMCLOUD_API_KEY", "", "IBM Cloud API key (or use a trusted profile).", secret=True),
    _ibm(
        "iam-profile-id",
        "IBMCLOUD_IAM_PROFILE_ID",
        "",
        "Trusted profile ID, used with the projected service account token instead of an API key.",
        secret=True,
    ),
    _ibm(
        "iam-service-url",
        "IBMCLOUD_IAM_ENDPOINT",
        "https://iam.cloud.ibm.com/identity/token",
        "IAM token endpoint.",
    ),
    _ibm(
        "vpc-endpoint",
        "IBMCLOUD_VPC_ENDPOINT",
        "",
        "VPC API endpoint (empty: https://<node region>.iaas.cloud.ibm.com/v1).",
    ),
    _ibm("resource-group-id", "IBMCLOUD_RESOURCE_GROUP_ID", "", "Resource group ID."),
    _ibm("profile-name", "IBMCLOUD_PODVM_INSTANCE_PROFILE_NAME", "", "Default instance profile."),
    _ibm(
        "profile-list",
        "IBMCLOUD_PODVM_INSTANCE_PROFILE_LIST",
        "",
        "Allowed instance profiles, comma separated.",
        "list",
    ),
    _ibm("zone-name", "IBMCLOUD_ZONE", "", "Zone (on IKS: from the node's zone label)."),
    _ibm("primary-subnet-id", "IBMCLOUD_VPC_SUBNET_ID", "", "Subnet ID of the primary NIC."),
    _ibm("key-id", "IBMCLOUD_SSH_KEY_ID", "", "SSH key ID for the pod VMs."),
    _ibm("vpc-id", "IBMCLOUD_VPC_ID", "", "VPC ID."),
    _ibm(
        "ibmcloud-cluster-id",
        "IBMCLOUD_CLUSTER_ID",
        "",
        "Cluster ID (empty: read from kube-system/cluster-info).",
    ),
    _ibm(
        "image-id",
        "IBMCLOUD_PODVM_IMAGE_ID",
        "",
        "Pod VM image IDs, comma separated (one per architecture).",
        "list",
        required=True,
    ),
    _ibm(
        "security-group-ids",
        "IBMCLOUD_SECURITY_GROUP_IDS",
        "",
        "Extra security group IDs (the cluster's kube-<id> group is always added).",
        "list",
    ),
    _ibm("dedicated-host-ids", "IBMCLOUD_DEDICATED_HOST_IDS", "", "Dedicated host IDs.", "list"),
    _ibm(
        "dedicated-host-group-ids",
        "IBMCLOUD_DEDICATED_HOST_GROUP_IDS",
        "",
        "Dedicated host group IDs.",
        "list",
    ),
    _ibm("secondary-subnet-id", None, "", "Subnet ID of a secondary NIC."),
    _ibm("secondary-security-group-id", None, "", "Security group of the secondary NIC."),
    _ibm("disable-cvm", "DISABLECVM", "true", "Use ordinary VMs instead of confidential VMs.", "bool"),
)

#: Static key definitions by provider name; only providers without a distribution here.
PROVIDER_OPTIONS: Mapping[str, tuple[Option, ...]] = {
    "azure": _AZURE,
    "gcp": _GCP,
    "ibmcloud": _IBMCLOUD,
}
