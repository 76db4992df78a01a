"""Durable sandbox records: one versioned JSON file per sandbox under STATE_DIR.

Every write is atomic and durable (temp file, fsync, rename, directory fsync):
a crash leaves either the old or the new record, never a torn one.  Records are
written before every cloud call (intent) and after it (result).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cloud_api_adaptor.fsutil import atomic_write, remove_durably
from cloud_api_adaptor.hypervisor.models import SandboxRecord

logger = logging.getLogger(__name__)


class SandboxStore:
    """Reads and writes sandbox records; writes run off the event loop (fsync blocks).

    Writes use a pool of their own, so a burst of fsyncs never queues behind (or
    starves) provider SDK calls on the loop's default executor.

    Writes of one record are ordered: each is numbered when it is requested (on
    the event loop), and a write that reaches the disk after a newer one of the
    same record is dropped.  This matters when a caller is cancelled while its
    write is still running in a thread and a cleanup writes the same record.
    """

    def __init__(self, state_dir: Path, writers: int = 8) -> None:
        self._dir = state_dir / "sandboxes"
        self._pool = ThreadPoolExecutor(max_workers=writers, thread_name_prefix="state-writer")
        self._sequence = itertools.count(1)
        self._guard = threading.Lock()
        self._record_locks: dict[str, threading.Lock] = {}
        self._written: dict[str, int] = {}

    @property
    def directory(self) -> Path:
        return self._dir

    def _path(self, sandbox_id: str) -> Path:
        return self._dir / f"{sandbox_id}.json"

    def prepare(self) -> None:
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    async def save(self, record: SandboxRecord) -> None:
        data = record.to_json()
        path = self._path(record.id)
        await self._ordered(record.id, lambda: atomic_write(path, data))

    async def remove(self, sandbox_id: str) -> None:
        path = self._path(sandbox_id)
        await self._ordered(sandbox_id, lambda: remove_durably(path))

    async def _ordered(self, sandbox_id: str, write: Callable[[], Any]) -> None:
        sequence = next(self._sequence)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, self._write_in_order, sandbox_id, sequence, write)

    def _write_in_order(self, sandbox_id: str, sequence: int, write: Callable[[], Any]) -> None:
        with self._guard:
            lock = self._record_locks.setdefault(sandbox_id, threading.Lock())
        with lock:
            if self._written.get(sandbox_id, 0) > sequence:
                return  # a newer state of this record is already on disk
            write()
            self._written[sandbox_id] = sequence

    def close(self) -> None:
        """Wait for queued writes, then release the writer threads."""
        self._pool.shutdown(wait=True)

    def load_all(self) -> list[SandboxRecord]:
        """Every readable record; unreadable ones are kept aside (renamed) and logged."""
        records: list[SandboxRecord] = []
        if not self._dir.is_dir():
            return records
        for path in sorted(self._dir.glob("*.json")):
            try:
                records.append(SandboxRecord.from_json(path.read_bytes()))
            except (OSError, ValueError, TypeError, KeyError) as exc:
                aside = path.with_suffix(".corrupt")
                logger.error("sandbox record %s is unreadable (%s); moved to %s", path, exc, aside)
                path.replace(aside)
        return records
