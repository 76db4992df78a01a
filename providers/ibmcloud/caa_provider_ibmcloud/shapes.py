"""Pure translation between our dataclasses and the VPC API's request and response shapes.

No I/O here, so the instance prototype, the profile catalogue and the parsing of
instances are testable on plain dicts.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from caa_provider_ibmcloud.config import IbmcloudConfig
from cloud_api_adaptor.provider import CreateRequest, Instance, InstanceTypeInfo, IPAddress

#: the address the VPC API reports for an interface before it has one
UNSET_ADDRESS = "0.0.0.0"
#: instance states after which the instance will not come up
GONE_STATES = frozenset({"deleting", "failed"})
#: the boot volume's storage profile
BOOT_VOLUME_PROFILE = "general-purpose"
#: IBM's user-data limit, plain text
USERDATA_LIMIT = 64 * 1024

Shape = dict[str, Any]


@dataclass(frozen=True)
class ProfileSpec:
    """What create and best-fit need from an instance profile."""

    name: str
    vcpus: int
    memory_mib: int
    gpus: int
    architecture: str
    confidential_modes: tuple[str, ...]
    secure_boot_modes: tuple[bool, ...]

    def info(self) -> InstanceTypeInfo:
        return InstanceTypeInfo(self.name, self.vcpus, self.memory_mib, self.gpus)


@dataclass(frozen=True)
class Placement:
    """Where create puts the instance: a dedicated host, a host group, or anywhere (both empty)."""

    host_id: str = ""
    group_id: str = ""


def _fixed(value: Any) -> int:
    """A profile property's value (``{"type": "fixed", "value": N}``; ranges give their default)."""
    if not isinstance(value, Mapping):
        return 0
    raw = value.get("value", value.get("default", 0))
    return int(raw or 0)


def profile_spec(raw: Mapping[str, Any]) -> ProfileSpec:
    """A ``GET /instance/profiles/{name}`` answer as a ProfileSpec (memory GiB -> MiB)."""
    arch = raw.get("vcpu_architecture", {})
    modes = raw.get("confidential_compute_modes", {}) or {}
    secure = raw.get("secure_boot_modes", {}) or {}
    return ProfileSpec(
        name=str(raw["name"]),
        vcpus=_fixed(raw.get("vcpu_count")),
        memory_mib=_fixed(raw.get("memory")) * 1024,
        gpus=_fixed(raw.get("gpu_count")),
        architecture=str(arch.get("value", "") if isinstance(arch, Mapping) else ""),
        confidential_modes=tuple(str(m) for m in modes.get("values", ()) or ()),
        secure_boot_modes=tuple(bool(m) for m in secure.get("values", ()) or ()),
    )


def image_architecture(raw: Mapping[str, Any]) -> str:
    """The CPU architecture of a ``GET /images/{id}`` answer ("" if it names none)."""
    return str((raw.get("operating_system") or {}).get("architecture", ""))


def instance_prototype(
    config: IbmcloudConfig,
    request: CreateRequest,
    profile: ProfileSpec,
    image_id: str,
    boot_volume_tags: Sequence[str],
    placement: Placement,
) -> Shape:
    """The ``POST /instances`` body (an InstancePrototype by image, with a primary network interface).

    The boot volume carries the owner tags from the moment it exists (the
    instance's own tags need a Global Tagging call after create), so an instance
    is findable as ours even if the daemon dies right after the create call.
    """
    nic: Shape = {"subnet": {"id": config.primary_subnet_id}}
    if config.security_group_ids:
        nic["security_groups"] = [{"id": g} for g in config.security_group_ids]
    body: Shape = {
        "name": request.name,
        "profile": {"name": profile.name},
        "image": {"id": image_id},
        "zone": {"name": config.zone_name},
        "primary_network_interface": nic,
        "user_data": request.userdata,
        "metadata_service": {"enabled": True, "protocol": "http"},
        "boot_volume_attachment": {
            "delete_volume_on_instance_delete": True,
            "volume": {
                "name": request.name,
                "profile": {"name": BOOT_VOLUME_PROFILE},
                "user_tags": list(boot_volume_tags),
            },
        },
    }
    body.update(confidential_settings(config.disable_cvm, profile))
    if config.vpc_id:
        body["vpc"] = {"id": config.vpc_id}
    if config.key_id:
        body["keys"] = [{"id": config.key_id}]
    if config.resource_group_id:
        body["resource_group"] = {"id": config.resource_group_id}
    if config.secondary_subnet_id:
        secondary: Shape = {"subnet": {"id": config.secondary_subnet_id}, "allow_ip_spoofing": True}
        if config.secondary_security_group_id:
            secondary["security_groups"] = [{"id": config.secondary_security_group_id}]
        body["network_interfaces"] = [secondary]
    if placement.host_id:
        body["placement_target"] = {"id": placement.host_id}
    elif placement.group_id:
        body["placement_target"] = {"id": placement.group_id}
    return body


def confidential_settings(disable_cvm: bool, profile: ProfileSpec) -> Shape:
    """TDX and secure boot on amd64 unless DISABLECVM; s390x takes Secure Execution from its image."""
    if disable_cvm:
        return {"confidential_compute_mode": "disabled", "enable_secure_boot": False}
    if profile.architecture == "s390x":
        return {}
    return {"confidential_compute_mode": "tdx", "enable_secure_boot": True}


def _interfaces(raw: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The primary interface first, then the others in the order the API lists them."""
    primary = raw.get("primary_network_interface") or {}
    others = [n for n in raw.get("network_interfaces", []) or [] if n.get("id") != primary.get("id")]
    return [primary, *others] if primary else others


def _address(nic: Mapping[str, Any]) -> str:
    return str((nic.get("primary_ip") or {}).get("address", "") or "")


def addresses_ready(raw: Mapping[str, Any]) -> bool:
    """True when every interface has a real address (the API reports 0.0.0.0 at first)."""
    nics = _interfaces(raw)
    return bool(nics) and all(_address(n) not in ("", UNSET_ADDRESS) for n in nics)


def instance_ips(raw: Mapping[str, Any]) -> tuple[IPAddress, ...]:
    """Every interface's address, the primary first; unset ones skipped."""
    found: list[IPAddress] = []
    for nic in _interfaces(raw):
        address = _address(nic)
        if address and address != UNSET_ADDRESS:
            found.append(ipaddress.ip_address(address))
    return tuple(found)


def parse_time(text: str) -> float | None:
    """An RFC 3339 timestamp as seconds since the epoch, or None."""
    if not text:
        return None
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def to_instance(raw: Mapping[str, Any], tags: Mapping[str, str]) -> Instance:
    return Instance(
        id=str(raw["id"]),
        name=str(raw.get("name", "")),
        ips=instance_ips(raw),
        tags=dict(tags),
        created_at=parse_time(str(raw.get("created_at", ""))),
    )


def boot_volume_id(raw: Mapping[str, Any]) -> str:
    return str(((raw.get("boot_volume_attachment") or {}).get("volume") or {}).get("id", ""))


def pick_placement(config: IbmcloudConfig) -> Placement:
    """A dedicated host if any is configured, else a host group (the Go order)."""
    if config.dedicated_host_ids:
        return Placement(host_id=config.dedicated_host_ids[0])
    if config.dedicated_host_group_ids:
        return Placement(group_id=config.dedicated_host_group_ids[0])
    return Placement()
