"""Durable file writes: temp file, fsync, rename, directory fsync.

The directory fsync is what makes a rename (or an unlink) survive a crash.  On
ext4 every fsync is a journal commit, and commits are serialised, so a burst of
record writes would queue behind one another's directory fsyncs.
``DirectorySync`` lets the writers of one directory share them (group commit):
a writer returns only after a directory fsync that *began after its own change*
has completed, so every write stays individually durable.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DirectorySync:
    """Shares the fsyncs of one directory between the threads that changed its entries.

    ``sync()`` is called after a rename or unlink has returned.  If no fsync is
    running, the caller runs one; otherwise it waits for the running one (which
    may have begun before its change) and then for one that began after it,
    usually run by another waiter on behalf of everyone waiting.  A failed fsync
    raises in the thread that ran it; the others try again themselves.
    """

    def __init__(self, path: Path, fsync: Callable[[Path], None] = fsync_dir) -> None:
        self.path = path
        self._fsync = fsync
        self._cond = threading.Condition()
        self._changes = 0  # changes announced through sync(), numbered in order
        self._durable = 0  # every change up to this number is covered by a completed fsync
        self._running = False

    @property
    def changes(self) -> int:
        """How many changes have been announced through ``sync()`` so far."""
        return self._changes

    def sync(self) -> None:
        """Return once a directory fsync that began after this call has completed."""
        with self._cond:
            self._changes += 1
            ticket = self._changes
            while self._durable < ticket:
                if self._running:
                    self._cond.wait()
                    continue
                self._running = True
                covers = self._changes  # every change announced so far has already been made
                try:
                    self._cond.release()
                    try:
                        self._fsync(self.path)
                    finally:
                        self._cond.acquire()
                    self._durable = max(self._durable, covers)
                finally:
                    self._running = False
                    self._cond.notify_all()


def atomic_write(path: Path, data: bytes, mode: int = 0o600, *, sync_dir: bool = True) -> None:
    """Replace ``path`` with ``data`` so a crash leaves either the old or the new content.

    With ``sync_dir=False`` the caller must fsync ``path.parent`` (e.g. through
    ``DirectorySync``) before it counts the new content as durable.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    if sync_dir:
        fsync_dir(path.parent)


def remove_durably(path: Path, *, sync_dir: bool = True) -> None:
    """Unlink ``path`` (missing is fine) and fsync its directory (unless ``sync_dir=False``)."""
    try:
        path.unlink()
    except FileNotFoundError:
        return
    if sync_dir:
        fsync_dir(path.parent)


def make_private_dirs(path: Path) -> None:
    """``mkdir -p`` where every directory it creates is 0700, whatever the umask.

    ``Path.mkdir(parents=True, mode=0o700)`` applies the mode to the last
    directory only (and through the umask), so a fresh node would get a
    world-readable parent of the state directory.  Directories that already
    exist are left as they are.
    """
    missing: list[Path] = []
    current = path
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):  # a concurrent creator wins; its mode is checked below
            os.mkdir(directory, 0o700)
            os.chmod(directory, 0o700)
    if not path.is_dir():
        raise NotADirectoryError(str(path))
