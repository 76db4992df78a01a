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

Without a gap (docs/survival.md): the old daemon also serves
``STATE_DIR/handover.sock`` (``SOCK_SEQPACKET``, 0600).  A new daemon asks there
first; the old one stops accepting (the listening sockets stay open, so
connections wait in their backlog), finishes its in-flight hypervisor calls,
detaches its agent proxies, and passes every listening socket and every shim
connection, with any bytes it had read but not relayed, as descriptors
(``SCM_RIGHTS``).  It releases the lock only after the new daemon acknowledged
them, and never unlinks a socket file: the shim sees nothing.  The Release RPC
remains for a daemon that does not offer the socket.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import logging
import os
import socket as socket_module
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from google.protobuf import empty_pb2

from cloud_api_adaptor.aio import TaskSupervisor
from cloud_api_adaptor.errors import FailedPrecondition
from cloud_api_adaptor.fsutil import make_private_dirs
from cloud_api_adaptor.hypervisor.sandboxes import SandboxManager
from cloud_api_adaptor.proxy.agent_proxy import AgentProxy
from cloud_api_adaptor.transport.custody import (
    InheritedConnection,
    Inventory,
    SocketCustody,
    connection_meta,
    listener_meta,
    prefix_chunks,
)
from cloud_api_adaptor.transport.fdpass import (
    FdPassError,
    bind_unix_listener,
    close_fds,
    receive_message,
    same_user,
    send_message,
    seqpacket_connect,
)
from cloud_api_adaptor.ttrpc import CallContext, Client, RpcError, UnaryMethod

logger = logging.getLogger(__name__)

HANDOVER_SERVICE = "caa.internal.Handover"
LOCK_NAME = "daemon.lock"
SOCKET_NAME = "handover.sock"


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


async def take_over(lock: StateLock, socket: Path, timeout: float) -> Inventory:
    """Acquire the state lock, asking a running daemon to hand over first if needed.

    Returns the sockets the previous daemon passed (empty without a hand-over,
    or when the previous daemon only knows the Release RPC).
    """
    if lock.try_acquire():
        return Inventory()
    logger.info("another cloud-api-adaptor holds %s: asking it to hand over", lock.path)
    try:
        inventory = await asyncio.to_thread(receive_sockets, lock.path.parent / SOCKET_NAME, timeout)
    except (OSError, FdPassError) as exc:
        logger.info("no socket hand-over (%s): asking with the Release RPC", exc)
        inventory = Inventory()
        await request_handover(socket)
    try:
        await lock.acquire(timeout)
    except BaseException:
        inventory.close()
        raise
    logger.info("hand-over complete: this daemon now owns %s", lock.path.parent)
    return inventory


# ---- passing the sockets (SCM_RIGHTS) ---------------------------------------------------------


def receive_sockets(path: Path, timeout: float) -> Inventory:
    """New daemon: ask the old one at ``path`` for its sockets (blocking; run in a thread)."""
    sock = seqpacket_connect(path, timeout)
    inventory = Inventory()
    try:
        send_message(sock, {"op": "handover", "pid": os.getpid()})
        while True:
            message, fds = receive_message(sock)
            op = message.get("op")
            if op == "end":
                close_fds(fds)
                break
            if op in ("prefix", "outbox"):
                close_fds(fds)
                data = base64.b64decode(str(message.get("data")))
                inventory.append_prefix(str(message.get("key")), data, op)
            elif op == "socket" and len(fds) == 1:
                inventory.add(message, fds[0])
            else:
                close_fds(fds)
                raise FdPassError(f"unexpected hand-over message {op!r}")
        send_message(sock, {"op": "ack"})
    except BaseException:
        inventory.close()
        raise
    finally:
        sock.close()
    held = sum(len(c) for c in inventory.connections.values())
    logger.info("received %d listener(s) and %d shim connection(s)", len(inventory.listeners), held)
    return inventory


def pass_sockets(
    peer: socket_module.socket, custody: SocketCustody, handed: list[InheritedConnection]
) -> None:
    """Old daemon: send every listener and shim connection, then wait for the ack (blocking)."""
    for path, sock in custody.listener_sockets().items():
        send_message(peer, {"op": "socket", **listener_meta(path)}, [sock.fileno()])
    for conn in handed:
        inline = conn.prefix if len(conn.prefix) <= 16 << 10 else b""
        outbox = conn.outbox if len(conn.outbox) <= 16 << 10 else b""
        meta = connection_meta(conn.key, conn.listener, bytes(inline), conn.session, bytes(outbox))
        send_message(peer, {"op": "socket", **meta}, [conn.sock.fileno()])
        if not inline:
            for chunk in prefix_chunks(conn.key, bytes(conn.prefix)):
                send_message(peer, chunk)
        if not outbox:
            for chunk in prefix_chunks(conn.key, bytes(conn.outbox), "outbox"):
                send_message(peer, chunk)
    send_message(peer, {"op": "end"})
    message, fds = receive_message(peer)
    close_fds(fds)
    if message.get("op") != "ack":
        raise FdPassError(f"the new daemon answered {message.get('op')!r}, not ack")


async def detach_proxies(manager: SandboxManager, *, reclaim: bool = False) -> list[InheritedConnection]:
    """Detach every running sandbox's agent socket, keeping what the shim holds open.

    ``reclaim``: for a hand-over, connections the fd-keeper relays are taken back
    from it (the new daemon relays them through its own keeper).
    """
    handed: list[InheritedConnection] = []
    for live in manager.live_sandboxes():
        proxy = live.proxy
        if isinstance(proxy, AgentProxy):
            handed.extend(await proxy.detach(reclaim=reclaim))
    return handed


class HandoverListener:
    """Old daemon: waits on ``STATE_DIR/handover.sock`` for a successor's request."""

    def __init__(self, state_dir: Path, on_request: Callable[[socket_module.socket], None]) -> None:
        self.path = state_dir / SOCKET_NAME
        self.on_request = on_request
        self._sock: socket_module.socket | None = None
        self._inode = 0

    def start(self, supervisor: TaskSupervisor) -> None:
        sock = bind_unix_listener(self.path, 0o600, socket_module.SOCK_SEQPACKET)
        sock.setblocking(False)
        self._sock = sock
        self._inode = os.stat(self.path).st_ino
        supervisor.spawn(self._accept(sock), name="handover-listener")

    async def _accept(self, sock: socket_module.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            peer, _ = await loop.sock_accept(sock)
            if not same_user(peer):
                logger.warning("refusing a hand-over request from another user")
                peer.close()
                continue
            try:
                message = await asyncio.wait_for(loop.sock_recv(peer, 4096), 10.0)
            except (OSError, TimeoutError):
                peer.close()
                continue
            if b'"handover"' not in message:
                peer.close()
                continue
            peer.setblocking(True)
            peer.settimeout(60.0)
            self.on_request(peer)
            return

    def close(self) -> None:
        """Stop listening; the file is removed unless a successor already bound its own."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            if os.stat(self.path).st_ino == self._inode:
                self.path.unlink()
