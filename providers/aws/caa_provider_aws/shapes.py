"""Pure translation between our dataclasses and EC2's request and response shapes.

No I/O here, so the RunInstances arguments and the parsing of EC2 answers are
testable on plain dicts.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from caa_provider_aws.config import AwsConfig
from cloud_api_adaptor.provider import CreateRequest, Instance, InstanceTypeInfo, IPAddress

#: tag carrying the ClientToken, so a create whose response was lost can find its instance
TOKEN_TAG = "caa.confidentialcontainers.org/client-token"
#: instance states that still hold (or will hold) resources
LIVE_STATES = ("pending", "running", "stopping", "stopped")
GONE_STATES = frozenset({"shutting-down", "terminated"})
_UNSET_IPS = frozenset({"", "0.0.0.0"})


@dataclass(frozen=True)
class RootDevice:
    """The AMI's root device and the size to give it."""

    name: str
    size_gib: int


def client_token(token: str) -> str:
    """EC2's ClientToken for a request token: 64 hex chars (EC2 allows at most 64 ASCII)."""
    return hashlib.sha256(token.encode()).hexdigest()


def root_device(image: Mapping[str, Any], requested_gib: int) -> RootDevice | None:
    """The AMI's root device sized max(requested, the AMI's own size), or None if it names none."""
    name = str(image.get("RootDeviceName") or "")
    if not name:
        return None
    ami_size = 0
    for mapping in image.get("BlockDeviceMappings", []):
        if mapping.get("DeviceName") == name:
            ami_size = int(mapping.get("Ebs", {}).get("VolumeSize") or 0)
    return RootDevice(name, max(requested_gib, ami_size))


def tag_filters(tags: Mapping[str, str]) -> list[dict[str, Any]]:
    """DescribeInstances filters for instances that carry every tag and are not terminated."""
    filters: list[dict[str, Any]] = [{"Name": f"tag:{k}", "Values": [v]} for k, v in sorted(tags.items())]
    filters.append({"Name": "instance-state-name", "Values": list(LIVE_STATES)})
    return filters


def run_instances_params(
    config: AwsConfig, request: CreateRequest, token: str, root: RootDevice | None
) -> dict[str, Any]:
    """RunInstances arguments; UserData stays raw because botocore base64-encodes it."""
    tags = [{"Key": "Name", "Value": request.name}, {"Key": TOKEN_TAG, "Value": token}]
    tags += [{"Key": k, "Value": v} for k, v in request.tags.items() if k not in ("Name", TOKEN_TAG)]
    params: dict[str, Any] = {
        "MinCount": 1,
        "MaxCount": 1,
        "ClientToken": token,
        # the root volume and the instance carry the same owner tags, so a leak is findable
        "TagSpecifications": [
            {"ResourceType": "instance", "Tags": tags},
            {"ResourceType": "volume", "Tags": tags},
        ],
    }
    if request.userdata:
        params["UserData"] = request.userdata
    if root is not None:
        params["BlockDeviceMappings"] = [
            {"DeviceName": root.name, "Ebs": {"VolumeSize": root.size_gib, "DeleteOnTermination": True}}
        ]
    if config.use_launch_template:
        # the template supplies image, type, network and CPU options (as in the Go version)
        params["LaunchTemplate"] = {"LaunchTemplateName": config.launch_template_name}
        return params
    params["ImageId"] = request.spec.image or config.image_id
    params["InstanceType"] = request.spec.instance_type or config.instance_type
    if config.key_name:
        params["KeyName"] = config.key_name
    if not config.disable_cvm:
        params["CpuOptions"] = {"AmdSevSnp": "enabled"}
    if config.use_public_ip:
        nic: dict[str, Any] = {
            "DeviceIndex": 0,
            "AssociatePublicIpAddress": True,
            "DeleteOnTermination": True,
        }
        if config.subnet_id:
            nic["SubnetId"] = config.subnet_id
        if config.security_group_ids:
            nic["Groups"] = list(config.security_group_ids)
        params["NetworkInterfaces"] = [nic]
    else:
        if config.subnet_id:
            params["SubnetId"] = config.subnet_id
        if config.security_group_ids:
            params["SecurityGroupIds"] = list(config.security_group_ids)
    return params


def state_of(raw: Mapping[str, Any]) -> str:
    return str(raw.get("State", {}).get("Name", ""))


def _first_nic(raw: Mapping[str, Any]) -> Mapping[str, Any]:
    nics = sorted(
        raw.get("NetworkInterfaces", []), key=lambda n: n.get("Attachment", {}).get("DeviceIndex", 0)
    )
    return nics[0] if nics else {}


def private_ip(raw: Mapping[str, Any]) -> str:
    ip = str(raw.get("PrivateIpAddress") or _first_nic(raw).get("PrivateIpAddress") or "")
    return "" if ip in _UNSET_IPS else ip


def public_ip(raw: Mapping[str, Any]) -> str:
    ip = str(raw.get("PublicIpAddress") or _first_nic(raw).get("Association", {}).get("PublicIp") or "")
    return "" if ip in _UNSET_IPS else ip


def is_address_ready(raw: Mapping[str, Any], use_public_ip: bool) -> bool:
    """True once the address the daemon dials is known (public IPs: once running)."""
    if not private_ip(raw):
        return False
    return not use_public_ip or (state_of(raw) == "running" and bool(public_ip(raw)))


def launch_time(raw: Mapping[str, Any]) -> float | None:
    value = raw.get("LaunchTime")
    if isinstance(value, datetime.datetime):
        return value.timestamp()
    return None


def to_instance(raw: Mapping[str, Any], use_public_ip: bool) -> Instance:
    """Our Instance from a DescribeInstances/RunInstances entry; ips[0] is what the daemon dials."""
    tags = {str(t["Key"]): str(t.get("Value", "")) for t in raw.get("Tags", [])}
    ips: list[IPAddress] = []
    if use_public_ip and public_ip(raw):
        ips.append(ipaddress.ip_address(public_ip(raw)))
    if private_ip(raw):
        ips.append(ipaddress.ip_address(private_ip(raw)))
    return Instance(
        id=str(raw["InstanceId"]),
        name=tags.get("Name", ""),
        ips=tuple(ips),
        tags=tags,
        created_at=launch_time(raw),
    )


def instance_type_info(raw: Mapping[str, Any]) -> InstanceTypeInfo:
    """A catalogue entry from DescribeInstanceTypes: default vCPUs, MiB, total GPUs."""
    gpus = sum(int(g.get("Count", 0)) for g in raw.get("GpuInfo", {}).get("Gpus", []))
    return InstanceTypeInfo(
        name=str(raw["InstanceType"]),
        vcpus=int(raw.get("VCpuInfo", {}).get("DefaultVCpus", 0)),
        memory_mib=int(raw.get("MemoryInfo", {}).get("SizeInMiB", 0)),
        gpus=gpus,
    )
