"""The development agent's pod model: one sandbox, its containers, and a request-sequence checker.

This is a STAND-IN for kata-agent's behaviour as the Kata shim observes it over
ttrpc, not an implementation: no process is ever run.  A "container" is a record
that goes created -> running -> exited; it exits when it is signalled with a
terminating signal, removed, or when the sandbox is destroyed, and that is what
completes the shim's ``WaitProcess`` long-poll.  ``GetOOMEvent`` never reports an
OOM (nothing runs out of memory) and completes only when the sandbox is destroyed,
with the INTERNAL error the real agent returns once its event channel closes.

Files the shim sends with ``CopyFile`` are written below ``root`` (``/`` inside a
local VM, which has its own ``/run``), so nothing a pod writes lands on the host.

``SequenceChecker`` lets a test client detect bytes lost or duplicated on the way
to the agent: the client numbers each request in the ttrpc metadata
``devagent-seq: <stream>/<n>`` (n = 1, 2, 3, ... per stream); a number seen twice
is a duplicate, a number never seen below the highest one is a loss.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from cloud_api_adaptor.ttrpc import Code, Metadata, RpcError

logger = logging.getLogger(__name__)

SEQ_KEY = "devagent-seq"
#: a jump further ahead than this is treated as corruption, not reordering
MAX_SEQ_GAP = 4096
#: signals after which a container's (stand-in) init process is gone
TERMINATING_SIGNALS = frozenset(
    {signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGABRT, signal.SIGKILL, signal.SIGTERM}
)
#: where the real agent keeps the sandbox's shared namespaces (written inside the VM)
SANDBOX_NS_DIR = PurePosixPath("/run/sandbox-ns")
#: CopyFile destinations must be below this directory, as the real agent demands
COPY_ROOT = PurePosixPath("/run")


@dataclass
class _Stream:
    highest: int = 0
    missing: set[int] = field(default_factory=set)
    received: int = 0


class SequenceChecker:
    """Per-stream request numbering: duplicates refused at once, gaps reported on demand."""

    def __init__(self) -> None:
        self._streams: dict[str, _Stream] = {}
        self.duplicates = 0

    def observe(self, metadata: Metadata) -> None:
        """Check one request's number (requests without one are not checked); raise on a duplicate."""
        values = metadata.get(SEQ_KEY)
        if not values:
            return
        name, sep, number = values[-1].rpartition("/")
        try:
            n = int(number)
        except ValueError:
            n = 0
        if not sep or n < 1:
            raise RpcError(Code.INVALID_ARGUMENT, f"{SEQ_KEY}: expected <stream>/<n>, got {values[-1]!r}")
        stream = self._streams.setdefault(name, _Stream())
        if n > stream.highest:
            if n - stream.highest > MAX_SEQ_GAP:
                raise RpcError(Code.DATA_LOSS, f"{SEQ_KEY} {name}: jump from {stream.highest} to {n}")
            stream.missing.update(range(stream.highest + 1, n))
            stream.highest = n
        elif n in stream.missing:
            stream.missing.discard(n)  # arrived out of order: concurrent callers
        else:
            self.duplicates += 1
            logger.error("%s %s: request %d received twice", SEQ_KEY, name, n)
            raise RpcError(Code.DATA_LOSS, f"{SEQ_KEY} {name}: request {n} received twice")
        stream.received += 1

    def gaps(self) -> dict[str, list[int]]:
        """Numbers skipped so far, per stream (lost requests once the client is quiet)."""
        return {name: sorted(s.missing) for name, s in self._streams.items() if s.missing}

    def received(self) -> dict[str, int]:
        return {name: s.received for name, s in self._streams.items()}


@dataclass
class Container:
    """A stand-in container: no process, just the states the shim can observe."""

    id: str
    exec_id: str
    started: bool = False
    exit_status: asyncio.Future[int] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    def exit(self, status: int) -> None:
        if not self.exit_status.done():
            self.exit_status.set_result(status)


