"""AWS provider configuration: the Go version's keys and defaults, validated once.

``AwsConfig`` declares every key on the field it fills (so the CLI, Helm values and
docs come from one place); loading it raises ``ConfigError`` naming the key at
fault.  Secrets are kept out of ``repr``.

Region, subnet, security groups and key pair left empty are filled from the
instance metadata service when the daemon runs on EC2 (``imds.fill_from_imds``).
"""

from __future__ import annotations

import re
from dataclasses import replace

from cloud_api_adaptor.errors import ConfigError
from cloud_api_adaptor.options import boolean, integer, settings, text, text_list

DEFAULT_INSTANCE_TYPE = "m6a.large"
DEFAULT_IMDS_ENDPOINT = "http://169.254.169.254"
#: EBS's largest volume (GiB); the Go version caps at int32 instead
MAX_ROOT_VOLUME_GIB = 65536

_INSTANCE_TYPE = re.compile(r"^[a-z0-9-]+\.[a-z0-9-]+$")


@settings
class AwsConfig:
    """Validated AWS provider settings."""

    #: AMI of the pod VM
    image_id: str = text("imageid", "PODVM_AMI_ID", "AMI of the pod VM.", required=True, default="")
    instance_type: str = text(
        "instance-type", "PODVM_INSTANCE_TYPE", "Default instance type.", default=DEFAULT_INSTANCE_TYPE
    )
    #: allowlist for pod-requested types; empty allows only ``instance_type``
    instance_types: tuple[str, ...] = text_list(
        "instance-types", "PODVM_INSTANCE_TYPES", "Allowed instance types.", default=()
    )
    region: str = text("aws-region", "AWS_REGION", "Region (default: from instance metadata).", default="")
    subnet_id: str = text(
        "subnetid", "AWS_SUBNET_ID", "Subnet (default: the node's, from instance metadata).", default=""
    )
    security_group_ids: tuple[str, ...] = text_list(
        "securitygroupids", "AWS_SG_IDS", "Security group ids (default: the node's).", default=()
    )
    key_name: str = text(
        "keyname", "SSH_KP_NAME", "EC2 key pair (default: the node's, from instance metadata).", default=""
    )
    use_public_ip: bool = boolean(
        "use-public-ip", "USE_PUBLIC_IP", "Dial the pod VM on its public IP.", default=False
    )
    #: GiB; raised to the AMI's root volume size; 0 keeps the AMI's mapping untouched
    root_volume_size: int = integer(
        "root-volume-size",
        "ROOT_VOLUME_SIZE",
        "Root volume GiB (raised to the AMI's size; 0: AMI's).",
        default=30,
        minimum=0,
        maximum=MAX_ROOT_VOLUME_GIB,
    )
    disable_cvm: bool = boolean("disable-cvm", "DISABLECVM", "Do not ask for AMD SEV-SNP.", default=False)
    launch_template_name: str = text(
        "aws-lt-name", "PODVM_LAUNCHTEMPLATE_NAME", "Launch template name.", default="kata"
    )
    use_launch_template: bool = boolean(
        "use-lt", "USE_PODVM_LAUNCHTEMPLATE", "Create pod VMs from the launch template.", default=False
    )
    endpoint_url: str = text(
        "aws-endpoint-url", "AWS_ENDPOINT_URL", "EC2 endpoint override (e.g. a local emulator).", default=""
    )
    profile: str = text("aws-profile", None, "Shared-config profile to use for credentials.", default="")
    access_key_id: str = text(
        "aws-access-key-id",
        "AWS_ACCESS_KEY_ID",
        "Access key (else the default credential chain).",
        secret=True,
        default="",
    )
    secret_access_key: str = text(
        "aws-secret-key", "AWS_SECRET_ACCESS_KEY", "Secret access key.", secret=True, default=""
    )
    session_token: str = text(
        "aws-session-token", "AWS_SESSION_TOKEN", "Session token for temporary keys.", secret=True, default=""
    )
    imds_endpoint: str = text(
        "aws-imds-endpoint",
        "AWS_EC2_METADATA_SERVICE_ENDPOINT",
        "Instance metadata service URL.",
        default=DEFAULT_IMDS_ENDPOINT,
    )
    imds_disabled: bool = boolean(
        "aws-imds-disabled", "AWS_EC2_METADATA_DISABLED", "Never query instance metadata.", default=False
    )

    def __post_init__(self) -> None:
        for key, name in [("PODVM_INSTANCE_TYPE", self.instance_type)] + [
            ("PODVM_INSTANCE_TYPES", t) for t in self.instance_types
        ]:
            if not _INSTANCE_TYPE.match(name):
                raise ConfigError(key, f"invalid instance type {name!r} (e.g. m6a.large)")
        if bool(self.access_key_id) != bool(self.secret_access_key):
            raise ConfigError(
                "AWS_SECRET_ACCESS_KEY", "set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or neither"
            )

    @property
    def allowed_instance_types(self) -> tuple[str, ...]:
        """The catalogue to describe: the allowlist, else just the default."""
        return self.instance_types or (self.instance_type,)

    def needs_metadata(self) -> bool:
        """True when a key the metadata service can fill is unset (and it may be asked)."""
        missing = not (self.region and self.subnet_id and self.security_group_ids and self.key_name)
        return missing and not self.imds_disabled

    def with_defaults(
        self,
        *,
        region: str = "",
        subnet_id: str = "",
        security_group_ids: tuple[str, ...] = (),
        key_name: str = "",
    ) -> AwsConfig:
        """A copy with each unset field filled from the given value (explicit settings always win)."""
        return replace(
            self,
            region=self.region or region,
            subnet_id=self.subnet_id or subnet_id,
            security_group_ids=self.security_group_ids or security_group_ids,
            key_name=self.key_name or key_name,
        )
