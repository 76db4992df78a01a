"""Passing open sockets between processes: JSON messages with file descriptors (``SCM_RIGHTS``).

Used by the hand-over (old daemon to new daemon) and by the fd-keeper (the
keeper holds a duplicate of every socket the daemon must not lose when it dies).
Both speak over ``SOCK_SEQPACKET`` unix sockets: one ``sendmsg`` is one message
with its descriptors, so message boundaries and the descriptors that belong to
a message can never be mixed up (a stream socket would need framing, and a
short read would split a message from its descriptors).

A message is a JSON object of at most ``MAX_MESSAGE`` bytes carrying at most
``MAX_FDS`` descriptors; larger payloads are split by the caller.
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import socket
import stat
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MAX_MESSAGE = 48 << 10
MAX_FDS = 64  # well below the kernel's SCM_MAX_FD (253)


class FdPassError(ConnectionError):
    """The peer closed the channel or sent something that is not a message."""


def send_message(sock: socket.socket, message: dict[str, Any], fds: Sequence[int] = ()) -> None:
    """Send one message and its descriptors (blocking); the kernel duplicates them for the peer."""
    data = json.dumps(message, separators=(",", ":")).encode()
    if len(data) > MAX_MESSAGE:
        raise ValueError(f"fd-passing message of {len(data)} bytes exceeds {MAX_MESSAGE}")
    if len(fds) > MAX_FDS:
        raise ValueError(f"fd-passing message with {len(fds)} descriptors exceeds {MAX_FDS}")
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.sendall(data)


def receive_message(sock: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """Receive one message (blocking); ``FdPassError`` when the peer has closed the channel.

    The descriptors received are the caller's to close.  ``MSG_CMSG_CLOEXEC``:
    a received descriptor never leaks into a child process (a local VM).
    """
    fds = array.array("i")
    space = socket.CMSG_SPACE(MAX_FDS * fds.itemsize)
    data, ancdata, flags, _ = sock.recvmsg(MAX_MESSAGE + 1, space, socket.MSG_CMSG_CLOEXEC)
    for level, type_, payload in ancdata:
        if level == socket.SOL_SOCKET and type_ == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - (len(payload) % fds.itemsize)])
    received = list(fds)
    try:
        if not data:
            raise FdPassError("the peer closed the fd-passing channel")
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            raise FdPassError("an fd-passing message was truncated")
        message = json.loads(data)
        if not isinstance(message, dict):
            raise FdPassError("an fd-passing message is not a JSON object")
    except (FdPassError, ValueError) as exc:
        for fd in received:
            with contextlib.suppress(OSError):
                os.close(fd)
        if isinstance(exc, FdPassError):
            raise
        raise FdPassError(f"a malformed fd-passing message: {exc}") from exc
    return message, received


def seqpacket_connect(path: Path, timeout: float) -> socket.socket:
    """A blocking ``SOCK_SEQPACKET`` connection to ``path`` (``OSError`` if nobody listens)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        sock.settimeout(timeout)
        sock.connect(os.fspath(path))
    except BaseException:
        sock.close()
        raise
    return sock


def bind_unix_listener(path: Path, mode: int, type_: int = socket.SOCK_STREAM) -> socket.socket:
    """Bind, chmod, then listen: no peer connects while the socket has umask permissions.

    A stale socket file is replaced; anything else at ``path`` is refused.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise FileExistsError(f"{path} exists and is not a socket")
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, type_)
    try:
        sock.bind(os.fspath(path))
        os.chmod(path, mode)
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return sock


def same_user(sock: socket.socket) -> bool:
    """The peer of a unix socket runs as our user (``SO_PEERCRED``): only it may take our sockets."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return bool(uid == os.getuid())


def close_fds(fds: Sequence[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
