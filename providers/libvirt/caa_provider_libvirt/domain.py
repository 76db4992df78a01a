"""Pure XML: pod VM domain definitions per architecture, and reading them back.

Nothing here talks to libvirt; ``provider.py`` feeds capabilities in and sends the
XML out.  Every domain we define carries a ``<metadata>`` element in our own
namespace with the owner tags and the creation time, which is how
``list_instances`` recognises our domains and how their age survives restarts.

Disks are ``type='volume'`` (pool + volume name), not file paths: the domain can be
defined before its volumes exist (so a crash between the two leaves a domain that
delete and the orphan scan can find), and delete knows exactly which volumes are
ours without guessing from paths.
"""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field

METADATA_NS = "https://confidentialcontainers.org/cloud-api-adaptor/libvirt/v1"
DESCRIPTION = "This Virtual Machine is the peer-pod VM"
#: namespace for uuid5(token): the same token always names the same domain
TOKEN_NAMESPACE = uuid.uuid5(
    uuid.NAMESPACE_URL, "https://confidentialcontainers.org/cloud-api-adaptor/libvirt"
)

_SEV_SNP_POLICY = "0x00030000"  # SMT allowed, reserved bit 17 set (the AMD default guest policy)

ET.register_namespace("caa", METADATA_NS)


def domain_uuid(token: str) -> str:
    """The domain UUID for a create token (instance id = this UUID)."""
    return str(uuid.uuid5(TOKEN_NAMESPACE, token))


def domain_mac(domain_id: str) -> str:
    """A stable locally administered MAC (QEMU's 52:54:00 prefix) derived from the domain UUID."""
    tail = uuid.UUID(domain_id).bytes[:3]
    return "52:54:00:" + ":".join(f"{b:02x}" for b in tail)


def root_volume_name(name: str) -> str:
    return f"{name}-root.qcow2"


def iso_volume_name(name: str) -> str:
    return f"{name}-cloudinit.iso"


@dataclass(frozen=True)
class DomainSpec:
    """Everything the domain XML is made from (sizes in MiB)."""

    name: str
    uuid: str
    arch: str
    domain_type: str
    vcpus: int
    memory_mib: int
    pool: str
    network: str
    mac: str
    created_at: float
    tags: Mapping[str, str] = field(default_factory=dict)
    cpuset: str = ""
    #: pflash loader path, "" for the hypervisor's default firmware
    efi_firmware: str = ""
    #: "" (none), "s390-pv" or "sev-snp"
    launch_security: str = ""

    @property
    def root_volume(self) -> str:
        return root_volume_name(self.name)

    @property
    def iso_volume(self) -> str:
        return iso_volume_name(self.name)


@dataclass(frozen=True)
class DomainFacts:
    """What we read back from a domain's XML."""

    uuid: str
    name: str
    #: True when the domain carries our metadata element (we made it)
    ours: bool
    tags: Mapping[str, str]
    created_at: float | None
    #: (pool, volume) of every volume-backed disk
    volumes: tuple[tuple[str, str], ...]
    macs: tuple[str, ...]


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    if text is not None:
        el.text = text
    return el


def _metadata(parent: ET.Element, spec: DomainSpec) -> None:
    meta = _sub(parent, "metadata")
    inst = _sub(meta, f"{{{METADATA_NS}}}instance")
    _sub(inst, f"{{{METADATA_NS}}}created", repr(spec.created_at))
    for key, value in sorted(spec.tags.items()):
        _sub(inst, f"{{{METADATA_NS}}}tag", key=key, value=value)


def _os(domain: ET.Element, spec: DomainSpec) -> None:
    os_el = _sub(domain, "os")
    type_attrs = {"arch": spec.arch}
    if spec.arch == "aarch64":
        type_attrs["machine"] = "virt"
        if not spec.efi_firmware:
            os_el.set("firmware", "efi")  # aarch64 boots only with UEFI: let libvirt pick it
    elif spec.arch == "s390x":
        type_attrs["machine"] = "s390-ccw-virtio"
    elif spec.arch == "x86_64" and spec.launch_security == "sev-snp":
        type_attrs["machine"] = "q35"  # otherwise no explicit machine type, as in the Go version
    _sub(os_el, "type", "hvm", **type_attrs)
    if spec.efi_firmware and spec.arch != "s390x":
        _sub(os_el, "loader", spec.efi_firmware, readonly="yes", type="pflash")
    _sub(os_el, "boot", dev="hd")


