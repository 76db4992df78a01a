"""The ``provision-files`` job: user data and initdata into ``/run/peerpod``.

Steps, as in the Go process-user-data:

1. Fetch the cloud-config from the detected source with bounded retries (fixed
   delay, a fixed number of attempts, the whole fetch under one timeout) and
   parse it strictly: only ``{write_files: [{path, content}]}``.  A parse error
   counts as a failed attempt, like a network error.
2. Write the allow-listed files (dirs 0755, files 0644, atomically); others
   are logged and skipped.
3. initdata: write a dummy if none arrived, decode it (size-capped), write its
   allow-listed data files and the hex digest.
4. Extend TPM PCR 8 with the digest if ``tpm2_pcrextend`` is configured and
   present; a failure there is only logged.

Every path is a *logical* path (``/run/peerpod/apf.json``): the allowlists are
checked on it and the file lands at ``root/<logical path>``, so tests and the
non-root local provider run the same code in a directory.

Parsing is stricter than cloud-init in the ways Go's ``yaml.UnmarshalStrict``
is (unknown keys, wrong types and duplicate keys are errors) and also refuses
YAML aliases, which the worker never emits.  ``encoding: b64`` (or ``base64``)
is accepted because our worker emits it for content a literal block cannot
carry (see ``cloud_api_adaptor.userdata``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import os
import posixpath
import shutil
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cloud_api_adaptor import initdata as initdata_codec
from cloud_api_adaptor.errors import AdaptorError
from cloud_api_adaptor.fsutil import atomic_write
from cloud_api_adaptor.userdata import (
    AA_TOML_PATH,
    APF_CONFIG_PATH,
    AUTH_JSON_PATH,
    CDH_TOML_PATH,
    INITDATA_DIGEST_PATH,
    INITDATA_PATH,
    PEERPOD_DIR,
    POLICY_PATH,
    SCRATCH_MARKER_PATH,
)
from cloud_api_adaptor.vm.metadata import MetadataError, UserDataSource

logger = logging.getLogger(__name__)

WRITE_FILES_ALLOWLIST = frozenset(
    {AA_TOML_PATH, CDH_TOML_PATH, APF_CONFIG_PATH, AUTH_JSON_PATH, INITDATA_PATH, SCRATCH_MARKER_PATH}
)
INITDATA_ALLOWLIST = frozenset({AA_TOML_PATH, CDH_TOML_PATH, POLICY_PATH})
#: the PCR that carries the initdata digest
INITDATA_PCR = 8

_ENTRY_KEYS = frozenset({"path", "content", "encoding"})
_B64_ENCODINGS = frozenset({"b64", "base64"})

Sleep = Callable[[float], Awaitable[None]]


class CloudConfigError(AdaptorError):
    """The user data is not the cloud-config we expect; ``key`` names where."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key


class FetchFailed(AdaptorError):
    """No attempt produced a usable cloud-config; the message is the last error."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how far apart the fetch is tried (Go: retry-go defaults, 5 s apart)."""

    #: attempts in total, the first included
    attempts: int = 10
    #: seconds between attempts
    delay: float = 5.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if self.delay < 0:
            raise ValueError("delay must not be negative")


@dataclass(frozen=True)
class ProvisionConfig:
    """Settings for one ``provision-files`` run."""

    #: where the VM's filesystem is ("/" on a real pod VM)
    root: Path = Path("/")
    #: seconds the whole fetch (all attempts) may take
    fetch_timeout: float = 180.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    #: decompressed initdata larger than this (bytes) is refused
    initdata_max_bytes: int = initdata_codec.DEFAULT_MAX_BYTES
    #: the PCR extend tool, or None to skip (anything but a real pod VM)
    pcr_tool: str | None = None


@dataclass(frozen=True)
class FileEntry:
    """One decoded ``write_files`` entry."""

    path: str
    data: bytes


