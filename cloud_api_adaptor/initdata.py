"""The initdata codec, shared by the worker (CreateVM) and the pod VM (process-user-data).

Initdata is a small TOML document (``algorithm``, ``version``, ``[data]`` with one
string per file name) that carries the attestation agent, CDH and policy
configuration into the pod VM.  In transit it is gzip-compressed and then
standard-base64-encoded; on the VM its digest (with the declared algorithm, over
the *decompressed* TOML bytes) is what attesters report.

The input is partly untrusted (a pod annotation), so decoding caps the
decompressed size: the gzip stream is read incrementally and refused as soon as
it grows past the cap, so a small "gzip bomb" never expands in memory.

Errors are ``InvalidInput`` whose ``field`` is whatever the caller names the
source (the annotation key, ``INITDATA``, or a file path on the VM).
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import io
import tomllib
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from cloud_api_adaptor.errors import InvalidInput

#: the pod annotation carrying raw initdata TOML (the Kata shim has already decoded it)
INITDATA_ANNOTATION = "io.katacontainers.config.hypervisor.cc_init_data"
#: the daemon setting carrying default initdata, already gzip+base64
INITDATA_SETTING = "INITDATA"

ALGORITHMS = ("sha256", "sha384", "sha512")

#: Decompressed-size cap.  Generated policies (genpolicy rego) run to a few hundred
#: KiB and compress about tenfold, so the Azure 64 KiB userdata limit alone would let
#: through more than 256 KiB; 1 MiB leaves room while still bounding memory.
DEFAULT_MAX_BYTES = 1024 * 1024

#: What the pod VM uses when no initdata arrived: the attestation agent still
#: needs an (empty) aa.toml and the digest file must exist.
DUMMY_INITDATA_TOML = 'algorithm = "sha256"\nversion = "0.1.0"\n\n[data]\n"aa.toml" = ""\n'


@dataclass(frozen=True)
class Initdata:
    """A parsed initdata document.  ``data`` maps file names to file contents."""

    algorithm: str
    version: str
    data: Mapping[str, str]


def encode_initdata(toml_text: str, *, field: str = INITDATA_ANNOTATION) -> str:
    """gzip then standard base64, as CAA does with the annotation's TOML.

    ``mtime=0`` keeps the output deterministic (Go's gzip writer leaves it zero too).
    """
    try:
        raw = toml_text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInput(field, f"failed to set initdata from annotation: {exc}") from exc
    return base64.b64encode(gzip.compress(raw, mtime=0)).decode("ascii")


def decode_initdata(b64: str, max_bytes: int = DEFAULT_MAX_BYTES, *, field: str = INITDATA_SETTING) -> bytes:
    """Undo ``encode_initdata``, refusing anything that decompresses past ``max_bytes``.

    Line breaks inside the base64 text are ignored (as Go's decoder does), so a
    file written through cloud-init's literal block, which ends in a newline, decodes.
    Multi-member gzip streams (``cat a.gz b.gz``) are accepted, as in Go.
    """
    text = b64.replace("\r", "").replace("\n", "").strip()
    if not text:
        raise InvalidInput(field, "initdata is empty")
    try:
        compressed = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(field, f"initdata is not valid base64: {exc}") from exc
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(compressed), mode="rb") as stream:
            # GzipFile.read(n) inflates only as much as it needs for n bytes.
            out = stream.read(max_bytes + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise InvalidInput(field, f"initdata is not valid gzip: {exc}") from exc
    if len(out) > max_bytes:
        raise InvalidInput(field, f"initdata decompresses to more than {max_bytes} bytes")
    return out


def parse_initdata(toml_bytes: bytes, *, field: str = INITDATA_SETTING) -> Initdata:
    """Parse and check decompressed initdata TOML.

    Checked: UTF-8, valid TOML, ``algorithm`` one of sha256/sha384/sha512,
    ``version`` a string, ``data`` (optional) a table of strings.  Unknown
    top-level keys are ignored, as the Go and Rust parsers do, so documents
    written for newer versions still load.
    """
    try:
        doc = tomllib.loads(toml_bytes.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InvalidInput(field, f"initdata is not UTF-8: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(field, f"initdata is not valid TOML: {exc}") from exc
    algorithm = doc.get("algorithm")
    if not isinstance(algorithm, str):
        raise InvalidInput(field, "initdata: algorithm must be a string")
    if algorithm not in ALGORITHMS:
        raise InvalidInput(
            field, f"initdata: unsupported algorithm {algorithm!r} (use {', '.join(ALGORITHMS)})"
        )
    version = doc.get("version")
    if not isinstance(version, str):
        raise InvalidInput(field, "initdata: version must be a string")
    data = doc.get("data", {})
    if not isinstance(data, dict):
        raise InvalidInput(field, "initdata: data must be a table")
    for key, value in data.items():
        if not isinstance(value, str):
            raise InvalidInput(field, f"initdata: data.{key} must be a string, not {type(value).__name__}")
    return Initdata(algorithm=algorithm, version=version, data=MappingProxyType(dict(data)))


def digest(toml_bytes: bytes, algorithm: str) -> str:
    """Hex digest of the decompressed TOML bytes with the declared algorithm."""
    if algorithm not in ALGORITHMS:
        raise InvalidInput("algorithm", f"unsupported initdata algorithm {algorithm!r}")
    return hashlib.new(algorithm, toml_bytes).hexdigest()


def load_initdata(
    b64: str, max_bytes: int = DEFAULT_MAX_BYTES, *, field: str = INITDATA_SETTING
) -> tuple[bytes, Initdata]:
    """Decode and parse in one step; returns the TOML bytes (for ``digest``) and the document."""
    toml_bytes = decode_initdata(b64, max_bytes, field=field)
    return toml_bytes, parse_initdata(toml_bytes, field=field)


def select_initdata(annotation_toml: str, default_encoded: str) -> str:
    """The encoded initdata CreateVM sends: the pod annotation if set, else the global default.

    The annotation is only encoded, not validated (as in Go: the Kata shim has
    already checked it); the default was validated at startup.
    """
    if annotation_toml:
        return encode_initdata(annotation_toml, field=INITDATA_ANNOTATION)
    return default_encoded
