"""AWS provider configuration: the Go version's keys and defaults, validated once.

``AWS_OPTIONS`` declares every key (so the CLI, Helm values and docs come from one
place); ``AwsConfig.from_values`` turns resolved values into a frozen dataclass,
raising ``ConfigError`` naming the key at fault.  Secrets are kept out of ``repr``.

Region, subnet, security groups and key pair left empty are filled from the
instance metadata service when the daemon runs on EC2 (``imds.fill_from_imds``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from cloud_api_adaptor.errors import ConfigError
from cloud_api_adaptor.options import Option, OptionValues

_G = "aws"
DEFAULT_INSTANCE_TYPE = "m6a.large"
DEFAULT_IMDS_ENDPOINT = "http://169.254.169.254"
#: EBS's largest volume (GiB); the Go version caps at int32 instead
MAX_ROOT_VOLUME_GIB = 65536

AWS_OPTIONS: tuple[Option, ...] = (
    Option(
        "aws-access-key-id",
        "AWS_ACCESS_KEY_ID",
        "",
        "Access key (else the default credential chain).",
        secret=True,
        group=_G,
    ),
    Option("aws-secret-key", "AWS_SECRET_ACCESS_KEY", "", "Secret access key.", secret=True, group=_G),
    Option(
        "aws-session-token",
        "AWS_SESSION_TOKEN",
        "",
        "Session token for temporary keys.",
        secret=True,
        group=_G,
    ),
    Option("aws-profile", None, "", "Shared-config profile to use for credentials.", group=_G),
    Option("aws-region", "AWS_REGION", "", "Region (default: from instance metadata).", group=_G),
    Option(
        "aws-endpoint-url", "AWS_ENDPOINT_URL", "", "EC2 endpoint override (e.g. a local emulator).", group=_G
    ),
    Option("imageid", "PODVM_AMI_ID", "", "AMI of the pod VM.", required=True, group=_G),
    Option("instance-type", "PODVM_INSTANCE_TYPE", DEFAULT_INSTANCE_TYPE, "Default instance type.", group=_G),
    Option("instance-types", "PODVM_INSTANCE_TYPES", "", "Allowed instance types.", "list", group=_G),
    Option(
        "subnetid", "AWS_SUBNET_ID", "", "Subnet (default: the node's, from instance metadata).", group=_G
    ),
    Option(
        "securitygroupids", "AWS_SG_IDS", "", "Security group ids (default: the node's).", "list", group=_G
    ),
    Option(
        "keyname", "SSH_KP_NAME", "", "EC2 key pair (default: the node's, from instance metadata).", group=_G
    ),
    Option("use-public-ip", "USE_PUBLIC_IP", "false", "Dial the pod VM on its public IP.", "bool", group=_G),
    Option(
        "root-volume-size",
        "ROOT_VOLUME_SIZE",
        "30",
        "Root volume GiB (raised to the AMI's size; 0: AMI's).",
        "int",
        group=_G,
    ),
    Option("disable-cvm", "DISABLECVM", "false", "Do not ask for AMD SEV-SNP.", "bool", group=_G),
    Option("aws-lt-name", "PODVM_LAUNCHTEMPLATE_NAME", "kata", "Launch template name.", group=_G),
    Option(
        "use-lt",
        "USE_PODVM_LAUNCHTEMPLATE",
        "false",
        "Create pod VMs from the launch template.",
        "bool",
        group=_G,
    ),
    Option(
        "aws-imds-endpoint",
        "AWS_EC2_METADATA_SERVICE_ENDPOINT",
        DEFAULT_IMDS_ENDPOINT,
        "Instance metadata service URL.",
        group=_G,
    ),
    Option(
        "aws-imds-disabled",
        "AWS_EC2_METADATA_DISABLED",
        "false",
        "Never query instance metadata.",
        "bool",
        group=_G,
    ),
)

_INSTANCE_TYPE = re.compile(r"^[a-z0-9-]+\.[a-z0-9-]+$")


@dataclass(frozen=True)
class AwsConfig:
    """Validated AWS provider settings."""

    #: AMI of the pod VM (may be empty only in launch-template mode)
    image_id: str
    instance_type: str = DEFAULT_INSTANCE_TYPE
    #: allowlist for pod-requested types; empty allows only ``instance_type``
    instance_types: tuple[str, ...] = ()
    region: str = ""
    subnet_id: str = ""
    security_group_ids: tuple[str, ...] = ()
    key_name: str = ""
    use_public_ip: bool = False
    #: GiB; raised to the AMI's root volume size; 0 keeps the AMI's mapping untouched
    root_volume_size: int = 30
    disable_cvm: bool = False
    launch_template_name: str = "kata"
    use_launch_template: bool = False
    endpoint_url: str = ""
    profile: str = ""
    access_key_id: str = field(default="", repr=False)
    secret_access_key: str = field(default="", repr=False)
    session_token: str = field(default="", repr=False)
    imds_endpoint: str = DEFAULT_IMDS_ENDPOINT
    imds_disabled: bool = False

    def __post_init__(self) -> None:
        if not self.image_id and not self.use_launch_template:
            raise ConfigError("PODVM_AMI_ID", "required (the AMI of the pod VM)")
        for key, name in [("PODVM_INSTANCE_TYPE", self.instance_type)] + [
            ("PODVM_INSTANCE_TYPES", t) for t in self.instance_types
        ]:
            if not _INSTANCE_TYPE.match(name):
                raise ConfigError(key, f"invalid instance type {name!r} (e.g. m6a.large)")
        if bool(self.access_key_id) != bool(self.secret_access_key):
            raise ConfigError(
                "AWS_SECRET_ACCESS_KEY", "set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or neither"
            )

    @classmethod
    def from_values(cls, values: OptionValues) -> AwsConfig:
        return cls(
            image_id=values.str("PODVM_AMI_ID").strip(),
            instance_type=values.str("PODVM_INSTANCE_TYPE").strip() or DEFAULT_INSTANCE_TYPE,
            instance_types=values.list("PODVM_INSTANCE_TYPES"),
            region=values.str("AWS_REGION").strip(),
            subnet_id=values.str("AWS_SUBNET_ID").strip(),
            security_group_ids=values.list("AWS_SG_IDS"),
            key_name=values.str("SSH_KP_NAME").strip(),
            use_public_ip=values.bool("USE_PUBLIC_IP"),
            root_volume_size=values.int("ROOT_VOLUME_SIZE", 30, minimum=0, maximum=MAX_ROOT_VOLUME_GIB),
            disable_cvm=values.bool("DISABLECVM"),
            launch_template_name=values.str("PODVM_LAUNCHTEMPLATE_NAME").strip() or "kata",
            use_launch_template=values.bool("USE_PODVM_LAUNCHTEMPLATE"),
            endpoint_url=values.str("AWS_ENDPOINT_URL").strip(),
            profile=values.str("aws-profile").strip(),
            access_key_id=values.str("AWS_ACCESS_KEY_ID").strip(),
            secret_access_key=values.str("AWS_SECRET_ACCESS_KEY").strip(),
            session_token=values.str("AWS_SESSION_TOKEN").strip(),
            imds_endpoint=values.str("AWS_EC2_METADATA_SERVICE_ENDPOINT").strip() or DEFAULT_IMDS_ENDPOINT,
            imds_disabled=values.bool("AWS_EC2_METADATA_DISABLED"),
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