@dataclass(frozen=True)
class ProvisionResult:
    """What a run did (logical paths)."""

    source: str | None
    written: tuple[str, ...]
    refused: tuple[str, ...]
    digest: str
    pcr_extended: bool


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and aliases."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.MarkedYAMLError("while composing", None, "aliases are not allowed", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:
                continue  # unhashable: the base class reports it
            if duplicate:
                raise yaml.MarkedYAMLError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"duplicate key {key!r}",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def parse_cloud_config(raw: bytes) -> list[FileEntry]:
    """Parse the user data strictly into file entries (in document order)."""
    try:
        doc = yaml.load(raw, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        raise CloudConfigError("", f"invalid YAML: {exc}") from exc
    if doc is None:
        return []
    if not isinstance(doc, dict):
        raise CloudConfigError("", f"expected a mapping, got {type(doc).__name__}")
    for key in doc:
        if key != "write_files":
            raise CloudConfigError(str(key), "unknown key")
    items = doc.get("write_files")
    if items is None:
        return []
    if not isinstance(items, list):
        raise CloudConfigError("write_files", f"expected a list, got {type(items).__name__}")
    return [_parse_entry(i, item) for i, item in enumerate(items)]


def _parse_entry(index: int, item: object) -> FileEntry:
    where = f"write_files[{index}]"
    if not isinstance(item, dict):
        raise CloudConfigError(where, f"expected a mapping, got {type(item).__name__}")
    for key in item:
        if key not in _ENTRY_KEYS:
            raise CloudConfigError(f"{where}.{key}", "unknown key")
    path = item.get("path")
    if not isinstance(path, str) or not path:
        raise CloudConfigError(f"{where}.path", "must be a non-empty string")
    content = item.get("content")
    if content is None:
        content = ""
    if not isinstance(content, str):
        raise CloudConfigError(f"{where}.content", f"expected a string, got {type(content).__name__}")
    encoding = item.get("encoding")
    if encoding is None:
        return FileEntry(path, content.encode("utf-8"))
    if encoding not in _B64_ENCODINGS:
        raise CloudConfigError(f"{where}.encoding", f"unsupported encoding {encoding!r} (only b64)")
    try:
        return FileEntry(path, base64.b64decode("".join(content.split()), validate=True))
    except (binascii.Error, ValueError) as exc:
        raise CloudConfigError(f"{where}.content", f"invalid base64: {exc}") from exc


async def fetch_cloud_config(
    source: UserDataSource, retry: RetryPolicy, timeout: float, *, sleep: Sleep = asyncio.sleep
) -> list[FileEntry]:
    """Fetch and parse, retrying fetch and parse errors; ``FetchFailed`` names the last error."""
    last: Exception | None = None
    try:
        async with asyncio.timeout(timeout):
            for attempt in range(1, retry.attempts + 1):
                try:
                    return parse_cloud_config(await source.fetch())
                except (MetadataError, CloudConfigError) as exc:
                    last = exc
                    logger.warning(
                        "%s: attempt %d/%d to get user data failed: %s",
                        source.name,
                        attempt,
                        retry.attempts,
                        exc,
                    )
                if attempt < retry.attempts:
                    await sleep(retry.delay)
    except TimeoutError:
        detail = f"; last error: {last}" if last else ""
        raise FetchFailed(f"{source.name}: no user data within {timeout:g} s{detail}") from last
    raise FetchFailed(str(last)) from last


def _ensure_dirs(root: Path, logical_dir: str) -> Path:
    """Create ``root/<logical_dir>`` and any missing parents with mode 0755."""
    root.mkdir(parents=True, exist_ok=True)
    target = root
    for part in Path(logical_dir).parts[1:]:
        target = target / part
        if not target.is_dir():
            target.mkdir(mode=0o755)
            os.chmod(target, 0o755)  # mkdir's mode is filtered by the umask
    return target


def _write(root: Path, logical: str, data: bytes) -> None:
    directory = _ensure_dirs(root, posixpath.dirname(logical))
    target = directory / posixpath.basename(logical)
    atomic_write(target, data, mode=0o644)
    os.chmod(target, 0o644)


def write_files(entries: Sequence[FileEntry], root: Path) -> tuple[list[str], list[str]]:
    """Write the allow-listed entries under ``root``; returns (written, refused) logical paths."""
    written: list[str] = []
    refused: list[str] = []
    for entry in entries:
        if entry.path not in WRITE_FILES_ALLOWLIST:
            logger.warning("File: %s is not allowed in WriteFiles.", entry.path)
            refused.append(entry.path)
            continue
        _write(root, entry.path, entry.data)
        logger.info("wrote %s (%d bytes)", entry.path, len(entry.data))
        written.append(entry.path)
    return written, refused


def apply_initdata(root: Path, max_bytes: int) -> tuple[str, list[str], list[str]]:
    """Unpack ``/run/peerpod/initdata`` (a dummy if absent) and write its digest.

    Returns (hex digest, written, refused).  Raises ``InvalidInput`` naming the
    initdata path when the file does not decode or parse.
    """
    encoded_path = root / INITDATA_PATH.lstrip("/")
    if not encoded_path.exists():
        logger.info("no initdata; writing the default")
        _write(
            root, INITDATA_PATH, initdata_codec.encode_initdata(initdata_codec.DUMMY_INITDATA_TOML).encode()
        )
    encoded = encoded_path.read_bytes().decode("ascii", errors="replace")
    toml_bytes, doc = initdata_codec.load_initdata(encoded, max_bytes, field=INITDATA_PATH)
    hex_digest = initdata_codec.digest(toml_bytes, doc.algorithm)
    written: list[str] = []
    refused: list[str] = []
    for name, content in doc.data.items():
        logical = posixpath.normpath(posixpath.join(PEERPOD_DIR, name))
        if logical not in INITDATA_ALLOWLIST:
            logger.warning("File: %s is not allowed in initdata.", name)
            refused.append(name)
            continue
        _write(root, logical, content.encode("utf-8"))
        written.append(logical)
    _write(root, INITDATA_DIGEST_PATH, hex_digest.encode("ascii"))
    logger.info("initdata digest (%s): %s", doc.algorithm, hex_digest)
    return hex_digest, written, refused


async def extend_pcr(tool: str | None, hex_digest: str, *, timeout: float = 30.0) -> bool:
    """``tool 8:sha256=<first 64 hex>``; True on success, failures only logged."""
    if tool is None:
        return False
    path = shutil.which(tool)
    if path is None:
        logger.info("%s not found; PCR %d not extended", tool, INITDATA_PCR)
        return False
    arg = f"{INITDATA_PCR}:sha256={hex_digest[:64]}"
    try:
        proc = await asyncio.create_subprocess_exec(
            path, arg, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
    except OSError as exc:
        logger.warning("running %s failed: %s", tool, exc)
        return False
    try:
        async with asyncio.timeout(timeout):
            _, stderr = await proc.communicate()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        logger.warning("%s %s timed out", tool, arg)
        return False
    if proc.returncode != 0:
        logger.warning(
            "%s %s failed (%s): %s", tool, arg, proc.returncode, stderr.decode(errors="replace").strip()
        )
        return False
    logger.info("extended PCR %d with the initdata digest", INITDATA_PCR)
    return True


async def provision(
    config: ProvisionConfig, source: UserDataSource | None, *, sleep: Sleep = asyncio.sleep
) -> ProvisionResult:
    """Run the whole job; ``source`` None means cloud-init has already written the files."""
    written: list[str] = []
    refused: list[str] = []
    if source is None:
        logger.info("no user data source; only processing initdata")
    else:
        entries = await fetch_cloud_config(source, config.retry, config.fetch_timeout, sleep=sleep)
        written, refused = await asyncio.to_thread(write_files, entries, config.root)
    hex_digest, init_written, init_refused = await asyncio.to_thread(
        apply_initdata, config.root, config.initdata_max_bytes
    )
    extended = await extend_pcr(config.pcr_tool, hex_digest)
    return ProvisionResult(
        source=source.name if source else None,
        written=(*written, *init_written),
        refused=(*refused, *init_refused),
        digest=hex_digest,
        pcr_extended=extended,
    )