class Pod:
    """Everything one sandbox's agent remembers (one sandbox per agent, as kata-agent)."""

    def __init__(self, root: Path, remove_at_create_sandbox: Path | None = None) -> None:
        self.root = root
        #: the agent's own socket, removed by CreateSandbox as kata-agent empties /run/kata-containers
        self.remove_at_create_sandbox = remove_at_create_sandbox
        self.sandbox_id = ""
        self.containers: dict[str, Container] = {}
        self.interfaces: dict[str, bytes] = {}
        self.routes: bytes = b""
        self.destroyed = asyncio.Event()
        self.sequence = SequenceChecker()

    # ---- sandbox -------------------------------------------------------------------------------

    def guest_path(self, path: PurePosixPath) -> Path:
        """Where a guest path lives in this agent's filesystem view."""
        return self.root / path.relative_to("/")

    def create_sandbox(self, sandbox_id: str) -> None:
        if self.sandbox_id:
            raise RpcError(Code.ALREADY_EXISTS, f"sandbox {self.sandbox_id} already created")
        self.sandbox_id = sandbox_id or "sandbox"
        self.destroyed.clear()
        ns_dir = self.guest_path(SANDBOX_NS_DIR)
        ns_dir.mkdir(parents=True, exist_ok=True)
        for name in ("ipc", "uts"):  # the real agent bind-mounts the shared namespaces here
            (ns_dir / name).touch()
        if self.remove_at_create_sandbox is not None:
            # Connections already open keep working; nobody can open a new one (as with kata-agent).
            self.remove_at_create_sandbox.unlink(missing_ok=True)

    def require_sandbox(self) -> None:
        if not self.sandbox_id:
            raise RpcError(Code.FAILED_PRECONDITION, "sandbox not created (CreateSandbox first)")

    def destroy_sandbox(self) -> None:
        """End every container and the OOM long-polls; refuse with DATA_LOSS if requests went missing."""
        for container in self.containers.values():
            container.exit(128 + signal.SIGKILL)
        self.containers.clear()
        self.destroyed.set()
        self.sandbox_id = ""
        ns_dir = self.guest_path(SANDBOX_NS_DIR)
        for name in ("ipc", "uts"):
            (ns_dir / name).unlink(missing_ok=True)
        gaps = self.sequence.gaps()
        if gaps:
            logger.error("requests lost on the way to the agent: %s", gaps)
            raise RpcError(Code.DATA_LOSS, f"requests lost on the way to the agent: {gaps}")

    # ---- containers ----------------------------------------------------------------------------

    def container(self, container_id: str) -> Container:
        try:
            return self.containers[container_id]
        except KeyError:
            raise RpcError(Code.NOT_FOUND, f"container {container_id!r} not found") from None

    def create_container(self, container_id: str, exec_id: str) -> None:
        self.require_sandbox()
        if not container_id:
            raise RpcError(Code.INVALID_ARGUMENT, "container_id: empty")
        if container_id in self.containers:
            raise RpcError(Code.ALREADY_EXISTS, f"container {container_id} already exists")
        self.containers[container_id] = Container(container_id, exec_id or container_id)

    def start_container(self, container_id: str) -> None:
        container = self.container(container_id)
        if container.exit_status.done():
            raise RpcError(Code.FAILED_PRECONDITION, f"container {container_id} has exited")
        container.started = True

    def signal_process(self, container_id: str, exec_id: str, signum: int) -> None:
        container = self.container(container_id)
        self._check_exec(container, exec_id, allow_empty=True)
        if signum in TERMINATING_SIGNALS:
            container.exit(128 + signum)

    async def wait_process(self, container_id: str, exec_id: str) -> int:
        container = self.container(container_id)
        self._check_exec(container, exec_id, allow_empty=True)
        return await asyncio.shield(container.exit_status)

    def remove_container(self, container_id: str) -> None:
        container = self.container(container_id)
        container.exit(128 + signal.SIGKILL)
        del self.containers[container_id]

    @staticmethod
    def _check_exec(container: Container, exec_id: str, *, allow_empty: bool) -> None:
        if exec_id in {container.exec_id, container.id} or (allow_empty and not exec_id):
            return
        raise RpcError(Code.NOT_FOUND, f"process {exec_id!r} of container {container.id} not found")

    async def next_oom_event(self) -> str:
        """Block until the sandbox is destroyed (the stand-in never runs out of memory)."""
        await self.destroyed.wait()
        raise RpcError(Code.INTERNAL, "sandbox destroyed: no more OOM events")

    # ---- files ---------------------------------------------------------------------------------

    def copy_file(
        self, path: str, file_size: int, file_mode: int, dir_mode: int, offset: int, data: bytes
    ) -> None:
        """One CopyFile chunk; the file appears (renamed into place) once it has ``file_size`` bytes."""
        guest = PurePosixPath(path)
        if (
            not guest.is_absolute()
            or ".." in guest.parts
            or str(guest) != path
            or COPY_ROOT not in guest.parents
        ):
            raise RpcError(
                Code.INVALID_ARGUMENT, f"path: {path!r} is not an absolute canonical path below /run"
            )
        target = self.guest_path(guest)
        target.parent.mkdir(mode=(dir_mode & 0o7777) or 0o755, parents=True, exist_ok=True)
        kind = stat.S_IFMT(file_mode)
        if kind == stat.S_IFDIR:
            target.mkdir(mode=file_mode & 0o7777, exist_ok=True)
            return
        if kind == stat.S_IFLNK:
            target.unlink(missing_ok=True)
            os.symlink(data.decode(), target)
            return
        partial = target.with_name(target.name + ".copy")
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if offset == 0 else 0)
        fd = os.open(partial, flags, 0o600)
        try:
            os.pwrite(fd, data, offset)
        finally:
            os.close(fd)
        if offset + len(data) >= file_size:
            os.chmod(partial, file_mode & 0o7777 or 0o644)
            os.replace(partial, target)
