"""The pod VM disk's layout and GRUB's BIOS boot records, read back from a real file (no root)."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import uuid
from pathlib import Path

import pytest

from podvm import disk
from podvm.build import BuildError, BuildOptions, cache_key

ROOT_UUID = uuid.UUID("6b1d1b8e-1a84-4a3e-9f6c-2c1a5f3b7d10")
needs_tools = pytest.mark.skipif(
    not (shutil.which("sfdisk") and shutil.which("grub-mkimage") and Path("/usr/lib/grub/i386-pc").is_dir()),
    reason="needs sfdisk and grub-pc-bin (scripts/apt-packages.txt)",
)


def test_the_plan_leaves_room_and_aligns_every_partition_to_a_mib() -> None:
    layout = disk.plan(400 * disk.MIB, ROOT_UUID)
    for offset in (layout.bios_boot_offset, layout.esp_offset, layout.root_offset, layout.size):
        assert offset % disk.MIB == 0
    assert layout.root_size >= 400 * disk.MIB + disk.ROOT_SLACK_MIB * disk.MIB
    assert layout.size == layout.root_offset + layout.root_size + disk.MIB


@needs_tools
def test_the_gpt_and_grubs_boot_sector_point_at_the_core_image(tmp_path: Path) -> None:
    image = tmp_path / "disk.raw"
    layout = disk.plan(8 * disk.MIB, ROOT_UUID)
    disk.partition(image, layout)
    disk.install_bios_boot(image, layout, tmp_path)

    table = json.loads(
        subprocess.run(["sfdisk", "--json", str(image)], capture_output=True, check=True).stdout
    )
    parts = table["partitiontable"]["partitions"]
    assert [p["type"] for p in parts] == [disk.BIOS_BOOT_TYPE, disk.ESP_TYPE, disk.ROOT_TYPE]
    assert [p["start"] * disk.SECTOR for p in parts] == [
        layout.bios_boot_offset,
        layout.esp_offset,
        layout.root_offset,
    ]

    data = image.read_bytes()
    mbr = data[: disk.SECTOR]
    boot_img = (Path("/usr/lib/grub/i386-pc") / "boot.img").read_bytes()
    first = layout.bios_boot_offset // disk.SECTOR
    assert mbr[510:512] == b"\x55\xaa"
    assert mbr[0x1BE + 4] == 0xEE  # the protective MBR's GPT entry survived
    assert struct.unpack_from("<Q", mbr, 0x5C)[0] == first  # boot sector -> the core image
    assert mbr[0x66:0x68] == b"\x90\x90"
    assert mbr[0x68:0x1B8] == boot_img[0x68:0x1B8]
    core = data[layout.bios_boot_offset : layout.bios_boot_offset + disk.MIB]
    start, length, segment = struct.unpack_from("<QHH", core, disk.SECTOR - 12)
    assert (start, segment) == (first + 1, 0x820) and length > 0  # diskboot -> the rest of the core
    assert core[disk.SECTOR * (length + 1) :].strip(b"\0") == b""  # nothing after the core image


def test_the_cache_key_follows_the_agent_binaries_and_refuses_a_missing_one(tmp_path: Path) -> None:
    agent = tmp_path / "kata-agent"
    agent.write_bytes(b"agent v1")
    options = BuildOptions(kata_agent=agent, cache_dir=tmp_path)
    assert options.profiles == ("kata",)
    first = cache_key(options)
    agent.write_bytes(b"agent v2")
    assert cache_key(options) != first
    assert BuildOptions(cache_dir=tmp_path).profiles == ("dev",)
    with pytest.raises(BuildError, match="--kata-agent"):
        BuildOptions(kata_agent=tmp_path / "missing", cache_dir=tmp_path)
    with pytest.raises(BuildError, match="unknown image format"):
        BuildOptions(formats=("iso",), cache_dir=tmp_path)
