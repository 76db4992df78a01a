"""Zero-downtime upgrades: one daemon per state directory, and a hand-over between two.

A DaemonSet rolling update with maxSurge 1 starts the new daemon while the old
one still serves the same hostPath socket, probe port and state directory.
Without a hand-over the new one could never bind and the rollout would stall.

Protocol: the running daemon holds an exclusive ``flock`` on
``STATE_DIR/daemon.lock``.  A starting daemon that finds it held calls
``caa.internal.Handover/Release`` on the hypervisor socket (root-only, 0600);
the old daemon stops accepting, drains in-flight calls, closes its agent
proxies and probe, releases the lock and then idles until SIGTERM (exiting
would make the kubelet restart it and take the node back).  The new daemon
takes the lock and recovers every sandbox from the durable records: running
pods keep their agent sockets and VMs.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from google.protobuf import empty_pb2

from cloud_api_adaptor.errors import FailedPrecondition
from cloud_api_adaptor.fsutil import make_private_dirs
from cloud_api_adaptor.ttrpc import CallContext, Client, RpcError, UnaryMethod

logger = logging.getLogger(__name__)

HANDOVER_SERVICE = "caa.internal.Handover"
LOCK_NAME = "daemon.lock"


class StateLock:
    """An exclusive advisory lock on the state directory, held for the daemon's life."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_NAME
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        make_private_dirs(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    async def acquire(self, timeout: float, poll: float = 0.05) -> None:
        deadline = time.monotonic() + timeout
        while not self.try_acquire():
            if time.monotonic() >= deadline:
                raise FailedPrecondition(
                    f"another cloud-api-adaptor holds {self.path} and did not hand over within {timeout:.0f}s"
                )
            await asyncio.sleep(poll)

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None


async def request_handover(socket: Path, timeout: float = 10.0) -> bool:
    """Ask the daemon serving ``socket`` to hand over; False if nobody answers."""
    try:
        client = await Client.connect_unix(socket)
    except (OSError, RpcError):
        return False
    try:
        await client.call(HANDOVER_SERVICE, "Release", empty_pb2.Empty(), empty_pb2.Empty, timeout=timeout)
        return True
    except RpcError as exc:
        logger.warning("hand-over request to %s failed: %s", socket, exc)
        return False
    finally:
        await client.aclose()


def handover_service(on_release: Callable[[], None]) -> dict[str, UnaryMethod[Any]]:
    """The internal service the old daemon serves next to the hypervisor service."""

    async def release(request: empty_pb2.Empty, ctx: CallContext) -> empty_pb2.Empty:
        logger.warning("a new cloud-api-adaptor asked for a hand-over: releasing this node")
        on_release()
        return empty_pb2.Empty()

    return {"Release": UnaryMethod(empty_pb2.Empty, release)}


async def take_over(lock: StateLock, socket: Path, timeout: float) -> None:
    """Acquire the state lock, asking a running daemon to hand over first if needed."""
    if lock.try_acquire():
        return
    logger.info("another cloud-api-adaptor holds %s: asking it to hand over", lock.path)
    await request_handover(socket)
    await lock.acquire(timeout)
    logger.info("hand-over complete: this daemon now owns %s", lock.path.parent)