def _cpu(domain: ET.Element, spec: DomainSpec) -> None:
    if spec.domain_type == "kvm":
        mode = "host-passthrough" if spec.arch == "aarch64" else "host-model"
        _sub(domain, "cpu", mode=mode)
    elif spec.arch == "aarch64" and spec.domain_type == "qemu":
        _sub(domain, "cpu", mode="maximum")  # TCG 'virt' otherwise defaults to a 32-bit core


def _driver(parent: ET.Element, spec: DomainSpec, **attrs: str) -> None:
    """A <driver>; protected guests need the IOMMU on every virtio device."""
    if spec.launch_security == "s390-pv":
        attrs["iommu"] = "on"
    if attrs:
        _sub(parent, "driver", **attrs)


def _disk(devices: ET.Element, spec: DomainSpec, *, cdrom: bool, dev: str, bus: str) -> None:
    disk = _sub(devices, "disk", type="volume", device="cdrom" if cdrom else "disk")
    volume_attrs = {"name": "qemu", "type": "raw" if cdrom else "qcow2"}
    if bus == "virtio":
        _driver(disk, spec, **volume_attrs)
    else:
        _sub(disk, "driver", **volume_attrs)
    _sub(disk, "source", pool=spec.pool, volume=spec.iso_volume if cdrom else spec.root_volume)
    _sub(disk, "target", dev=dev, bus=bus)
    if cdrom:
        _sub(disk, "readonly")


def _devices(domain: ET.Element, spec: DomainSpec) -> None:
    devices = _sub(domain, "devices")
    if spec.arch == "x86_64":
        # the Go layout: root on SATA; the seed on IDE, or on SATA where q35 has no IDE
        _disk(devices, spec, cdrom=False, dev="sda", bus="sata")
        if spec.efi_firmware or spec.launch_security == "sev-snp":
            _disk(devices, spec, cdrom=True, dev="sdb", bus="sata")
        else:
            _disk(devices, spec, cdrom=True, dev="hda", bus="ide")
    elif spec.arch == "aarch64":
        controller = _sub(devices, "controller", type="scsi", index="0", model="virtio-scsi")
        _driver(controller, spec)
        _disk(devices, spec, cdrom=False, dev="sda", bus="scsi")
        _disk(devices, spec, cdrom=True, dev="sdb", bus="scsi")
    else:  # s390x: virtio-blk root, seed on virtio-scsi (ccw)
        controller = _sub(devices, "controller", type="scsi", index="0", model="virtio-scsi")
        _driver(controller, spec)
        _disk(devices, spec, cdrom=False, dev="vda", bus="virtio")
        _disk(devices, spec, cdrom=True, dev="sda", bus="scsi")
    nic = _sub(devices, "interface", type="network")
    _sub(nic, "mac", address=spec.mac)
    _sub(nic, "source", network=spec.network)
    _sub(nic, "model", type="virtio")
    _driver(nic, spec)
    if spec.arch == "s390x":
        console = _sub(devices, "console", type="pty")
        _sub(console, "target", type="sclp", port="0")
    else:
        serial = _sub(devices, "serial", type="pty")
        _sub(serial, "target", port="0")
        console = _sub(devices, "console", type="pty")
        _sub(console, "target", type="serial", port="0")
    if spec.launch_security == "s390-pv":
        _sub(devices, "memballoon", model="none")  # a balloon cannot reach protected memory


def build_domain_xml(spec: DomainSpec) -> str:
    """The domain definition for ``spec`` (x86_64, aarch64 or s390x)."""
    if spec.arch not in {"x86_64", "aarch64", "s390x"}:
        raise ValueError(f"unsupported guest architecture {spec.arch!r}")
    if spec.launch_security == "s390-pv" and spec.arch != "s390x":
        raise ValueError("s390-pv launch security needs an s390x guest")
    if spec.launch_security == "sev-snp" and spec.arch != "x86_64":
        raise ValueError("sev-snp launch security needs an x86_64 guest")
    domain = ET.Element("domain", type=spec.domain_type)
    _sub(domain, "name", spec.name)
    _sub(domain, "uuid", spec.uuid)
    _sub(domain, "description", DESCRIPTION)
    _metadata(domain, spec)
    _sub(domain, "memory", str(spec.memory_mib), unit="MiB")
    vcpu_attrs = {"placement": "static"}
    if spec.cpuset:
        vcpu_attrs["cpuset"] = spec.cpuset
    _sub(domain, "vcpu", str(spec.vcpus), **vcpu_attrs)
    _os(domain, spec)
    features = _sub(domain, "features")
    if spec.arch != "s390x":
        _sub(features, "acpi")
    if spec.arch == "x86_64":
        _sub(features, "apic")
    _cpu(domain, spec)
    if spec.launch_security == "s390-pv":
        _sub(domain, "launchSecurity", type="s390-pv")
    elif spec.launch_security == "sev-snp":
        sec = _sub(domain, "launchSecurity", type="sev-snp")
        _sub(sec, "policy", _SEV_SNP_POLICY)
    _sub(domain, "on_poweroff", "destroy")
    _sub(domain, "on_reboot", "restart")
    _sub(domain, "on_crash", "destroy")
    _devices(domain, spec)
    ET.indent(domain)
    return ET.tostring(domain, encoding="unicode")


