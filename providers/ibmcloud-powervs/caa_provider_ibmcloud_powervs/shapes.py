"""Pure translation between our dataclasses and PowerVS shapes (PVMInstanceCreate, PVMInstance, leases)."""

from __future__ import annotations

import base64
import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from caa_provider_ibmcloud_powervs.config import PowervsConfig
from cloud_api_adaptor.errors import InvalidInput
from cloud_api_adaptor.provider import CreateRequest, InstanceSpec, IPAddress

#: PVMInstanceCreate.userData "must not ... exceed 63K": the base64 text, so raw data up to 3/4 of it
USERDATA_BASE64_LIMIT = 63 * 1024
USERDATA_LIMIT = USERDATA_BASE64_LIMIT // 4 * 3
#: the longest server name PowerVS takes (the Go version's GenerateInstanceName max)
MAX_NAME_LENGTH = 47
_SHAPE = re.compile(r"^(?P<sys>[a-z0-9]+)-(?P<cpu>[0-9]+(?:\.[0-9]+)?)x(?P<mem>[0-9]+(?:\.[0-9]+)?)$")

Shape = dict[str, Any]


@dataclass(frozen=True)
class Size:
    system_type: str
    processors: float
    memory_gb: float


def size_for(config: PowervsConfig, spec: InstanceSpec) -> Size:
    """vCPUs and memory if both annotated (GB = MiB // 1024), else the machine_type shape, else config."""
    if spec.vcpus and spec.memory_mib:
        memory = spec.memory_mib // 1024
        if memory < 1:
            raise InvalidInput("memory", f"{spec.memory_mib} MiB is less than the 1 GB PowerVS minimum")
        return Size(config.system_type, float(spec.vcpus), float(memory))
    shape = spec.instance_type or config.default_shape
    match = _SHAPE.match(shape)
    if match is None:
        raise InvalidInput(
            "instance_type", f"{shape!r} is not a PowerVS shape <systype>-<cpu>x<memGB> (e.g. s922-1x4)"
        )
    return Size(match.group("sys"), float(match.group("cpu")), float(match.group("mem")))


def create_body(
    config: PowervsConfig, request: CreateRequest, size: Size, image: str, tags: Sequence[str]
) -> Shape:
    """The ``POST pvm-instances`` body (PVMInstanceCreate), user data base64 as PowerVS wants it."""
    body: Shape = {
        "serverName": request.name,
        "imageID": image,
        "processors": size.processors,
        "memory": size.memory_gb,
        "procType": config.processor_type,
        "sysType": size.system_type,
        "networks": [{"networkID": config.network_id}],
        "userData": base64.b64encode(request.userdata.encode()).decode(),
        "userTags": list(tags),
    }
    if config.ssh_key_name:
        body["keyPairName"] = config.ssh_key_name
    return body


def fixed_ips(raw: Mapping[str, Any], public: bool) -> tuple[IPAddress, ...]:
    """Addresses of the instance's networks of type ``fixed`` (the external IP first if public)."""
    found: list[IPAddress] = []
    for network in raw.get("networks", []) or []:
        if network.get("type") != "fixed":
            continue
        address = str(network.get("externalIP" if public else "ipAddress") or network.get("ipAddress") or "")
        if address:
            found.append(ipaddress.ip_address(address))
    return tuple(found)


def macs(raw: Mapping[str, Any]) -> dict[str, str]:
    """network ID -> MAC address of each of the instance's networks."""
    return {
        str(n.get("networkID", "")): str(n.get("macAddress", "")).lower()
        for n in raw.get("networks", []) or []
        if n.get("macAddress")
    }


def lease_ip(dhcp: Mapping[str, Any], mac: str) -> IPAddress | None:
    """The address a DHCP server leased to ``mac``, if any."""
    for lease in dhcp.get("leases", []) or []:
        if str(lease.get("instanceMacAddress", "")).lower() == mac and lease.get("instanceIP"):
            return ipaddress.ip_address(str(lease["instanceIP"]))
    return None
