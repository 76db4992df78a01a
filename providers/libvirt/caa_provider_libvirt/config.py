"""The libvirt provider's configuration keys and the frozen ``LibvirtConfig`` built from them.

The keys and defaults are the Go version's (``LIBVIRT_*``, ``DISABLECVM`` defaulting
to true for libvirt), so an existing ``peer-pods-cm`` works unchanged.  A few keys
are new and marked so in their help: the guest architecture and domain type
overrides (for hosts whose capabilities do not tell the truth, e.g. a ``kvm``
offered to a qemu user that cannot open ``/dev/kvm``) and the IP-wait policy.
"""

from __future__ import annotations

import re

from cloud_api_adaptor.errors import ConfigError
from cloud_api_adaptor.options import (
    boolean,
    custom,
    duration,
    integer,
    nested,
    parse_int,
    settings,
    text,
)

DEFAULT_URI = "qemu+ssh://root@192.168.122.1/system?no_verify=1"
DEFAULT_EFI_FIRMWARE = "/usr/share/OVMF/OVMF_CODE_4M.fd"
DEFAULT_ROOT_DISK_GIB = 10

#: the Go version's LIBVIRT_CPUSET check: "0-3", "1,3", "0-1,4-5"
_CPUSET = re.compile(r"^(\d+(-\d+)?)(,\d+(-\d+)?)*$")

ARCHES = ("x86_64", "aarch64", "s390x")
DOMAIN_TYPES = ("kvm", "qemu", "test")
LAUNCH_SECURITY = ("s390-pv", "sev-snp")


def _root_disk_gib(key: str, raw: str) -> int:
    return parse_int(key, raw, minimum=0) or DEFAULT_ROOT_DISK_GIB


@settings
class AddressPolicy:
    """How to wait for a new domain's IP address.

    Until the caller's deadline, with pauses growing up to ``interval`` seconds; when the
    caller gives no deadline, ``attempts`` looks ``interval`` seconds apart.
    """

    attempts: int = integer(
        "libvirt-ip-attempts",
        "LIBVIRT_IP_ATTEMPTS",
        "How many times to look for the pod VM's IP address when the caller sets no deadline (new; "
        "the daemon always sets one: StartVM's deadline and PROXY_TIMEOUT).",
        default=20,
        minimum=1,
    )
    interval: float = duration(
        "libvirt-ip-interval",
        "LIBVIRT_IP_INTERVAL",
        "Longest pause between looks for the pod VM's IP address (new; the pauses grow to it).",
        default=3.0,
    )


