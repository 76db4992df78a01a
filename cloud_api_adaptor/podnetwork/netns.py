"""Run code inside a network namespace given by path, without forking.

Why a fresh thread per call: ``setns(CLONE_NEWNET)`` changes only the calling
thread, and a socket (netlink or TCP) keeps the namespace it was created in.  So
a short-lived thread enters the namespace, does its work (netlink requests,
socket creation, even ``subprocess`` calls, which inherit the thread's
namespace), and exits; a failed switch back can never leak into a pooled thread
or the event loop.  pyroute2's own ``netns=`` support forks a helper process per
socket instead, which is unsafe in a threaded asyncio daemon and creates a
missing ``/run/netns/<name>`` silently.

The caller awaits the thread even when cancelled: kernel changes cannot be
interrupted halfway, and cleanup code must see a settled state.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import logging
import os
import re
import socket
import threading
from collections.abc import Callable
from typing import TypeVar

from cloud_api_adaptor.errors import FailedPrecondition, InvalidInput, NotFound

logger = logging.getLogger(__name__)
T = TypeVar("T")

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/run/netns"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


class NamespaceNotFound(NotFound):
    """The network namespace path does not exist or is not a network namespace."""

    def __init__(self, path: str, reason: str = "does not exist") -> None:
        super().__init__(f"network namespace {path} {reason}")
        self.path = path


def enter_netns(path: str) -> None:
    """Move the *calling thread* into the network namespace at ``path``.

    Only for threads this module starts (see ``run_in_netns``).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise NamespaceNotFound(path) from exc
    except OSError as exc:
        raise NamespaceNotFound(path, f"cannot be opened: {exc.strerror}") from exc
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            if err == errno.EINVAL:
                raise NamespaceNotFound(path, "is not a network namespace")
            raise FailedPrecondition(f"cannot enter network namespace {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


async def run_in_netns(path: str | None, fn: Callable[[], T], *, what: str = "netns") -> T:
    """Run ``fn`` in a new thread inside the namespace at ``path`` (None: the caller's)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, exc: BaseException | None) -> None:
        if future.done():
            return
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def worker() -> None:
        try:
            if path is not None:
                enter_netns(path)
            result = fn()
        except BaseException as exc:
            loop.call_soon_threadsafe(settle, None, exc)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=worker, name=f"{what}:{path or 'self'}", daemon=True).start()
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        if not future.done():
            await asyncio.wait([future])
        if not future.cancelled() and future.exception() is not None:
            logger.warning("%s in %s failed after cancellation: %s", what, path, future.exception())
        raise


async def socket_in_netns(
    path: str | None, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM
) -> socket.socket:
    """A new socket living in the namespace at ``path`` (it stays there for its lifetime)."""
    return await run_in_netns(path, lambda: socket.socket(family, kind), what="socket")


def named_netns_path(name: str) -> str:
    """``/run/netns/<name>`` for a valid namespace name."""
    if not _NAME_RE.match(name):
        raise InvalidInput("name", f"invalid network namespace name {name!r}")
    return os.path.join(NETNS_RUN_DIR, name)


async def add_named_netns(name: str) -> str:
    """Create ``/run/netns/<name>`` (as ``ip netns add`` does) and return its path; exists is fine."""
    path = named_netns_path(name)
    if os.path.exists(path):
        try:
            await run_in_netns(path, lambda: None)
            return path
        except NamespaceNotFound:
            await _ip_netns("delete", name)  # a stale mount point from a crash
    await _ip_netns("add", name)
    return path


async def delete_named_netns(name: str) -> None:
    """Remove ``/run/netns/<name>``; a missing namespace is fine.

    Links inside it are destroyed by the kernel once nothing holds the namespace.
    """
    path = named_netns_path(name)
    if os.path.exists(path):
        await _ip_netns("delete", name)


async def _ip_netns(verb: str, name: str) -> None:
    try:
        proc = await asyncio.create_subprocess_exec(
            "ip",
            "netns",
            verb,
            name,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
    except FileNotFoundError as exc:
        raise FailedPrecondition("the ip command (iproute2) is not installed") from exc
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise FailedPrecondition(f"ip netns {verb} {name}: {err.decode(errors='replace').strip()}")