def read_domain(xml: str) -> DomainFacts:
    """Name, UUID, our metadata and the volume-backed disks of a domain definition."""
    root = ET.fromstring(xml)
    inst = root.find(f"./metadata/{{{METADATA_NS}}}instance")
    tags: dict[str, str] = {}
    created_at: float | None = None
    if inst is not None:
        for tag in inst.findall(f"{{{METADATA_NS}}}tag"):
            tags[tag.get("key", "")] = tag.get("value", "")
        try:
            created_at = float(inst.findtext(f"{{{METADATA_NS}}}created", ""))
        except ValueError:
            created_at = None
    volumes = tuple(
        (src.get("pool", ""), src.get("volume", ""))
        for disk in root.findall("./devices/disk[@type='volume']")
        if (src := disk.find("source")) is not None
    )
    macs = tuple(
        (mac.get("address") or "").lower()
        for mac in root.findall("./devices/interface/mac")
        if mac.get("address")
    )
    return DomainFacts(
        uuid=root.findtext("uuid", ""),
        name=root.findtext("name", ""),
        ours=inst is not None,
        tags=tags,
        created_at=created_at,
        volumes=volumes,
        macs=macs,
    )


def root_volume_xml(name: str, capacity_bytes: int, backing_path: str, backing_format: str) -> str:
    """A qcow2 volume backed by the base image (copy-on-write; the base is never written)."""
    vol = ET.Element("volume")
    _sub(vol, "name", name)
    _sub(vol, "capacity", str(capacity_bytes), unit="bytes")
    target = _sub(vol, "target")
    _sub(target, "format", type="qcow2")
    backing = _sub(vol, "backingStore")
    _sub(backing, "path", backing_path)
    _sub(backing, "format", type=backing_format or "qcow2")
    return ET.tostring(vol, encoding="unicode")


def iso_volume_xml(name: str, size_bytes: int) -> str:
    """A raw volume exactly the size of the seed ISO, filled by upload."""
    vol = ET.Element("volume")
    _sub(vol, "name", name)
    _sub(vol, "capacity", str(size_bytes), unit="bytes")
    target = _sub(vol, "target")
    _sub(target, "format", type="raw")
    return ET.tostring(vol, encoding="unicode")


# -- capabilities ------------------------------------------------------------------------------


def host_arch(capabilities_xml: str) -> str:
    """The host CPU architecture from ``virConnectGetCapabilities``."""
    return ET.fromstring(capabilities_xml).findtext("./host/cpu/arch", "").strip()


def guest_domain_types(capabilities_xml: str, arch: str) -> tuple[str, ...]:
    """Domain types (kvm, qemu, ...) the host offers for hvm guests of ``arch``."""
    types: list[str] = []
    for guest in ET.fromstring(capabilities_xml).findall("./guest"):
        if guest.findtext("os_type", "").strip() != "hvm":
            continue
        for arch_el in guest.findall("arch"):
            if arch_el.get("name") == arch:
                types.extend(d.get("type", "") for d in arch_el.findall("domain") if d.get("type"))
    return tuple(dict.fromkeys(types))


def choose_domain_type(offered: tuple[str, ...]) -> str | None:
    """kvm when offered, else qemu (TCG), else whatever the driver offers (the test driver's 'test')."""
    for preferred in ("kvm", "qemu"):
        if preferred in offered:
            return preferred
    return offered[0] if offered else None


def launch_security_types(domain_capabilities_xml: str | None) -> frozenset[str]:
    """Launch security types the domain capabilities report as supported (sev, sev-snp, s390-pv)."""
    if not domain_capabilities_xml:
        return frozenset()
    root = ET.fromstring(domain_capabilities_xml)
    found: set[str] = set()
    launch = root.find("./features/launchSecurity")
    if launch is not None and launch.get("supported") == "yes":
        found.update(v.text.strip() for v in launch.findall("./enum[@name='sectype']/value") if v.text)
    if root.find("./features/s390-pv[@supported='yes']") is not None:
        found.add("s390-pv")
    if root.find("./features/sev[@supported='yes']") is not None:
        found.add("sev")
    return frozenset(found)
