"""Durable sandbox records: one versioned JSON file per sandbox under STATE_DIR.

Every write is atomic and durable (temp file, fsync, rename, directory fsync):
a crash leaves either the old or the new record, never a torn one.  Records are
written before every cloud call (intent) and after it (result).
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cloud_api_adaptor.fsutil import atomic_write, remove_durably
from cloud_api_adaptor.hypervisor.models import SandboxRecord

logger = logging.getLogger(__name__)


class SandboxStore:
    """Reads and writes sandbox records; writes run off the event loop (fsync blocks).

    Writes use a pool of their own, so a burst of fsyncs never queues behind (or
    starves) provider SDK calls on the loop's default executor.
    """

    def __init__(self, state_dir: Path, writers: int = 8) -> None:
        self._dir = state_dir / "sandboxes"
        self._pool = ThreadPoolExecutor(max_workers=writers, thread_name_prefix="state-writer")

    @property
    def directory(self) -> Path:
        return self._dir

    def _path(self, sandbox_id: str) -> Path:
        return self._dir / f"{sandbox_id}.json"

    def prepare(self) -> None:
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    async def save(self, record: SandboxRecord) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, atomic_write, self._path(record.id), record.to_json())

    async def remove(self, sandbox_id: str) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, remove_durably, self._path(sandbox_id))

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
