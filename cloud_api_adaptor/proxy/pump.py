"""A protocol-blind bidirectional byte relay built directly on asyncio Protocols.

Every agent call crosses two relays (worker proxy, VM forwarder), so the relay
is on the hot path of every container operation.  Measured on the development
machine, a streams-based pump (``read``/``write``/``drain`` in a task per
direction) costs 100-180 us per hop; writing to the peer transport straight from
``data_received`` costs a few microseconds.  Hence:

- no task per chunk or per direction: bytes move inside ``data_received``;
- back-pressure by flow control: when a transport's write buffer passes its high
  water mark, its protocol's ``pause_writing`` pauses *reading* on the peer, and
  ``resume_writing`` resumes it;
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
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)

# A filter turns bytes read on one side into bytes to write on the other (e.g. the
# forwarder's frame interceptor).  It must be cheap: it runs inside data_received.
Filter = Callable[[bytes], bytes | bytearray | memoryview]

_HOLD_LIMIT = 1 << 20  # bytes an unlinked pipe holds before it stops reading


@dataclass
class PumpStats:
    """Byte counters shared by the pipes of one relay (or of a whole proxy)."""

    bytes_in: int = 0
    """Bytes read on the downstream (client) side and written upstream."""
    bytes_out: int = 0
    """Bytes read on the upstream side and written downstream."""


class Pipe(asyncio.Protocol):
    """One end of a relay; ``link(a, b)`` joins two pipes into a bidirectional pump."""

    __slots__ = (
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
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self._peer is None and self._pause_unlinked:
            transport.pause_reading()
        if not self.connected.done():
            self.connected.set_result(None)

    def data_received(self, data: bytes) -> None:
        out = data if self._filter is None else self._filter(data)
        if self._stats is not None:
            if self._downstream:
                self._stats.bytes_in += len(data)
            else:
                self._stats.bytes_out += len(data)
        peer = self._peer
        if peer is None:
            # Unlinked: hold (SSL may also deliver buffered data after pause_reading).
            if out:
                self._pending.append(out)
                if self.transport is not None and sum(len(c) for c in self._pending) > _HOLD_LIMIT:
                    self.transport.pause_reading()
            return
        if out and peer.transport is not None:
            peer.transport.write(out)

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

    # -- linking --------------------------------------------------------------

    def _attach(self, peer: Pipe) -> None:
        self._peer = peer
        pending, self._pending = self._pending, []
        if peer.transport is not None:
            for chunk in pending:
                peer.transport.write(chunk)


def _is_tls(transport: asyncio.BaseTransport | None) -> bool:
    return transport is not None and transport.get_extra_info("sslcontext") is not None


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
