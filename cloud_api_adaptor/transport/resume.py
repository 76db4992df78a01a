"""The resumable agent channel's protocol, sans I/O: bytes in, frames out.

Why: the shim keeps one agent connection for a pod's whole life and counts any
EOF as pod death, and the real kata-agent lets the forwarder open exactly one
connection to it.  So the node<->VM link (proxy <-> forwarder) must be able to
drop and come back while the shim's and the agent's connections stay open and
neither byte stream loses or repeats a byte.  Each end keeps a ``Session``:

- a 16-byte session id (one per shim connection, i.e. per sandbox);
- byte sequence numbers in both directions: ``sent`` (bytes of our stream
  produced so far), ``acked`` (bytes the peer confirmed) and ``received``
  (bytes of the peer's stream delivered to our local side);
- a bounded replay buffer holding ``[acked, sent)``: the I/O layer pauses reading
  its local side while ``window_full`` and the session refuses to grow past
  ``replay_limit`` (``ReplayOverflow``), so memory per sandbox is bounded;
- acks: ``ack_due`` says an ACK frame is owed (``ACK_EVERY`` bytes, or a
  quarter of a small window, received since the last one); the I/O layer also
  sends one as a keep-alive.  Data going the other way carries the ACK in the
  same write once ``PIGGYBACK_AT`` bytes are unacknowledged (``send`` and
  ``send_header`` put the ACK frame first): ttrpc is request/response, so the
  reply acks the request and a standalone ACK (its own TLS record and syscall)
  is rare.  A piggybacked ACK only ever comes earlier than ``ack_due`` would
  send it, so a peer's window never waits longer for one than before;
- a resume handshake: the client sends ``hello`` (session id, new/resume, its
  ``received``), the server answers ``welcome`` (status, its ``received``), and
  each side calls ``resume(peer_received)``, which returns the frames that
  continue its stream exactly where the peer stopped receiving.

Resumability is negotiated by ALPN (``ALPN``) in the TLS handshake, so a peer
that does not offer it gets the plain byte relay.

Wire format (all integers big-endian)::

    hello   = "CAAR" version:u8 kind:u8 session:16 received:u64      (client -> server, once)
    welcome = "CAAR" version:u8 status:u8 received:u64               (server -> client, once)
    DATA    = 0x01 length:u32 payload
    ACK     = 0x02 received:u64
    FIN     = 0x03                        (the sender's stream ends after what it sent)

A FIN is re-sent after every resume once sent; the receiver reports it once.
Frames may follow each other in one write (an ACK before a DATA frame, say):
the receiver parses a byte stream, and version 1 peers always did.
Partial DATA frames are delivered as they arrive (``received`` counts payload
bytes), so a link dropped mid-frame loses nothing: the sender resumes from the
byte the receiver last delivered.

Hand-over support: ``Session.snapshot()``/``Session.restore()`` (and
``SessionState.to_bytes``/``from_bytes``) carry a session's whole state
(counters, flags, un-acked bytes) between processes; the new owner then resumes
on a fresh link (``ResumableRelay.release``, ``AgentProxy.release_sessions`` and
``adopt``).

Modules: the handshake and errors are in ``resume_handshake``, the replay
buffer in ``replay`` (both re-exported here), the I/O in ``resumable``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cloud_api_adaptor.transport.replay import ReplayBuffer
from cloud_api_adaptor.transport.resume_handshake import (
    HELLO_LEN,
    MAGIC,
    SESSION_ID_LEN,
    VERSION,
    WELCOME_LEN,
    HandshakeError,
    Hello,
    HelloReader,
    Kind,
    ProtocolError,
    ReplayOverflow,
    ResumeError,
    ResumeRejected,
    Status,
    Welcome,
    WelcomeReader,
    encode_hello,
    encode_welcome,
    new_session_id,
)

__all__ = [
    "ACK_EVERY",
    "ALPN",
    "DEFAULT_REPLAY_LIMIT",
    "HELLO_LEN",
    "MAGIC",
    "MAX_FRAME",
    "PIGGYBACK_AT",
    "SESSION_ID_LEN",
    "VERSION",
    "WELCOME_LEN",
    "HandshakeError",
    "Hello",
    "HelloReader",
    "Kind",
    "ProtocolError",
    "ReplayBuffer",
    "ReplayOverflow",
    "ResumeError",
    "ResumeRejected",
    "Session",
    "SessionState",
    "Status",
    "Welcome",
    "WelcomeReader",
    "encode_hello",
    "encode_welcome",
    "new_session_id",
]

ALPN = "caa-agent-resume/1"
"""The ALPN protocol id both ends offer when resumability is on."""

MAX_FRAME = 1 << 20
"""Largest DATA payload; ``send`` splits larger writes, the parser refuses larger frames."""
DEFAULT_REPLAY_LIMIT = 8 << 20
ACK_EVERY = 128 << 10
"""A receiver acks at the latest after this many bytes (and on every keep-alive)."""
PIGGYBACK_AT = 16 << 10
"""Unacknowledged bytes from which our next DATA frame carries an ACK (in the same write)."""

_DATA, _ACK, _FIN = 1, 2, 3
_DATA_HEADER = struct.Struct(">BI")
_pack_header = _DATA_HEADER.pack
_LENGTH = struct.Struct(">I")
_ACK_FRAME = struct.Struct(">BQ")
_FIN_FRAME = bytes([_FIN])


@dataclass(frozen=True)
class SessionState:
    """Everything a ``Session`` is, for a hand-over to another process (``snapshot``/``restore``)."""

    session_id: bytes
    sent: int
    acked: int
    received: int
    unacked: bytes
    """Our stream's bytes ``[acked, sent)``."""
    fin_sent: bool
    fin_received: bool
    replay_limit: int

    _HEADER = struct.Struct(f">4sB{SESSION_ID_LEN}sQQQBI")

    def to_bytes(self) -> bytes:
        """A self-describing encoding, to pass a session to another process (e.g. over a hand-over socket)."""
        flags = (1 if self.fin_sent else 0) | (2 if self.fin_received else 0)
        return (
            self._HEADER.pack(
                b"CAAS",
                VERSION,
                self.session_id,
                self.sent,
                self.acked,
                self.received,
                flags,
                self.replay_limit,
            )
            + self.unacked
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> SessionState:
        """The inverse of ``to_bytes``; ``ValueError`` on anything else."""
        size = cls._HEADER.size
        if len(data) < size:
            raise ValueError("truncated session state")
        magic, version, session_id, sent, acked, received, flags, limit = cls._HEADER.unpack(data[:size])
        if magic != b"CAAS" or version != VERSION:
            raise ValueError("not a session state of this version")
        unacked = bytes(data[size:])
        if len(unacked) != sent - acked or acked > sent:
            raise ValueError("inconsistent session state: un-acked bytes do not match the counters")
        return cls(session_id, sent, acked, received, unacked, bool(flags & 1), bool(flags & 2), limit)


class Session:
    """One end of a resumable byte-stream pair; the same class serves client and server.

    Sending: ``send(data)`` returns the frames to write on the current link (write
    them only while attached and past the handshake: they are kept for replay
    either way).  Receiving: ``feed(chunk)`` returns the payload pieces to deliver
    to the local side, in order; pieces may be views of ``chunk`` (valid only
    during the call).  After a link change: ``detach()``, then, once the
    handshake gave the peer's ``received``, ``resume(peer_received)``.
    """

    def __init__(self, session_id: bytes, *, replay_limit: int = DEFAULT_REPLAY_LIMIT) -> None:
        if len(session_id) != SESSION_ID_LEN:
            raise ValueError(f"session id must be {SESSION_ID_LEN} bytes")
        if replay_limit < 4 * 1024:
            raise ValueError("replay_limit must be at least 4 KiB")
        self.session_id = session_id
        self.replay_limit = replay_limit
        self.sent = 0
        self.acked = 0
        self.received = 0
        self._ack_sent = 0  # the last ``received`` we told the peer
        # Acks often enough that the replay buffer stays small (and in cache) under a
        # steady stream; an ACK is 9 bytes.
        self._ack_every = min(ACK_EVERY, replay_limit // 4)
        # Below ``_ack_every``, or a small window's ack would always go out standalone first.
        self._piggyback_at = min(PIGGYBACK_AT, self._ack_every // 2)
        self._replay = ReplayBuffer()
        self.fin_sent = False
        self.fin_received = False
        # receive parser state
        self._partial = bytearray()  # an incomplete frame header
        self._remaining = 0  # payload bytes still due in the current DATA frame

    # -- state ------------------------------------------------------------------

    @property
    def unacked(self) -> int:
        return self.sent - self.acked

    @property
    def window_full(self) -> bool:
        """Stop reading the local side: half the replay window is waiting for the peer's ack."""
        return self.sent - self.acked >= self.replay_limit // 2

    @property
    def ack_due(self) -> bool:
        return self.received - self._ack_sent >= self._ack_every

    @property
    def finished(self) -> bool:
        """Both streams ended and everything we sent was acknowledged."""
        return self.fin_sent and self.fin_received and self.acked == self.sent

    # -- sending ----------------------------------------------------------------

    def send(self, data: bytes | bytearray | memoryview) -> bytes:
        """Frame ``data`` (kept for replay until acked); returns the bytes to write.

        These start with an ACK frame when ``PIGGYBACK_AT`` received bytes are unacknowledged.
        """
        n = len(data)
        if 0 < n <= MAX_FRAME and not self.fin_sent and self.sent + n - self.acked <= self.replay_limit:
            self._replay.append(data)
            self.sent += n
            if self.received - self._ack_sent < self._piggyback_at:
                return _pack_header(_DATA, n) + data
            return self.ack() + _pack_header(_DATA, n) + data
        if self.fin_sent:
            raise ProtocolError("send after FIN")
        if not n:
            return b""
        if self.sent + n - self.acked > self.replay_limit:
            raise ReplayOverflow(
                f"replay window of {self.replay_limit} bytes exceeded ({self.sent + n - self.acked} un-acked)"
            )
        self._replay.append(data)
        self.sent += n
        frames = _frames(memoryview(data))
        return self.ack() + frames if self.received - self._ack_sent >= self._piggyback_at else frames

    def send_header(self, data: bytes | bytearray | memoryview) -> bytes:
        """Like ``send`` for ``data`` of at most ``MAX_FRAME`` bytes, but returns only the frame header.

        The caller writes the header and then ``data`` itself: for large reads this
        saves copying the payload into a frame (the replay buffer keeps its own copy).
        Like ``send``, the header may be preceded by an ACK frame.
        """
        n = len(data)
        if n > MAX_FRAME:
            raise ValueError(f"send_header takes at most {MAX_FRAME} bytes")
        if self.fin_sent:
            raise ProtocolError("send after FIN")
        if self.sent + n - self.acked > self.replay_limit:
            raise ReplayOverflow(
                f"replay window of {self.replay_limit} bytes exceeded ({self.sent + n - self.acked} un-acked)"
            )
        self._replay.append(data)
        self.sent += n
        if self.received - self._ack_sent < self._piggyback_at:
            return _pack_header(_DATA, n)
        return self.ack() + _pack_header(_DATA, n)

    def send_fin(self) -> bytes:
        """Our stream ends; returns the FIN frame (idempotent: b"" the second time)."""
        if self.fin_sent:
            return b""
        self.fin_sent = True
        return _FIN_FRAME

    def ack(self) -> bytes:
        """An ACK frame for what we received (also a keep-alive)."""
        self._ack_sent = self.received
        return _ACK_FRAME.pack(_ACK, self.received)

    # -- receiving ----------------------------------------------------------------

    def whole_data(self, chunk: memoryview) -> memoryview | None:
        """The payload when ``chunk`` is exactly one DATA frame and no frame is half-read
        (counted as received); None otherwise: then ``feed`` it.

        The relay's common case (one request or reply per read) without ``feed``'s list
        and loop: every agent call crosses it twice on each end.
        """
        end = len(chunk)
        if end > 5 and not self._remaining and not self._partial and chunk[0] == _DATA:
            (length,) = _LENGTH.unpack_from(chunk, 1)
            if length == end - 5 and length <= MAX_FRAME and not self.fin_received:
                self.received += length
                return chunk[5:]
        return None

    def feed(self, chunk: bytes | bytearray | memoryview) -> list[memoryview]:
        """Parse link bytes; returns payload pieces in stream order.

        ACKs trim the replay buffer; a FIN sets ``fin_received`` (the caller checks
        it after each feed).  Raises ``ProtocolError`` on a malformed frame.
        """
        mv = chunk if type(chunk) is memoryview else memoryview(chunk)
        end = len(mv)
        if end > 5 and not self._remaining and not self._partial:
            # The common case, one whole DATA frame in one read: no loop.
            kind, length = _DATA_HEADER.unpack_from(mv)
            if kind == _DATA and length == end - 5 and length <= MAX_FRAME and not self.fin_received:
                self.received += length
                return [mv[5:]]
        out: list[memoryview] = []
        pos = 0
        while pos < end:
            if self._remaining:
                take = min(self._remaining, end - pos)
                out.append(mv[pos : pos + take])
                self._remaining -= take
                self.received += take
                pos += take
                continue
            if self._partial:
                need = self._header_need(self._partial[0])
                take = min(need - len(self._partial), end - pos)
                self._partial += mv[pos : pos + take]
                pos += take
                if len(self._partial) < need:
                    break
                header = bytes(self._partial)
                self._partial.clear()
                self._frame(header)
                continue
            kind = mv[pos]
            need = self._header_need(kind)
            if end - pos < need:
                self._partial += mv[pos:end]
                break
            self._frame(mv[pos : pos + need])
            pos += need
        return out

    @staticmethod
    def _header_need(kind: int) -> int:
        if kind == _DATA:
            return _DATA_HEADER.size
        if kind == _ACK:
            return _ACK_FRAME.size
        if kind == _FIN:
            return 1
        raise ProtocolError(f"unknown frame type {kind}")

    def _frame(self, header: bytes | memoryview) -> None:
        kind = header[0]
        if kind == _DATA:
            _, length = _DATA_HEADER.unpack(header)
            if length > MAX_FRAME:
                raise ProtocolError(f"DATA frame of {length} bytes exceeds {MAX_FRAME}")
            if self.fin_received:
                raise ProtocolError("DATA after FIN")
            self._remaining = length
        elif kind == _ACK:
            _, count = _ACK_FRAME.unpack(header)
            self._on_ack(count)
        else:
            self.fin_received = True

    def _on_ack(self, count: int) -> None:
        if count > self.sent:
            raise ProtocolError(f"peer acknowledged {count} bytes but only {self.sent} were sent")
        if count <= self.acked:
            return
        self._replay.trim(count - self.acked)
        self.acked = count

    # -- link changes ---------------------------------------------------------------

    def detach(self) -> None:
        """The link is gone: forget a half-parsed frame header (its bytes will be re-sent)."""
        self._partial.clear()
        self._remaining = 0

    def resume(self, peer_received: int) -> bytes:
        """The frames that continue our stream at ``peer_received`` (plus FIN if sent), and an ACK.

        Raises ``ResumeRejected`` when the peer wants bytes no longer kept (before
        ``acked``) or never sent.
        """
        if peer_received < self.acked:
            raise ResumeRejected(
                f"peer resumes at byte {peer_received} but the replay buffer starts at {self.acked}",
                Status.CANNOT_RESUME,
            )
        if peer_received > self.sent:
            raise ResumeRejected(
                f"peer resumes at byte {peer_received} but only {self.sent} were sent", Status.CANNOT_RESUME
            )
        self.detach()
        self._on_ack(peer_received)
        parts: list[bytes] = [self.ack()]
        if len(self._replay):
            parts.append(_frames(memoryview(self._replay.contents())))
        if self.fin_sent:
            parts.append(_FIN_FRAME)
        return b"".join(parts)

    # -- hand-over ------------------------------------------------------------------

    def snapshot(self) -> SessionState:
        """The session's state; take it only between link changes (after ``detach``)."""
        return SessionState(
            session_id=self.session_id,
            sent=self.sent,
            acked=self.acked,
            received=self.received,
            unacked=self._replay.contents(),
            fin_sent=self.fin_sent,
            fin_received=self.fin_received,
            replay_limit=self.replay_limit,
        )

    @classmethod
    def restore(cls, state: SessionState) -> Session:
        """A session continuing ``state`` (detached: resume it on a new link)."""
        if len(state.unacked) != state.sent - state.acked:
            raise ValueError("inconsistent session state: un-acked bytes do not match the counters")
        session = cls(state.session_id, replay_limit=state.replay_limit)
        session.received = session._ack_sent = state.received
        session.acked = state.acked
        session.sent = state.acked
        if state.unacked:
            session.send(state.unacked)
        session.fin_sent = state.fin_sent
        session.fin_received = state.fin_received
        return session


def _frames(data: memoryview) -> bytes:
    """``data`` as DATA frames of at most ``MAX_FRAME`` bytes."""
    return b"".join(
        _DATA_HEADER.pack(_DATA, len(piece)) + piece
        for piece in (data[start : start + MAX_FRAME] for start in range(0, len(data), MAX_FRAME))
    )
