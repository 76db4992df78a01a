"""Azure provider configuration: the Go version's keys and defaults, validated once.

``AzureConfig`` declares every key on the field it fills; loading it raises
``ConfigError`` naming the key at fault.  ``AZURE_CLIENT_SECRET`` is a secret:
it stays out of ``repr`` and is only handed to azure-identity.
"""

from __future__ import annotations

import re

from cloud_api_adaptor.errors import ConfigError
from cloud_api_adaptor.options import boolean, integer, settings, text, text_list

DEFAULT_INSTANCE_SIZE = "Standard_DC2as_v5"
DEFAULT_RESOURCE_MANAGER_ENDPOINT = "https://management.azure.com"
DEFAULT_SSH_USERNAME = "peerpod"
#: Azure's largest managed OS disk, GiB
MAX_DISK_GIB = 4095

_GUID = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
_SIZE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{1,63}")
_RESOURCE_GROUP = re.compile(r"[-\w._()]{1,90}")
_REGION = re.compile(r"[a-z0-9]{2,40}")
_SUBNET_ID = re.compile(
    r"/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.Network/virtualNetworks/[^/]+/subnets/[^/]+",
    re.IGNORECASE,
)
_NSG_ID = re.compile(
    r"/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.Network/networkSecurityGroups/[^/]+",
    re.IGNORECASE,
)
_IMAGE_ID = re.compile(r"/(?:subscriptions|CommunityGalleries|SharedGalleries)/.+", re.IGNORECASE)
_USERNAME = re.compile(r"[a-z_][a-z0-9_.-]{0,63}")


