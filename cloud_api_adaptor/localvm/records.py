"""Durable local-VM records: one versioned JSON file per VM, written atomically.

The record is the local provider's "cloud API": it is written before anything is
launched (the intent: id, token, addresses), updated once the VM runs (launcher
pid and its start time, so a reused pid is never mistaken for the VM), and
removed last on delete.  A provider built after a daemon restart finds every VM
from these files alone.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from cloud_api_adaptor.errors import PermanentProviderError, TemporaryProviderError
from cloud_api_adaptor.fsutil import atomic_write, remove_durably

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
#: instance ids are ``local-`` plus ten hex digits; anything else names no VM (and no path)
ID_PATTERN = re.compile(r"local-[0-9a-f]{10}")


class VmState(StrEnum):
    """Where a VM is in its life; only LAUNCHED VMs are returned by a repeated create."""

    CREATING = "creating"
    LAUNCHED = "launched"
    DELETING = "deleting"


@dataclass(frozen=True)
class VmRecord:
    """Everything needed to find, describe and remove one local VM."""

    id: str
    name: str
    token: str
    sandbox_id: str
    mode: str
    #: the address the daemon dials (VM side of the veth, or the VM's loopback address)
    address: str
    created_at: float
    state: VmState = VmState.CREATING
    tags: Mapping[str, str] = field(default_factory=dict)
    spec: Mapping[str, Any] = field(default_factory=dict)
    # netns mode only
    host_address: str | None = None
    prefixlen: int | None = None
    block: int | None = None
    netns: str | None = None
    host_ifname: str | None = None
    # the guest launcher (session leader of every VM process), once launched
    pid: int | None = None
    start_time: int | None = None

    def to_json(self) -> bytes:
        body = asdict(self)
        body["state"] = self.state.value
        body["tags"] = dict(self.tags)
        body["spec"] = dict(self.spec)
        return json.dumps({"schema_version": SCHEMA_VERSION, **body}, indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> VmRecord:
        body = json.loads(data)
        if not isinstance(body, dict):
            raise ValueError("record is not a JSON object")
        version = body.pop("schema_version", None)
        if version != SCHEMA_VERSION:
            raise ValueError(f"unsupported schema_version {version!r}")
        body["state"] = VmState(body["state"])
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in body.items() if k in known})

    def evolve(self, **changes: Any) -> VmRecord:
        return replace(self, **changes)


class RecordStore:
    """The directory of VM records (``<work_dir>/records``).

    It is the local "cloud API", so file-system failures leave it as
    ``TemporaryProviderError`` (a full or read-only disk may recover).
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, vm_id: str) -> Path:
        if not ID_PATTERN.fullmatch(vm_id):
            raise ValueError(f"not a local VM id: {vm_id!r}")
        return self.root / f"{vm_id}.json"

    def get(self, vm_id: str) -> VmRecord | None:
        """The record, or None when there is none (or the id is not one of ours)."""
        if not ID_PATTERN.fullmatch(vm_id):
            return None
        try:
            data = self.path(vm_id).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise TemporaryProviderError(f"cannot read local VM record {vm_id}: {exc}") from exc
        try:
            return VmRecord.from_json(data)
        except (ValueError, KeyError, TypeError) as exc:
            raise PermanentProviderError(f"local VM record {vm_id} is unreadable: {exc}") from exc

    def all(self) -> list[VmRecord]:
        """Every readable record; an unreadable one is logged, not fatal (the rest still count)."""
        records: list[VmRecord] = []
        try:
            paths = sorted(self.root.iterdir())
        except FileNotFoundError:
            return records
        except OSError as exc:
            raise TemporaryProviderError(f"cannot list local VM records in {self.root}: {exc}") from exc
        for path in paths:
            if path.suffix != ".json" or not ID_PATTERN.fullmatch(path.stem):
                continue  # atomic_write's temp files, strays
            try:
                records.append(VmRecord.from_json(path.read_bytes()))
            except FileNotFoundError:
                continue  # deleted while we listed
            except (ValueError, KeyError, TypeError) as exc:
                logger.error("unreadable local VM record %s: %s", path, exc)
        return records

    def put(self, record: VmRecord) -> None:
        try:
            atomic_write(self.path(record.id), record.to_json(), mode=0o600)
        except OSError as exc:
            raise TemporaryProviderError(f"cannot write local VM record {record.id}: {exc}") from exc

    def remove(self, vm_id: str) -> None:
        try:
            remove_durably(self.path(vm_id))
        except OSError as exc:
            raise TemporaryProviderError(f"cannot remove local VM record {vm_id}: {exc}") from exc
