"""The cloud-init NoCloud seed: an ISO 9660 image labelled ``cidata``.

Built in memory with pycdlib (no genisoimage on the libvirt host, no temporary
files).  The pod VM's process-user-data and cloud-init find ``user-data``,
``meta-data`` and ``vendor-data`` by their lowercase names, which plain ISO 9660
cannot spell: the Rock Ridge and Joliet names carry them, as ``genisoimage -J -r``
would.
"""

from __future__ import annotations

import io

import pycdlib

VOLUME_LABEL = "cidata"

# ISO 9660 (level 3) names, then the Rock Ridge / Joliet names Linux shows.
_FILES = (
    ("/USER_DATA.;1", "user-data"),
    ("/META_DATA.;1", "meta-data"),
    ("/VENDOR_DATA.;1", "vendor-data"),
)


def meta_data(hostname: str) -> bytes:
    """The NoCloud meta-data the Go version writes: just the hostname."""
    return f"local-hostname: {hostname}\n".encode()


def build_cidata_iso(hostname: str, userdata: bytes) -> bytes:
    """An ISO image with ``user-data`` (verbatim), ``meta-data`` and an empty ``vendor-data``."""
    contents = (userdata, meta_data(hostname), b"")
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, vol_ident=VOLUME_LABEL, joliet=3, rock_ridge="1.09")
    try:
        for (iso_path, name), data in zip(_FILES, contents, strict=True):
            iso.add_fp(io.BytesIO(data), len(data), iso_path, rr_name=name, joliet_path=f"/{name}")
        out = io.BytesIO()
        iso.write_fp(out)
    finally:
        iso.close()
    return out.getvalue()


def read_cidata_iso(image: bytes) -> tuple[str, dict[str, bytes]]:
    """The volume label and the files (by Rock Ridge name) of a seed ISO; for tests and ``doctor``."""
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(image))
    try:
        label = iso.pvd.volume_identifier.decode().rstrip()
        files: dict[str, bytes] = {}
        for _iso_path, name in _FILES:
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, rr_path=f"/{name}")
            files[name] = out.getvalue()
    finally:
        iso.close()
    return label, files
