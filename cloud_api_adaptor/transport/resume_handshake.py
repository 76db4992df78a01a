"""The resumable agent channel's handshake and errors (see ``transport.resume``).

The client's first bytes on a link agreed by ALPN are a ``hello`` (new or
resume, the session id, what it received), the server's a ``welcome`` (status,
what it received); both are fixed-size and read whole by ``HelloReader`` /
``WelcomeReader`` however the link splits them.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from enum import IntEnum

MAGIC = b"CAAR"
VERSION = 1
SESSION_ID_LEN = 16
HELLO_LEN = 4 + 1 + 1 + SESSION_ID_LEN + 8
WELCOME_LEN = 4 + 1 + 1 + 8

_HELLO = struct.Struct(f">4sBB{SESSION_ID_LEN}sQ")
_WELCOME = struct.Struct(">4sBBQ")


class ResumeError(Exception):
    """Base class: the session cannot continue; the I/O layer ends it (closing the local side)."""


class HandshakeError(ResumeError):
    """A malformed or unexpected hello/welcome (the peer is not speaking this protocol or version)."""


class ResumeRejected(ResumeError):
    """The peer cannot continue this session (unknown session, or bytes it needs are gone)."""

    def __init__(self, message: str, status: Status | None = None) -> None:
        super().__init__(message)
        self.status = status


class ProtocolError(ResumeError):
    """A malformed frame, or an ACK/resume point outside what was sent."""


class ReplayOverflow(ResumeError):
    """More un-acknowledged bytes than ``replay_limit``: the I/O layer did not pause its reader."""


class Kind(IntEnum):
    NEW = 0
    RESUME = 1


class Status(IntEnum):
    OK = 0
    UNKNOWN_SESSION = 1
    """The server has no such session (it expired, or the forwarder restarted)."""
    CANNOT_RESUME = 2
    """The resume point is outside the server's replay window."""
    BAD_HELLO = 3
    BUSY = 4
    """A new session with an id already in use."""


@dataclass(frozen=True)
class Hello:
    kind: Kind
    session_id: bytes
    received: int


@dataclass(frozen=True)
class Welcome:
    status: Status
    received: int


def new_session_id() -> bytes:
    return os.urandom(SESSION_ID_LEN)


def encode_hello(hello: Hello) -> bytes:
    if len(hello.session_id) != SESSION_ID_LEN:
        raise ValueError(f"session id must be {SESSION_ID_LEN} bytes")
    return _HELLO.pack(MAGIC, VERSION, hello.kind, hello.session_id, hello.received)


def encode_welcome(welcome: Welcome) -> bytes:
    return _WELCOME.pack(MAGIC, VERSION, welcome.status, welcome.received)


class _Fixed:
    """Accumulates a fixed-size handshake message; ``feed`` returns (message, rest) once complete."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._buf = bytearray()

    def take(self, data: bytes | bytearray | memoryview) -> tuple[bytes, bytes] | None:
        self._buf += data
        if len(self._buf) < self._size:
            return None
        whole = bytes(self._buf)
        return whole[: self._size], whole[self._size :]


class HelloReader(_Fixed):
    """The server's first read: ``feed`` returns ``(Hello, leftover bytes)`` once whole."""

    def __init__(self) -> None:
        super().__init__(HELLO_LEN)

    def feed(self, data: bytes | bytearray | memoryview) -> tuple[Hello, bytes] | None:
        got = self.take(data)
        if got is None:
            if len(self._buf) >= 4 and bytes(self._buf[:4]) != MAGIC:
                raise HandshakeError("not a resume hello (bad magic)")
            return None
        raw, rest = got
        magic, version, kind, session_id, received = _HELLO.unpack(raw)
        if magic != MAGIC:
            raise HandshakeError("not a resume hello (bad magic)")
        if version != VERSION:
            raise HandshakeError(f"unsupported resume protocol version {version}")
        if kind not in (Kind.NEW, Kind.RESUME):
            raise HandshakeError(f"unknown hello kind {kind}")
        if kind == Kind.NEW and received != 0:
            raise HandshakeError("a new session cannot have received bytes")
        return Hello(Kind(kind), session_id, received), rest


class WelcomeReader(_Fixed):
    """The client's first read: ``feed`` returns ``(Welcome, leftover bytes)`` once whole."""

    def __init__(self) -> None:
        super().__init__(WELCOME_LEN)

    def feed(self, data: bytes | bytearray | memoryview) -> tuple[Welcome, bytes] | None:
        got = self.take(data)
        if got is None:
            if len(self._buf) >= 4 and bytes(self._buf[:4]) != MAGIC:
                raise HandshakeError("not a resume welcome (bad magic)")
            return None
        raw, rest = got
        magic, version, status, received = _WELCOME.unpack(raw)
        if magic != MAGIC:
            raise HandshakeError("not a resume welcome (bad magic)")
        if version != VERSION:
            raise HandshakeError(f"unsupported resume protocol version {version}")
        try:
            st = Status(status)
        except ValueError:
            raise HandshakeError(f"unknown welcome status {status}") from None
        return Welcome(st, received), rest
