"""A protocol-blind bidirectional byte relay built directly on asyncio Protocols.

Every agent call crosses two relays (worker proxy, VM forwarder), so the relay
is on the hot path of every container operation.  Measured on the development
machine, a streams-based pump (``read``/``write``/``drain`` in a task per
direction) costs 100-180 us per hop; writing to the peer transport straight from
the read callback costs a few microseconds.  Hence:

- no task per chunk or per direction: bytes move inside ``buffer_updated``;
- no allocation per read: a ``BufferedProtocol`` lends the transport its own
  buffer.  This matters most under TLS: asyncio's and uvloop's SSL protocols
  hand a plain ``Protocol`` a fresh 256 KiB ``bytes`` per read (``SSLObject.read
  (256 KiB)``, then shrunk), which glibc serves with mmap, page faults and a
  remap: about a tenth of the relay's CPU on a 64 KiB stream.  The buffer
  starts small (idle connections are many: one per sandbox) and grows when a
  read fills it, up to ``_MAX_BUFFER`` (never shrinking: a connection that moved
  large messages once is likely to again);
- zero copies of our own: what was read is written to the peer straight from
  the buffer; a transport that keeps a reference because it could not send at
  once (its write buffer is not empty afterwards) gets to keep that buffer, and
  the pipe takes a new one;
- back-pressure by flow control: when a transport's write buffer passes its high
  water mark, its protocol's ``pause_writing`` pauses *reading* on the peer, and
  ``resume_writing`` resumes it;
- TCP_NODELAY on every TCP end (``_set_nodelay``);
- half-close: EOF from one side becomes ``write_eof`` on the other when that
  transport supports it (TCP, unix); TLS cannot half-close, so EOF there closes
  the peer once its buffered bytes are flushed;
- either side failing or closing closes both (buffered data is flushed first).

A ``Pipe`` may be connected before its peer exists (the agent proxy dials the
forwarder before the shim connects, and a shim connection exists before its
upstream dial finishes); until ``link`` joins them, a pipe holds what it reads,
so nothing is lost.  A downstream pipe stops reading until linked (the shim
talks first); an upstream one keeps reading, bounded by ``_HOLD_LIMIT``, so an
idle pre-dialled connection notices when the far end closes it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import cast

logger = logging.getLogger(__name__)

# A filter turns bytes read on one side into bytes to write on the other (e.g. the
# forwarder's frame interceptor).  It must be cheap: it runs inside buffer_updated.
# Its input is a view of the pipe's read buffer, valid only during the call: it may
# return that view (or slices of it) to be written, but must copy what it keeps.
Filter = Callable[[memoryview], bytes | bytearray | memoryview]

_HOLD_LIMIT = 1 << 20  # bytes an unlinked pipe holds before it stops reading
# The first read buffer holds most agent calls whole; a connection that fills it grows
# it x4 per full read.  uvloop's SSL protocol asks for a buffer as soon as anything
# arrives (TLS 1.3 session tickets too), so every pre-dialled connection has one.
_MIN_BUFFER = 4 << 10
_MAX_BUFFER = 256 << 10  # as large as asyncio's and uvloop's own read size


@dataclass
class PumpStats:
    """Byte counters shared by the pipes of one relay (or of a whole proxy)."""

    bytes_in: int = 0
    """Bytes read on the downstream (client) side and written upstream."""
    bytes_out: int = 0
    """Bytes read on the upstream side and written downstream."""


class Pipe(asyncio.BufferedProtocol):
    """One end of a relay; ``link(a, b)`` joins two pipes into a bidirectional pump."""

    __slots__ = (
        "_buffer",
        "_buffer_size",
        "_downstream",
        "_eof",
        "_filter",
        "_pause_unlinked",
        "_peer",
        "_pending",
        "_stats",
        "closed",
        "connected",
        "transport",
    )

    def __init__(
        self,
        stats: PumpStats | None = None,
        *,
        downstream: bool = False,
        filter: Filter | None = None,
        pause_unlinked: bool | None = None,
    ):
        self.transport: asyncio.Transport | None = None
        self._peer: Pipe | None = None
        self._pending: list[bytes | bytearray | memoryview] = []
        self._eof = False
        self._stats = stats
        self._downstream = downstream
        self._filter = filter
        self._pause_unlinked = downstream if pause_unlinked is None else pause_unlinked
        self._buffer: memoryview | None = None
        self._buffer_size = _MIN_BUFFER
        loop = asyncio.get_running_loop()
        self.connected: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()

    # -- state -------------------------------------------------------------

    @property
    def is_alive(self) -> bool:
        """Connected, not closing, and no EOF seen."""
        t = self.transport
        return t is not None and not t.is_closing() and not self._eof and not self.closed.done()

    @property
    def is_linked(self) -> bool:
        return self._peer is not None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        elif not self.closed.done():
            self.closed.set_result(None)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        elif not self.closed.done():
            self.closed.set_result(None)

    # -- asyncio.Protocol ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport; uvloop's do not derive from asyncio.Transport, hence no isinstance.
        self.transport = t = cast(asyncio.Transport, transport)
        _set_nodelay(t)
        if self._peer is None and self._pause_unlinked:
            t.pause_reading()
        if not self.connected.done():
            self.connected.set_result(None)

    def get_buffer(self, sizehint: int) -> memoryview:
        buffer = self._buffer
        if buffer is None:
            buffer = self._buffer = memoryview(bytearray(self._buffer_size))
        return buffer

    def buffer_updated(self, nbytes: int) -> None:
        buffer = self._buffer
        assert buffer is not None
        if nbytes == len(buffer) and self._buffer_size < _MAX_BUFFER:
            # A full read: more is coming in larger pieces; grow (the next read gets a new buffer).
            self._buffer_size = min(_MAX_BUFFER, self._buffer_size * 4)
            self._buffer = None
        data = buffer[:nbytes]
        out = data if self._filter is None else self._filter(data)
        if self._stats is not None:
            if self._downstream:
                self._stats.bytes_in += nbytes
            else:
                self._stats.bytes_out += nbytes
        peer = self._peer
        if peer is None:
            # Unlinked: hold a copy (SSL may also deliver buffered data after pause_reading).
            if out:
                self._pending.append(bytes(out))
                if self.transport is not None and sum(len(c) for c in self._pending) > _HOLD_LIMIT:
                    self.transport.pause_reading()
            return
        pt = peer.transport
        if out and pt is not None:
            pt.write(out)
            if pt.get_write_buffer_size():
                # The transport may still point into our buffer: leave it that one.
                self._buffer = None

    def eof_received(self) -> bool | None:
        self._eof = True
        peer = self._peer
        if peer is None:
            return None  # close; link() sees a dead pipe
        pt = peer.transport
        if pt is not None and not pt.is_closing():
            if pt.can_write_eof():
                pt.write_eof()
            else:
                pt.close()
        if peer._eof:
            return None  # both directions finished
        # Keep our write side open for the peer's remaining answers; SSL transports
        # cannot do that (and warn if asked), so they close.
        return None if _is_tls(self.transport) else True

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            logger.debug("relay connection lost: %s", exc)
        peer = self._peer
        if peer is not None and peer.transport is not None and not peer.transport.is_closing():
            peer.transport.close()
        if not self.connected.done():
            self.connected.set_exception(ConnectionError("connection lost before it was made"))
            self.connected.exception()  # mark retrieved
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        peer = self._peer
        if peer is not None and peer.transport is not None:
            peer.transport.pause_reading()

    def resume_writing(self) -> None:
        peer = self._peer
        if peer is not None and peer.transport is not None and not peer.transport.is_closing():
            peer.transport.resume_reading()

    def hold(self, data: bytes) -> None:
        """Bytes to write to the peer first, once linked (what a previous daemon read but never relayed)."""
        if data:
            self._pending.append(bytes(data))

    def take_held(self) -> bytes:
        """What this unlinked pipe read and holds for its peer (emptied): a hand-over passes it on."""
        pending, self._pending = self._pending, []
        return b"".join(pending)

    # -- linking --------------------------------------------------------------

    def _attach(self, peer: Pipe) -> None:
        self._peer = peer
        pending, self._pending = self._pending, []
        if peer.transport is not None:
            for chunk in pending:
                peer.transport.write(chunk)


def _set_nodelay(transport: asyncio.Transport) -> None:
    """TCP_NODELAY on a TCP transport (with or without TLS): a small frame goes out at once.

    asyncio and uvloop both set it on the transports they make today; the relay
    depends on it (Nagle plus delayed ACKs stalls a request/response protocol
    for up to 40 ms), so it does not rely on that.
    """
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as exc:  # the connection may already be gone
        logger.debug("cannot set TCP_NODELAY: %s", exc)


def _is_tls(transport: asyncio.BaseTransport | None) -> bool:
    return transport is not None and transport.get_extra_info("sslcontext") is not None


async def close_pipes(pipes: Iterable[Pipe], grace: float = 5.0) -> None:
    """Close relays gracefully (flushing what they hold), aborting those still open after ``grace``."""
    pending = list(pipes)
    for pipe in pending:
        pipe.close()
    if not pending:
        return
    await asyncio.wait([p.closed for p in pending], timeout=grace)
    for pipe in pending:
        if not pipe.closed.done():
            pipe.abort()


def link(a: Pipe, b: Pipe) -> None:
    """Join two connected pipes: flush what each held, then relay both ways.

    If either side is already dead, both are closed.
    """
    if a.transport is None or b.transport is None:
        raise RuntimeError("link() needs two connected pipes")
    a._attach(b)
    b._attach(a)
    for side, other in ((a, b), (b, a)):
        if side.closed.done() or side.transport.is_closing():  # type: ignore[union-attr]
            other.close()
        elif side._eof:
            ot = other.transport
            if ot is not None and not ot.is_closing():
                if ot.can_write_eof():
                    ot.write_eof()
                else:
                    ot.close()
    for side in (a, b):
        t = side.transport
        if t is not None and not t.is_closing() and not side._eof:
            t.resume_reading()
