"""Pure parts: domain XML per architecture, reading it back, capabilities, the cidata ISO."""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET

import pytest
from caa_provider_libvirt.domain import (
    DESCRIPTION,
    METADATA_NS,
    DomainSpec,
    build_domain_xml,
    choose_domain_type,
    domain_mac,
    domain_uuid,
    guest_domain_types,
    host_arch,
    launch_security_types,
    read_domain,
    root_volume_xml,
)
from caa_provider_libvirt.seed_iso import build_cidata_iso, read_cidata_iso

TAGS = {
    "caa.confidentialcontainers.org/cluster": "c1",
    "caa.confidentialcontainers.org/node": "n1",
    "team": "a&b",
}


def spec(**changes: object) -> DomainSpec:
    base = DomainSpec(
        name="podvm-web-1234",
        uuid=domain_uuid("token-1"),
        arch="x86_64",
        domain_type="kvm",
        vcpus=2,
        memory_mib=4096,
        pool="pods",
        network="podnet",
        mac=domain_mac(domain_uuid("token-1")),
        created_at=1700000000.25,
        tags=TAGS,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def parse(s: DomainSpec) -> ET.Element:
    return ET.fromstring(build_domain_xml(s))


def disks(root: ET.Element) -> list[tuple[str, str, str, str]]:
    """(device, bus, dev, volume) per disk."""
    result = []
    for disk in root.findall("./devices/disk"):
        target, source = disk.find("target"), disk.find("source")
        assert target is not None and source is not None
        result.append(
            (disk.get("device", ""), target.get("bus", ""), target.get("dev", ""), source.get("volume", ""))
        )
    return result


def test_uuid_and_mac_are_derived_from_the_token_alone() -> None:
    assert domain_uuid("token-1") == domain_uuid("token-1")
    assert domain_uuid("token-1") != domain_uuid("token-2")
    mac = domain_mac(domain_uuid("token-1"))
    assert mac.startswith("52:54:00:") and len(mac) == 17
    assert mac == domain_mac(domain_uuid("token-1"))


def test_x86_64_bios_domain_has_the_go_layout() -> None:
    root = parse(spec(efi_firmware=""))
    assert root.get("type") == "kvm"
    assert root.findtext("name") == "podvm-web-1234"
    assert root.findtext("uuid") == domain_uuid("token-1")
    assert root.findtext("description") == DESCRIPTION
    memory = root.find("memory")
    assert memory is not None and (memory.text, memory.get("unit")) == ("4096", "MiB")
    assert root.findtext("vcpu") == "2"
    os_type = root.find("./os/type")
    assert os_type is not None and os_type.get("arch") == "x86_64" and os_type.get("machine") is None
    assert root.find("./os/loader") is None
    assert root.find("./cpu[@mode='host-model']") is not None
    assert disks(root) == [
        ("disk", "sata", "sda", "podvm-web-1234-root.qcow2"),
        ("cdrom", "ide", "hda", "podvm-web-1234-cloudinit.iso"),
    ]
    assert all(s.get("pool") == "pods" for s in root.findall("./devices/disk/source"))
    nic = root.find("./devices/interface[@type='network']")
    assert nic is not None
    assert nic.find("source") is not None and nic.find("source").get("network") == "podnet"  # type: ignore[union-attr]
    assert nic.find("model").get("type") == "virtio"  # type: ignore[union-attr]
    assert nic.find("mac").get("address") == domain_mac(domain_uuid("token-1"))  # type: ignore[union-attr]
    assert root.find("./devices/serial[@type='pty']") is not None
    assert root.find("./devices/console[@type='pty']/target[@type='serial']") is not None
    assert root.find("launchSecurity") is None


def test_x86_64_with_firmware_boots_efi_and_puts_the_seed_on_sata() -> None:
    root = parse(spec(efi_firmware="/usr/share/OVMF/OVMF_CODE_4M.fd"))
    loader = root.find("./os/loader")
    assert loader is not None
    assert (loader.text, loader.get("type"), loader.get("readonly")) == (
        "/usr/share/OVMF/OVMF_CODE_4M.fd",
        "pflash",
        "yes",
    )
    assert [d[:3] for d in disks(root)] == [("disk", "sata", "sda"), ("cdrom", "sata", "sdb")]


def test_tcg_domains_leave_the_cpu_model_to_qemu() -> None:
    root = parse(spec(domain_type="qemu"))
    assert root.get("type") == "qemu"
    assert root.find("cpu") is None


def test_cpuset_pins_the_vcpus() -> None:
    vcpu = parse(spec(cpuset="0-3,6")).find("vcpu")
    assert vcpu is not None and vcpu.get("cpuset") == "0-3,6"
    no_pin = parse(spec()).find("vcpu")
    assert no_pin is not None and no_pin.get("cpuset") is None


def test_aarch64_uses_virt_efi_host_passthrough_and_virtio_scsi() -> None:
    root = parse(spec(arch="aarch64", efi_firmware=""))
    os_el = root.find("os")
    assert os_el is not None and os_el.get("firmware") == "efi"
    os_type = root.find("./os/type")
    assert os_type is not None and (os_type.get("arch"), os_type.get("machine")) == ("aarch64", "virt")
    assert root.find("./cpu[@mode='host-passthrough']") is not None
    assert root.find("./devices/controller[@type='scsi'][@model='virtio-scsi']") is not None
    assert [d[:3] for d in disks(root)] == [("disk", "scsi", "sda"), ("cdrom", "scsi", "sdb")]
    tcg = parse(spec(arch="aarch64", domain_type="qemu", efi_firmware="/usr/share/AAVMF/AAVMF_CODE.fd"))
    assert tcg.find("./cpu[@mode='maximum']") is not None
    loader = tcg.find("./os/loader")
    assert loader is not None and loader.text == "/usr/share/AAVMF/AAVMF_CODE.fd"


def test_s390x_protected_virtualisation_turns_the_iommu_on_for_every_virtio_device() -> None:
    root = parse(spec(arch="s390x", launch_security="s390-pv", efi_firmware="/ignored.fd"))
    os_type = root.find("./os/type")
    assert os_type is not None and os_type.get("machine") == "s390-ccw-virtio"
    assert root.find("./os/loader") is None
    security = root.find("launchSecurity")
    assert security is not None and security.get("type") == "s390-pv"
    assert root.find("./devices/console/target[@type='sclp']") is not None
    assert root.find("./devices/serial") is None
    assert [d[:3] for d in disks(root)] == [("disk", "virtio", "vda"), ("cdrom", "scsi", "sda")]
    for path in (
        "./devices/disk[@device='disk']",
        "./devices/interface",
        "./devices/controller[@type='scsi']",
    ):
        driver = root.find(f"{path}/driver")
        assert driver is not None and driver.get("iommu") == "on", path
    assert root.find("./devices/memballoon[@model='none']") is not None
    plain = parse(spec(arch="s390x"))
    assert plain.find("launchSecurity") is None
    assert all(d.get("iommu") is None for d in plain.iter("driver"))


def test_sev_snp_uses_q35_and_a_launch_security_policy() -> None:
    root = parse(spec(launch_security="sev-snp", efi_firmware="/usr/share/OVMF/OVMF.amdsev.fd"))
    security = root.find("launchSecurity")
    assert security is not None and security.get("type") == "sev-snp"
    assert security.findtext("policy") == "0x00030000"
    os_type = root.find("./os/type")
    assert os_type is not None and os_type.get("machine") == "q35"


@pytest.mark.parametrize(
    ("arch", "security"), [("x86_64", "s390-pv"), ("aarch64", "sev-snp"), ("s390x", "sev-snp"), ("ppc64", "")]
)
def test_impossible_combinations_are_refused(arch: str, security: str) -> None:
    with pytest.raises(ValueError, match=r"arch|guest"):
        build_domain_xml(spec(arch=arch, launch_security=security))


def test_metadata_round_trips_owner_tags_and_creation_time() -> None:
    xml = build_domain_xml(spec())
    assert METADATA_NS in xml
    facts = read_domain(xml)
    assert facts.ours
    assert (facts.name, facts.uuid) == ("podvm-web-1234", domain_uuid("token-1"))
    assert dict(facts.tags) == TAGS
    assert facts.created_at == 1700000000.25
    assert facts.volumes == (("pods", "podvm-web-1234-root.qcow2"), ("pods", "podvm-web-1234-cloudinit.iso"))
    assert facts.macs == (domain_mac(domain_uuid("token-1")),)


def test_a_domain_without_our_metadata_is_not_ours() -> None:
    facts = read_domain("<domain type='kvm'><name>other</name><uuid>u</uuid><devices/></domain>")
    assert not facts.ours and facts.tags == {} and facts.created_at is None and facts.volumes == ()


def test_root_volume_is_a_qcow2_overlay_of_the_base() -> None:
    vol = ET.fromstring(root_volume_xml("p-root.qcow2", 10 * 1024**3, "/pool/base.qcow2", "qcow2"))
    assert vol.findtext("name") == "p-root.qcow2"
    assert vol.findtext("capacity") == str(10 * 1024**3)
    assert vol.find("./target/format").get("type") == "qcow2"  # type: ignore[union-attr]
    assert vol.findtext("./backingStore/path") == "/pool/base.qcow2"


CAPS = """<capabilities><host><cpu><arch>x86_64</arch></cpu></host>
<guest><os_type>hvm</os_type><arch name='x86_64'><domain type='qemu'/><domain type='kvm'/></arch></guest>
<guest><os_type>hvm</os_type><arch name='i686'><domain type='qemu'/></arch></guest></capabilities>"""


def test_capabilities_give_the_host_arch_and_prefer_kvm_over_tcg() -> None:
    assert host_arch(CAPS) == "x86_64"
    assert guest_domain_types(CAPS, "x86_64") == ("qemu", "kvm")
    assert choose_domain_type(guest_domain_types(CAPS, "x86_64")) == "kvm"
    assert choose_domain_type(guest_domain_types(CAPS, "i686")) == "qemu"
    assert choose_domain_type(("test",)) == "test"
    assert choose_domain_type(guest_domain_types(CAPS, "s390x")) is None


def test_launch_security_support_is_read_from_domain_capabilities() -> None:
    snp = """<domainCapabilities><features><sev supported='yes'/>
      <launchSecurity supported='yes'><enum name='sectype'><value>sev</value><value>sev-snp</value></enum>
      </launchSecurity></features></domainCapabilities>"""
    assert launch_security_types(snp) == {"sev", "sev-snp"}
    pv = "<domainCapabilities><features><s390-pv supported='yes'/></features></domainCapabilities>"
    assert launch_security_types(pv) == {"s390-pv"}
    none = "<domainCapabilities><features><sev supported='no'/></features></domainCapabilities>"
    assert launch_security_types(none) == set()
    assert launch_security_types(None) == set()


def test_cidata_iso_carries_the_userdata_verbatim_with_lowercase_names() -> None:
    userdata = b"#cloud-config\nwrite_files:\n  - path: /run/peerpod/apf.json\n    content: |\n      {}\n"
    label, files = read_cidata_iso(build_cidata_iso("podvm-web-1234", userdata))
    assert label == "cidata"
    assert files == {
        "user-data": userdata,
        "meta-data": b"local-hostname: podvm-web-1234\n",
        "vendor-data": b"",
    }


def test_cidata_iso_reads_the_same_through_joliet() -> None:
    import io

    import pycdlib

    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(build_cidata_iso("h", b"x" * 5000)))
    try:
        out = io.BytesIO()
        iso.get_file_from_iso_fp(out, joliet_path="/user-data")
        assert out.getvalue() == b"x" * 5000
    finally:
        iso.close()
