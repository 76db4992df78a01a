"""The pod VM's disk: GPT, a BIOS boot partition, an EFI system partition and the ext4 root.

Made from a root directory without loop devices or mounts: ``sfdisk`` writes the
partition table into a file, ``mkfs.ext4 -d`` builds the root file system from the
directory straight into its partition (``-E offset``), ``mkfs.fat`` and ``mtools``
fill the EFI system partition, and GRUB boots both ways:

- BIOS: ``grub-mkimage`` makes the core image, which goes into the BIOS boot
  partition; the MBR gets GRUB's boot sector pointing at it.  This is what
  ``grub-bios-setup`` does for a core image embedded in a BIOS boot partition; that
  tool insists on finding the disk among the machine's own devices, so the few bytes
  it writes are written here (``install_bios_boot``).
- UEFI: a GRUB EFI binary at the removable-media path ``EFI/BOOT/BOOTX64.EFI``.

Both carry the same early configuration: find the root file system by UUID, then read
``/boot/grub/grub.cfg`` from it (no menu, no timeout).
"""

from __future__ import annotations

import os
import struct
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

SECTOR = 512
MIB = 1 << 20
BIOS_BOOT_TYPE = "21686148-6449-6E6F-744E-656564454649"
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
ROOT_TYPE = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"  # Linux root (x86-64)
BIOS_BOOT_MIB = 1
ESP_MIB = 64
#: room left free in the root file system, on top of what the files take
ROOT_SLACK_MIB = 256
GRUB_BIOS_MODULES = ("biosdisk", "part_gpt", "ext2", "search", "normal", "linux", "echo", "test")
GRUB_EFI_MODULES = ("part_gpt", "ext2", "fat", "search", "normal", "linux", "echo", "test", "efi_gop")
KERNEL_CMDLINE = "rw console=tty0 console=ttyS0,115200n8 quiet"

# GRUB's i386-pc boot sector (boot.img): offsets of the fields grub-bios-setup writes
_BPB_START, _BPB_END = 0x03, 0x5A
_KERNEL_SECTOR = 0x5C
_DRIVE_CHECK = 0x66
_NT_MAGIC = 0x1B8  # disk signature and partition table follow: never overwritten
#: diskboot.img's blocklist entry at the end of the core image's first sector: start, length, segment
_BLOCKLIST = struct.Struct("<QHH")
_CORE_SEGMENT = 0x820


@dataclass(frozen=True)
class Layout:
    """Where things are on the disk (bytes) and the root file system's UUID."""

    size: int
    bios_boot_offset: int
    esp_offset: int
    root_offset: int
    root_size: int
    root_uuid: uuid.UUID


def _run(argv: list[str], *, env: dict[str, str] | None = None, stdin: str | None = None) -> None:
    done = subprocess.run(
        argv, input=stdin, env={**os.environ, **(env or {})}, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:2])} failed: {(done.stdout + done.stderr)[-3000:]}")


def plan(rootfs_bytes: int, root_uuid: uuid.UUID) -> Layout:
    """Partition sizes for a root tree of ``rootfs_bytes`` (ext4 overhead and slack included)."""
    root_mib = int(rootfs_bytes * 1.15) // MIB + ROOT_SLACK_MIB
    bios = MIB
    esp = bios + BIOS_BOOT_MIB * MIB
    root = esp + ESP_MIB * MIB
    size = root + root_mib * MIB + MIB  # the backup GPT takes the last MiB
    return Layout(size, bios, esp, root, root_mib * MIB, root_uuid)


def partition(disk: Path, layout: Layout) -> None:
    with disk.open("wb") as f:
        f.truncate(layout.size)
    table = "\n".join(
        [
            "label: gpt",
            f"label-id: {uuid.uuid5(layout.root_uuid, 'disk')}",
            "unit: sectors",
            f"start={layout.bios_boot_offset // SECTOR}, size={BIOS_BOOT_MIB * MIB // SECTOR}, "
            f"type={BIOS_BOOT_TYPE}, uuid={uuid.uuid5(layout.root_uuid, 'bios')}, name=bios",
            f"start={layout.esp_offset // SECTOR}, size={ESP_MIB * MIB // SECTOR}, "
            f"type={ESP_TYPE}, uuid={uuid.uuid5(layout.root_uuid, 'esp')}, name=esp",
            f"start={layout.root_offset // SECTOR}, size={layout.root_size // SECTOR}, "
            f"type={ROOT_TYPE}, uuid={uuid.uuid5(layout.root_uuid, 'root')}, name=root",
        ]
    )
    _run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(disk)], stdin=table + "\n")


