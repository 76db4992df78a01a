"""Durable sandbox records: one versioned JSON file per sandbox under STATE_DIR.

Every write is atomic and durable (temp file, fsync, rename, directory fsync):
a crash leaves either the old or the new record, never a torn one.  Records are
written before every cloud call (intent) and after it (result), and ``save``
returns only once its record is durable.

Writes are batched (group commit).  A lifecycle writes six records, and a burst
of StartVMs writes hundreds at once; one thread hop per write costs the event
loop more than the write itself on small VMs (a futex wake each way), and one
directory fsync per write queues every writer behind the others' journal
commits.  So ``save`` only queues the write; a writer thread takes everything
queued, writes and fsyncs each file, renames it, fsyncs the directory once for
the batch and hands the results back to the loop in one call.  When a batch is
in flight and more writes arrive, another writer starts (up to ``writers``), so
a slow disk never holds a write behind more than one batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cloud_api_adaptor.fsutil import DirectorySync, atomic_write, make_private_dirs, remove_durably
from cloud_api_adaptor.hypervisor.models import InvalidRecord, SandboxRecord

logger = logging.getLogger(__name__)

_FIELDS = tuple(f.name for f in dataclasses.fields(SandboxRecord))


def encode_record(record: SandboxRecord) -> bytes:
    """The record as JSON: the fields ``SandboxRecord.to_json`` writes, several times cheaper.

    Encoding runs on the event loop for every write, so this skips
    ``dataclasses.asdict``'s deep copy and uses the C encoder (which indentation
    would turn off).  ``SandboxRecord.from_json`` reads either form.
    """
    data = {name: getattr(record, name) for name in _FIELDS}
    data["state"] = record.state.value
    data["instance_ips"] = list(record.instance_ips)
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


@dataclasses.dataclass(slots=True)
class _Write:
    """One queued change of a record file: ``apply`` runs in a writer thread."""

    sandbox_id: str
    sequence: int
    apply: Callable[[], Any]
    done: asyncio.Future[None]
    loop: asyncio.AbstractEventLoop


class SandboxStore:
    """Reads and writes sandbox records; writes run off the event loop (fsync blocks).

    Writes use threads of their own, so a burst of fsyncs never queues behind (or
    starves) provider SDK calls on the loop's default executor.

    Writes of one record are ordered: each is numbered when it is requested (on
    the event loop), and a write that reaches the disk after a newer one of the
    same record is dropped.  This matters when a caller is cancelled while its
    write is still queued or running and a cleanup writes the same record.
    """

    def __init__(self, state_dir: Path, writers: int = 4) -> None:
        self._dir = state_dir / "sandboxes"
        self._pool = ThreadPoolExecutor(max_workers=writers, thread_name_prefix="state-writer")
        self._writers = writers
        self._sequence = itertools.count(1)
        self._guard = threading.Lock()
        self._record_locks: dict[str, threading.Lock] = {}
        self._written: dict[str, int] = {}
        self._dir_sync = DirectorySync(self._dir)
        self._queue_lock = threading.Lock()
        self._queue: list[_Write] = []
        self._active = 0  # writer threads draining the queue
        #: (file name, reason) of the records the last ``load_all`` set aside
        self.quarantined: list[tuple[str, str]] = []

    @property
    def directory(self) -> Path:
        return self._dir

    def _path(self, sandbox_id: str) -> Path:
        return self._dir / f"{sandbox_id}.json"

    def prepare(self) -> None:
        make_private_dirs(self._dir)

    async def save(self, record: SandboxRecord, *, first: Callable[[], object] | None = None) -> None:
        """Write ``record`` durably.

        ``first`` is a blocking filesystem step that belongs to this state (creating
        or removing the pod directory): it runs in the writer thread just before the
        record is written, so the event loop neither blocks on it nor pays a thread
        hop of its own.  If it raises, the record is not written.
        """
        data = encode_record(record)
        path = self._path(record.id)

        def write() -> None:
            if first is not None:
                first()
            atomic_write(path, data, sync_dir=False)

        await self._ordered(record.id, write)

    async def remove(self, sandbox_id: str) -> None:
        path = self._path(sandbox_id)
        await self._ordered(sandbox_id, lambda: remove_durably(path, sync_dir=False))

    async def _ordered(self, sandbox_id: str, apply: Callable[[], Any]) -> None:
        """Queue a change and wait until it (or a newer one of the same record) is durable.

        A cancelled caller stops waiting; its change is still made, in order.
        """
        loop = asyncio.get_running_loop()
        write = _Write(sandbox_id, next(self._sequence), apply, loop.create_future(), loop)
        with self._queue_lock:
            # An empty queue means every running writer is busy with a batch: start another.
            start = not self._queue and self._active < self._writers
            self._queue.append(write)
            if start:
                self._active += 1
        if start:
            try:
                self._pool.submit(self._drain)
            except RuntimeError:  # closed
                with self._queue_lock:
                    self._active -= 1
                    self._queue.remove(write)
                raise
        await write.done

    def _drain(self) -> None:
        """Writer thread: write batches until the queue is empty."""
        while True:
            with self._queue_lock:
                batch, self._queue = self._queue, []
                if not batch:
                    self._active -= 1
                    return
            self._write_batch(batch)

    def _write_batch(self, batch: list[_Write]) -> None:
        outcomes: list[tuple[_Write, BaseException | None]] = []
        for write in batch:
            try:
                self._write_in_order(write.sandbox_id, write.sequence, write.apply)
            except Exception as exc:
                outcomes.append((write, exc))
            else:
                outcomes.append((write, None))
        if any(error is None for _, error in outcomes):
            try:
                self._dir_sync.sync()
            except OSError as exc:
                outcomes = [(write, error or exc) for write, error in outcomes]
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Write, BaseException | None]]] = {}
        for outcome in outcomes:
            by_loop.setdefault(outcome[0].loop, []).append(outcome)
        for loop, results in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
                loop.call_soon_threadsafe(_resolve, results)

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

    @property
    def quarantine_dir(self) -> Path:
        return self._dir / "quarantine"

    def load_all(self) -> list[SandboxRecord]:
        """Every record that decodes; the others are quarantined (moved aside, logged) and never fatal.

        A record this daemon cannot trust (garbage, truncated, a type where another
        belongs, a future schema) must not stop the node: every other sandbox still
        recovers.  Its VM, if it has one, carries our owner tags and no record
        claims it any more, so the orphan scan deletes it.  ``quarantined`` lists
        what this call set aside.
        """
        records: list[SandboxRecord] = []
        self.quarantined = []
        if not self._dir.is_dir():
            return records
        for path in sorted(self._dir.glob("*.json")):
            try:
                record = SandboxRecord.from_json(path.read_bytes())
                if record.id != path.stem:
                    raise InvalidRecord("id", f"{record.id!r} does not match the file name {path.name}")
            except (OSError, InvalidRecord) as exc:
                self._quarantine(path, str(exc))
                continue
            records.append(record)
        return records

    def _quarantine(self, path: Path, reason: str) -> None:
        aside = self.quarantine_dir / f"{path.stem}.{time.time_ns()}.json"
        try:
            make_private_dirs(self.quarantine_dir)
            path.replace(aside)
        except OSError as exc:
            logger.error("sandbox record %s is invalid (%s) and cannot be moved aside: %s", path, reason, exc)
        else:
            logger.error(
                "sandbox record %s is invalid (%s); quarantined as %s. Its VM, if any, is left to the "
                "orphan scan",
                path.name,
                reason,
                aside,
            )
        self.quarantined.append((path.name, reason))


def _resolve(results: list[tuple[_Write, BaseException | None]]) -> None:
    """On the loop: wake the writers' callers (skipping any that gave up)."""
    for write, error in results:
        if write.done.done():
            continue
        if error is None:
            write.done.set_result(None)
        else:
            write.done.set_exception(error)
