"""Finding and stopping a local VM's processes by identity, never by name.

A VM is the session its guest launcher leads (``start_new_session``), plus, in
netns mode, every process inside the VM's network namespace (a program that
starts a session of its own still lives there).  The launcher's pid is trusted
only together with its start time from ``/proc/<pid>/stat``: after a reboot or
pid wrap-around the same number names a different process, which must never be
signalled.  Signals go through pidfds, so a pid that exits and is reused between
the scan and the kill cannot be hit either.

Blocking (it polls /proc); the provider runs it in a thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)
_POLL = 0.02


@dataclass(frozen=True)
class ProcStat:
    """The fields of ``/proc/<pid>/stat`` we use."""

    pid: int
    state: str
    ppid: int
    pgid: int
    sid: int
    #: clock ticks since boot; with the pid, a process identity that survives pid reuse
    start_time: int

    @property
    def is_zombie(self) -> bool:
        return self.state in ("Z", "X")


def parse_stat(text: str) -> ProcStat:
    """Parse a stat line; the command name may contain spaces and parentheses."""
    head, _, rest = text.rpartition(")")
    pid = int(head.split("(", 1)[0])
    fields = rest.split()
    return ProcStat(
        pid=pid,
        state=fields[0],
        ppid=int(fields[1]),
        pgid=int(fields[2]),
        sid=int(fields[3]),
        start_time=int(fields[19]),
    )


def read_stat(pid: int, proc: Path = Path("/proc")) -> ProcStat | None:
    try:
        return parse_stat((proc / str(pid) / "stat").read_text())
    except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
        return None


def _all_stats() -> Iterable[ProcStat]:
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = read_stat(int(entry.name))
            if stat is not None:
                yield stat


def _netns_id(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


@dataclass(frozen=True)
class VmIdentity:
    """How to recognise a VM's processes: its launcher's session and, in netns mode, its netns."""

    session: int | None
    netns: tuple[int, int] | None

    @classmethod
    def resolve(cls, leader: int | None, leader_start: int | None, netns_path: Path | None) -> VmIdentity:
        """The session counts only if the launcher is the recorded process or is gone.

        The kernel does not hand out a pid while a session of that id still has
        members, so a session id equal to a dead launcher's pid is still the VM's;
        a live process with that pid but another start time means the VM's session
        is long gone and the number was reused.
        """
        session: int | None = None
        if leader is not None and leader_start is not None:
            stat = read_stat(leader)
            if stat is None or stat.start_time == leader_start:
                session = leader
        netns = _netns_id(netns_path) if netns_path is not None else None
        return cls(session=session, netns=netns)

    def matches(self, stat: ProcStat) -> bool:
        if stat.is_zombie or stat.pid == os.getpid():
            return False
        if self.session is not None and stat.sid == self.session:
            return True
        return self.netns is not None and _netns_id(Path(f"/proc/{stat.pid}/ns/net")) == self.netns

    def members(self) -> list[int]:
        """Live (non-zombie) processes of the VM."""
        if self.session is None and self.netns is None:
            return []
        return [stat.pid for stat in _all_stats() if self.matches(stat)]


def _signal(pid: int, sig: int, identity: VmIdentity) -> None:
    """Signal ``pid`` through a pidfd after re-checking, for that pidfd's process, that it is the VM's."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        stat = read_stat(pid)
        if stat is None or not identity.matches(stat):
            return
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(fd, sig)
    finally:
        os.close(fd)


def stop_vm(
    identity: VmIdentity,
    *,
    timeout: float,
    clock: Callable[[], float] = time.monotonic,
) -> list[int]:
    """SIGTERM every VM process, wait up to ``timeout``, SIGKILL the rest; returns pids still left."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, max(timeout, 5.0))):
        pids = identity.members()
        if not pids:
            return []
        logger.debug("sending %s to %s", signal.Signals(sig).name, pids)
        for pid in pids:
            _signal(pid, sig, identity)
        deadline = clock() + wait
        while identity.members() and clock() < deadline:
            time.sleep(_POLL)
    left = identity.members()
    if left:
        logger.error("local VM processes %s survived SIGKILL", left)
    return left