def write_boot_files(rootdir: Path, root_uuid: uuid.UUID, epoch: int) -> None:
    """``/boot/grub/grub.cfg`` (boot the one kernel at once) and ``/etc/fstab`` in the image."""
    kernels = sorted((rootdir / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise RuntimeError(f"expected one kernel in /boot, found {[k.name for k in kernels]}")
    version = kernels[0].name.removeprefix("vmlinuz-")
    grub = rootdir / "boot" / "grub"
    grub.mkdir(parents=True, exist_ok=True)
    (grub / "grub.cfg").write_text(
        "set timeout=0\n"
        f"linux /boot/vmlinuz-{version} root=UUID={root_uuid} {KERNEL_CMDLINE}\n"
        f"initrd /boot/initrd.img-{version}\n"
        "boot\n"
    )
    fstab = rootdir / "etc" / "fstab"
    fstab.write_text(
        "# the root file system is mounted read-write by the initramfs (no fsck: the image is fresh)\n"
        f"UUID={root_uuid} / ext4 rw,noatime,errors=remount-ro 0 0\n"
    )
    for path in (grub / "grub.cfg", grub, fstab):
        os.utime(path, (epoch, epoch))


def make_root_fs(rootdir: Path, disk: Path, layout: Layout, epoch: int) -> None:
    """ext4 from the directory, written straight into the root partition."""
    _run(
        [
            "mkfs.ext4", "-q", "-F", "-d", str(rootdir), "-L", "podvm-root", "-U", str(layout.root_uuid),
            "-m", "0", "-J", "size=16", "-b", "4096",
            "-E", f"offset={layout.root_offset},hash_seed={uuid.uuid5(layout.root_uuid, 'hash')},"
            "root_owner=0:0,lazy_itable_init=0,nodiscard",
            str(disk), f"{layout.root_size // 1024}k",
        ],
        env={"E2FSPROGS_FAKE_TIME": str(epoch)},
    )  # fmt: skip


def _early_config(work: Path, root_uuid: uuid.UUID) -> Path:
    early = work / "grub-early.cfg"
    early.write_text(f"search --no-floppy --fs-uuid --set=root {root_uuid}\nset prefix=($root)/boot/grub\n")
    return early


def make_esp(disk: Path, layout: Layout, work: Path) -> None:
    """FAT32 EFI system partition holding GRUB at the removable-media path."""
    efi = work / "BOOTX64.EFI"
    early = _early_config(work, layout.root_uuid)
    _run(["grub-mkimage", "-O", "x86_64-efi", "-o", str(efi), "-c", str(early), "-p", "/boot/grub",
          *GRUB_EFI_MODULES])  # fmt: skip
    esp = work / "esp.img"
    volume_id = f"{layout.root_uuid.int & 0xFFFFFFFF:08x}"
    _run(["mkfs.fat", "-C", "-F", "32", "-i", volume_id, "-n", "ESP", "--invariant", str(esp),
          str(ESP_MIB * 1024)])  # fmt: skip
    tools = {"MTOOLS_SKIP_CHECK": "1"}
    _run(["mmd", "-i", str(esp), "::/EFI", "::/EFI/BOOT"], env=tools)
    _run(["mcopy", "-i", str(esp), str(efi), "::/EFI/BOOT/BOOTX64.EFI"], env=tools)
    _copy_into(esp, disk, layout.esp_offset)


def _copy_into(part: Path, disk: Path, offset: int) -> None:
    with part.open("rb") as src, disk.open("r+b") as dst:
        dst.seek(offset)
        while chunk := src.read(MIB):
            dst.write(chunk)


def install_bios_boot(
    disk: Path, layout: Layout, work: Path, grub_dir: Path = Path("/usr/lib/grub/i386-pc")
) -> None:
    """GRUB for BIOS: the core image in the BIOS boot partition, the boot sector in the MBR."""
    core_path = work / "core.img"
    early = _early_config(work, layout.root_uuid)
    _run(["grub-mkimage", "-O", "i386-pc", "-o", str(core_path), "-c", str(early), "-p", "/boot/grub",
          *GRUB_BIOS_MODULES])  # fmt: skip
    core = bytearray(core_path.read_bytes())
    core += bytes(-len(core) % SECTOR)
    sectors = len(core) // SECTOR
    if len(core) > BIOS_BOOT_MIB * MIB:
        raise RuntimeError(f"GRUB's core image ({len(core)} bytes) does not fit the BIOS boot partition")
    first = layout.bios_boot_offset // SECTOR
    # diskboot (the core image's first sector) loads the rest: one run of sectors after it
    _BLOCKLIST.pack_into(core, SECTOR - _BLOCKLIST.size, first + 1, sectors - 1, _CORE_SEGMENT)
    _BLOCKLIST.pack_into(core, SECTOR - 2 * _BLOCKLIST.size, 0, 0, 0)  # the list's terminator
    boot = bytearray((grub_dir / "boot.img").read_bytes())
    with disk.open("r+b") as f:
        mbr = f.read(SECTOR)
        boot[_BPB_START:_BPB_END] = mbr[_BPB_START:_BPB_END]
        struct.pack_into("<Q", boot, _KERNEL_SECTOR, first)
        boot[_DRIVE_CHECK : _DRIVE_CHECK + 2] = b"\x90\x90"  # a hard disk: trust the BIOS's drive number
        f.seek(0)
        f.write(bytes(boot[:_NT_MAGIC]))  # the protective MBR's partition table stays
        f.seek(first * SECTOR)
        f.write(core)


def assemble(rootdir: Path, disk: Path, *, root_uuid: uuid.UUID, epoch: int, work: Path) -> Layout:
    """The bootable raw disk ``disk`` from the root tree ``rootdir``."""
    usage = int(
        subprocess.run(
            ["du", "-sxb", str(rootdir)], capture_output=True, text=True, check=True
        ).stdout.split()[0]
    )
    layout = plan(usage, root_uuid)
    write_boot_files(rootdir, root_uuid, epoch)
    partition(disk, layout)
    make_root_fs(rootdir, disk, layout, epoch)
    make_esp(disk, layout, work)
    install_bios_boot(disk, layout, work)
    return layout