@settings
class AzureConfig:
    """Validated Azure provider settings."""

    subscription_id: str = text(
        "subscriptionid", "AZURE_SUBSCRIPTION_ID", "Subscription ID.", required=True, default=""
    )
    region: str = text(
        "region", "AZURE_REGION", "Region (location) of the pod VMs.", required=True, default=""
    )
    resource_group: str = text(
        "resourcegroup", "AZURE_RESOURCE_GROUP", "Resource group of the pod VMs.", required=True, default=""
    )
    subnet_id: str = text("subnetid", "AZURE_SUBNET_ID", "Subnet ID.", required=True, default="")
    image_id: str = text(
        "imageid",
        "AZURE_IMAGE_ID",
        "Pod VM image: a gallery image (version) id or a community gallery id /CommunityGalleries/...",
        required=True,
        default="",
    )
    instance_size: str = text(
        "instance-size", "AZURE_INSTANCE_SIZE", "Default VM size.", default=DEFAULT_INSTANCE_SIZE
    )
    instance_sizes: tuple[str, ...] = text_list(
        "instance-sizes", "AZURE_INSTANCE_SIZES", "Allowed VM sizes, comma separated.", default=()
    )
    nsg_id: str = text(
        "securitygroupid", "AZURE_NSG_ID", "Network security group ID for the NIC.", default=""
    )
    ssh_username: str = text("ssh-username", "SSH_USERNAME", "Admin user name.", default=DEFAULT_SSH_USERNAME)
    ssh_key_path: str = text(
        "ssh-key-path",
        None,
        "SSH public key file for the pod VMs (empty: a throw-away key, so nobody can log in).",
        default="",
    )
    enable_secure_boot: bool = boolean(
        "enable-secure-boot", "ENABLE_SECURE_BOOT", "UEFI secure boot on the pod VMs.", default=False
    )
    use_public_ip: bool = boolean(
        "use-public-ip", "USE_PUBLIC_IP", "Give pod VMs a public IP and dial it.", default=False
    )
    root_volume_size: int = integer(
        "root-volume-size",
        "ROOT_VOLUME_SIZE",
        "OS disk size in GiB (0: the image's).",
        default=0,
        minimum=0,
        maximum=MAX_DISK_GIB,
    )
    disable_cvm: bool = boolean(
        "disable-cvm", "DISABLECVM", "Use ordinary VMs instead of confidential VMs.", default=False
    )
    client_id: str = text("clientid", "AZURE_CLIENT_ID", "Client (application) ID.", secret=True, default="")
    client_secret: str = text(
        "secret",
        "AZURE_CLIENT_SECRET",
        "Client secret (empty: workload identity, else managed identity).",
        secret=True,
        default="",
    )
    tenant_id: str = text("tenantid", "AZURE_TENANT_ID", "Tenant ID.", secret=True, default="")
    federated_token_file: str = text(
        "federated-token-file",
        "AZURE_FEDERATED_TOKEN_FILE",
        "Workload identity token file (set by the AKS workload identity webhook).",
        default="",
    )
    authority_host: str = text(
        "authority-host",
        "AZURE_AUTHORITY_HOST",
        "Microsoft Entra authority (empty: azure-identity's default, the public cloud).",
        default="",
    )
    ca_bundle: str = text(
        "ca-bundle",
        "REQUESTS_CA_BUNDLE",
        "CA bundle (PEM) to verify ARM and the authority with (empty: the system's).",
        default="",
    )
    resource_manager_endpoint: str = text(
        "resource-manager-endpoint",
        "AZURE_RESOURCE_MANAGER_ENDPOINT",
        "Azure Resource Manager endpoint (Azure Government, Azure China, tests).",
        default=DEFAULT_RESOURCE_MANAGER_ENDPOINT,
    )

    def __post_init__(self) -> None:
        if not _GUID.fullmatch(self.subscription_id):
            raise ConfigError("AZURE_SUBSCRIPTION_ID", f"not a GUID: {self.subscription_id!r}")
        if not _REGION.fullmatch(self.region):
            raise ConfigError("AZURE_REGION", f"invalid region {self.region!r} (e.g. eastus)")
        if not _RESOURCE_GROUP.fullmatch(self.resource_group) or self.resource_group.endswith("."):
            raise ConfigError("AZURE_RESOURCE_GROUP", f"invalid resource group name {self.resource_group!r}")
        if not _SUBNET_ID.fullmatch(self.subnet_id):
            raise ConfigError(
                "AZURE_SUBNET_ID",
                "expected /subscriptions/<s>/resourceGroups/<g>/providers/Microsoft.Network/"
                f"virtualNetworks/<v>/subnets/<n>, got {self.subnet_id!r}",
            )
        if self.nsg_id and not _NSG_ID.fullmatch(self.nsg_id):
            raise ConfigError("AZURE_NSG_ID", f"not a network security group id: {self.nsg_id!r}")
        if not _IMAGE_ID.fullmatch(self.image_id):
            raise ConfigError(
                "AZURE_IMAGE_ID",
                "expected a gallery image id (/subscriptions/...) or /CommunityGalleries/..., "
                f"got {self.image_id!r}",
            )
        for key, size in [("AZURE_INSTANCE_SIZE", self.instance_size)] + [
            ("AZURE_INSTANCE_SIZES", s) for s in self.instance_sizes
        ]:
            if not _SIZE.fullmatch(size):
                raise ConfigError(key, f"invalid VM size {size!r} (e.g. Standard_DC2as_v5)")
        if not _USERNAME.fullmatch(self.ssh_username) or self.ssh_username in ("root", "admin"):
            raise ConfigError("SSH_USERNAME", f"invalid admin user name {self.ssh_username!r}")
        for key, value in (
            ("AZURE_RESOURCE_MANAGER_ENDPOINT", self.resource_manager_endpoint),
            ("AZURE_AUTHORITY_HOST", self.authority_host),
        ):
            if value and not value.startswith("https://"):
                raise ConfigError(key, f"must be an https:// URL, got {value!r}")
        if self.client_secret and not (self.client_id and self.tenant_id):
            raise ConfigError("AZURE_CLIENT_ID", "a client secret needs AZURE_CLIENT_ID and AZURE_TENANT_ID")

    @property
    def allowed_sizes(self) -> tuple[str, ...]:
        """The catalogue to describe: the allowlist, else just the default."""
        return self.instance_sizes or (self.instance_size,)

    @property
    def group_id(self) -> str:
        return f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"

    def vm_id(self, name: str) -> str:
        return f"{self.group_id}/providers/Microsoft.Compute/virtualMachines/{name}"
