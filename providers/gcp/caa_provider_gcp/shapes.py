"""Pure translation between our dataclasses and Compute Engine's JSON (camelCase, as on the wire).

No I/O here: the ``instances.insert`` body, the request id and the parsing of
instances and machine types are testable on plain dicts.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from caa_provider_gcp.config import GcpConfig
from caa_provider_gcp.labels import labels_for, tags_from_labels
from cloud_api_adaptor.provider import CreateRequest, Instance, InstanceTypeInfo, IPAddress

Json = dict[str, Any]

#: metadata value limit (bytes): "size must be less than or equal to 262144 bytes (256 KiB)"
METADATA_VALUE_LIMIT = 262144
#: largest raw userdata whose base64 fits one metadata value
USERDATA_LIMIT = METADATA_VALUE_LIMIT // 4 * 3
#: namespace of the insert request ids (uuid5 of the request token; never the zero UUID)
REQUEST_ID_NAMESPACE = uuid.UUID("5f0c6a7e-2b1d-4c55-9a3e-c0c0a1e5d0a5")
#: instance states that hold no running VM but still exist (and cost their disk)
GONE_STATUSES = frozenset({"STOPPING", "TERMINATED"})
_UNSET_IPS = frozenset({"", "0.0.0.0"})


def insert_request_id(token: str) -> str:
    """The ``requestId`` of the insert for ``token``: a retry sends the same one, so GCP creates once."""
    return str(uuid.uuid5(REQUEST_ID_NAMESPACE, token))


def encoded_userdata_size(userdata: str) -> int:
    """Length of the metadata value the userdata becomes (base64)."""
    return 4 * math.ceil(len(userdata.encode("utf-8")) / 3)


@dataclass(frozen=True)
class BootDisk:
    """The boot disk's source image and size."""

    image: str
    size_gib: int


def boot_disk(config: GcpConfig, image_url: str, image: Mapping[str, Any]) -> BootDisk:
    """max(ROOT_VOLUME_SIZE, the image's own size), as the Go version sizes it."""
    image_size = int(image.get("diskSizeGb") or 0)
    return BootDisk(image_url, max(config.root_volume_size, image_size))


def instance_body(config: GcpConfig, request: CreateRequest, disk: BootDisk) -> Json:
    """The ``instances.insert`` body for ``request``.

    No external IP unless ``USE_PUBLIC_IP``: the daemon dials the internal IP, and an
    external one would expose the forwarder port and spend the region's external
    address quota.  (The Go version always attaches one.)
    """
    zone = config.zone
    machine_type = request.spec.instance_type or config.machine_type
    labels = labels_for(request.tags, request.token)
    nic: Json = {"network": config.network_url, "stackType": "IPV4_ONLY"}
    if config.subnetwork_url:
        nic["subnetwork"] = config.subnetwork_url
    if config.use_public_ip:
        nic["accessConfigs"] = [{"name": "External NAT", "type": "ONE_TO_ONE_NAT", "networkTier": "STANDARD"}]
    body: Json = {
        "name": request.name,
        "machineType": f"zones/{zone}/machineTypes/{machine_type}",
        "disks": [
            {
                "boot": True,
                "autoDelete": True,
                "initializeParams": {
                    "sourceImage": disk.image,
                    "diskSizeGb": str(disk.size_gib),
                    "diskType": f"zones/{zone}/diskTypes/{config.disk_type}",
                    "labels": labels,
                },
            }
        ],
        "networkInterfaces": [nic],
        "metadata": {
            "items": [
                {"key": "user-data", "value": base64.b64encode(request.userdata.encode()).decode()},
                {"key": "user-data-encoding", "value": "base64"},
            ]
        },
        "labels": labels,
    }
    if not config.disable_cvm:
        body["confidentialInstanceConfig"] = {
            "enableConfidentialCompute": True,
            "confidentialInstanceType": config.confidential_type,
        }
    if not config.disable_cvm or request.spec.gpus > 0:
        # live migration is impossible for confidential VMs and VMs with GPUs
        body["scheduling"] = {"onHostMaintenance": "TERMINATE", "automaticRestart": True}
    return body


def _nic(raw: Mapping[str, Any]) -> Mapping[str, Any]:
    nics = raw.get("networkInterfaces") or []
    return nics[0] if nics else {}


def internal_ip(raw: Mapping[str, Any]) -> str:
    ip = str(_nic(raw).get("networkIP") or "")
    return "" if ip in _UNSET_IPS else ip


def external_ip(raw: Mapping[str, Any]) -> str:
    for config in _nic(raw).get("accessConfigs") or []:
        ip = str(config.get("natIP") or "")
        if ip not in _UNSET_IPS:
            return ip
    return ""


def is_address_ready(raw: Mapping[str, Any], use_public_ip: bool) -> bool:
    """True once the address the daemon dials is known."""
    return bool(internal_ip(raw)) and (not use_public_ip or bool(external_ip(raw)))


def created_at(raw: Mapping[str, Any]) -> float | None:
    value = str(raw.get("creationTimestamp") or "")
    if not value:
        return None
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def to_instance(raw: Mapping[str, Any], use_public_ip: bool) -> Instance:
    """Our Instance from an Instance resource; ips[0] is what the daemon dials."""
    ips: list[IPAddress] = []
    if use_public_ip and external_ip(raw):
        ips.append(ipaddress.ip_address(external_ip(raw)))
    if internal_ip(raw):
        ips.append(ipaddress.ip_address(internal_ip(raw)))
    name = str(raw["name"])
    return Instance(
        id=name,
        name=name,
        ips=tuple(ips),
        tags=tags_from_labels(raw.get("labels") or {}),
        created_at=created_at(raw),
    )


def machine_type_info(raw: Mapping[str, Any]) -> InstanceTypeInfo:
    """A catalogue entry from a MachineType resource: vCPUs, MiB, accelerator count."""
    gpus = sum(int(a.get("guestAcceleratorCount", 0)) for a in raw.get("accelerators") or [])
    return InstanceTypeInfo(
        name=str(raw["name"]),
        vcpus=int(raw.get("guestCpus") or 0),
        memory_mib=int(raw.get("memoryMb") or 0),
        gpus=gpus,
    )


def operation_errors(operation: Mapping[str, Any]) -> list[Json]:
    """The ``error.errors`` of a finished operation (empty when it succeeded)."""
    return list((operation.get("error") or {}).get("errors") or [])