@settings
class LibvirtConfig:
    """Validated libvirt provider settings (sizes in MiB/GiB as named)."""

    uri: str = text("uri", "LIBVIRT_URI", "libvirt connection URI.", default=DEFAULT_URI)
    pool: str = text("pool-name", "LIBVIRT_POOL", "Storage pool for pod VM volumes.", default="default")
    network: str = text(
        "network-name", "LIBVIRT_NET", "libvirt network the pod VM's NIC joins.", default="default"
    )
    #: the base volume (pod VM image) root disks are backed by; the pod's image annotation overrides it
    vol_name: str = text(
        "vol-name",
        "LIBVIRT_VOL_NAME",
        "Base (backing) volume of the pod VM image.",
        default="podvm-base.qcow2",
    )
    #: "" (auto), "s390-pv" or "sev-snp"; only used when ``disable_cvm`` is false
    launch_security: str = text(
        "launch-security",
        "LIBVIRT_LAUNCH_SECURITY",
        "Launch security: empty for auto (s390-pv on s390x, sev-snp on x86_64), s390-pv or sev-snp.",
        choices=LAUNCH_SECURITY,
        default="",
    )
    #: pflash loader path on the libvirt host, "" for none (BIOS)
    efi_firmware: str = text(
        "firmware",
        "LIBVIRT_EFI_FIRMWARE",
        'UEFI firmware (pflash loader) path on the libvirt host; -firmware "" boots with the default BIOS.',
        default=DEFAULT_EFI_FIRMWARE,
        keep_empty=True,
    )
    #: the flag's older spelling here; see ``__post_init__``
    efi_firmware_flag: str = text(
        "efi-firmware",
        None,
        "Older spelling of -firmware (the Go flag's name), still accepted; -firmware wins over it.",
        default=DEFAULT_EFI_FIRMWARE,
        keep_empty=True,
    )
    vcpus: int = integer(
        "cpu", "LIBVIRT_CPU", "vCPUs when the pod does not ask for a number.", default=2, minimum=1
    )
    memory_mib: int = integer(
        "memory", "LIBVIRT_MEMORY", "Memory (MiB) when the pod does not ask.", default=8192, minimum=1
    )
    #: "" or a libvirt cpuset such as "0-3,6"
    cpuset: str = text("cpuset", "LIBVIRT_CPUSET", "Host CPUs the vCPUs may run on, e.g. 0-3,6.", default="")
    root_disk_gib: int = custom(
        "root-disk-size",
        "LIBVIRT_ROOT_DISK_SIZE",
        "Root disk size in GiB (0 means 10; never smaller than the base volume).",
        default=DEFAULT_ROOT_DISK_GIB,
        default_text=str(DEFAULT_ROOT_DISK_GIB),
        parse=_root_disk_gib,
        kind="int",
    )
    disable_cvm: bool = boolean(
        "disable-cvm", "DISABLECVM", "Create plain VMs, without launch security.", default=True
    )
    data_dir: str = text(
        "data-dir",
        None,
        "Accepted for compatibility; the cidata ISO is built in memory and uploaded.",
        default="/var/lib/libvirt/images",
    )
    #: "" means the host architecture reported by libvirt
    arch: str = text(
        "libvirt-arch",
        "LIBVIRT_ARCH",
        "Guest architecture x86_64, aarch64 or s390x (new; empty: the host's, from capabilities).",
        choices=ARCHES,
        default="",
    )
    #: "" means kvm when the capabilities offer it, else qemu (or the driver's only type)
    domain_type: str = text(
        "libvirt-domain-type",
        "LIBVIRT_DOMAIN_TYPE",
        "Domain type kvm or qemu (new; empty: kvm when the host offers it, else qemu/TCG).",
        choices=DOMAIN_TYPES,
        default="",
    )
    address_policy: AddressPolicy = nested(default_factory=AddressPolicy)

    def __post_init__(self) -> None:
        # -efi-firmware counts when -firmware (or LIBVIRT_EFI_FIRMWARE) left the default
        if self.efi_firmware == DEFAULT_EFI_FIRMWARE and self.efi_firmware_flag != DEFAULT_EFI_FIRMWARE:
            object.__setattr__(self, "efi_firmware", self.efi_firmware_flag)
        for key, value in (
            ("LIBVIRT_URI", self.uri),
            ("LIBVIRT_POOL", self.pool),
            ("LIBVIRT_NET", self.network),
        ):
            if not value:
                raise ConfigError(key, "must not be empty")
        if not self.vol_name or "/" in self.vol_name:
            raise ConfigError("LIBVIRT_VOL_NAME", f"invalid volume name {self.vol_name!r}")
        if self.launch_security and self.launch_security not in LAUNCH_SECURITY:
            raise ConfigError(
                "LIBVIRT_LAUNCH_SECURITY",
                f"unsupported launch security {self.launch_security!r} "
                f"(use {', '.join(LAUNCH_SECURITY)} or leave it empty)",
            )
        if self.vcpus < 1:
            raise ConfigError("LIBVIRT_CPU", f"{self.vcpus} is below the minimum 1")
        if self.memory_mib < 1:
            raise ConfigError("LIBVIRT_MEMORY", f"{self.memory_mib} is below the minimum 1")
        if self.cpuset and not _CPUSET.match(self.cpuset):
            raise ConfigError("LIBVIRT_CPUSET", f"invalid cpuset {self.cpuset!r} (e.g. 0-3 or 0,2,4-5)")
        if self.root_disk_gib < 1:
            raise ConfigError("LIBVIRT_ROOT_DISK_SIZE", f"{self.root_disk_gib} is below the minimum 1")
        if self.arch and self.arch not in ARCHES:
            raise ConfigError(
                "LIBVIRT_ARCH", f"unsupported architecture {self.arch!r} (use {', '.join(ARCHES)})"
            )
        if self.domain_type and self.domain_type not in DOMAIN_TYPES:
            raise ConfigError(
                "LIBVIRT_DOMAIN_TYPE", f"unsupported domain type {self.domain_type!r} (use kvm or qemu)"
            )
        if self.address_policy.attempts < 1:
            raise ConfigError("LIBVIRT_IP_ATTEMPTS", f"{self.address_policy.attempts} is below the minimum 1")
        if self.address_policy.interval < 0:
            raise ConfigError("LIBVIRT_IP_INTERVAL", "must not be negative")
