"""The two ends of a ``ResumableRelay``: protocols for the local connection and for each link.

They only move bytes and report events; every decision is the relay's
(``_RelaySide`` is what they need of it).  Read buffers are lent to the
transport as ``pump.Pipe`` lends them: small at first, grown x4 on full reads.
"""

from __future__ import annotations

import asyncio
from enum import Enum
from typing import Protocol, cast

from cloud_api_adaptor.transport.pump import _set_nodelay
from cloud_api_adaptor.transport.resume import WelcomeReader


class _RelaySide(Protocol):
    def _from_local(self, data: memoryview) -> bool: ...
    def _local_eof(self) -> None: ...
    def _local_lost(self, exc: Exception | None) -> None: ...
    def _pause_link(self, pause: bool) -> None: ...
    def _from_link(self, link: Link, data: memoryview) -> None: ...
    def _on_welcome_bytes(self, link: Link, data: memoryview) -> None: ...
    def _link_lost(self, link: Link, exc: Exception | None) -> None: ...
    def _pause_local_for_link(self, pause: bool) -> None: ...


_MIN_BUFFER = 4 << 10
_MAX_BUFFER = 256 << 10


class _Buffered(asyncio.BufferedProtocol):
    """A lent read buffer that starts small and grows x4 on full reads (as ``pump.Pipe``)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer: memoryview | None = None
        self._size = _MIN_BUFFER

    def get_buffer(self, sizehint: int) -> memoryview:
        buffer = self._buffer
        if buffer is None:
            buffer = self._buffer = memoryview(bytearray(self._size))
        return buffer

    def _take(self, nbytes: int) -> memoryview:
        buffer = self._buffer
        assert buffer is not None
        if nbytes == len(buffer) and self._size < _MAX_BUFFER:
            self._size = min(_MAX_BUFFER, self._size * 4)
            self._buffer = None
        return buffer[:nbytes]


class Local(_Buffered):
    """The local connection's protocol: what it reads becomes DATA frames on the link."""

    def __init__(self, relay: _RelaySide) -> None:
        super().__init__()
        self._relay = relay
        self._on_data = relay._from_local  # bound once: this runs for every read
        self.eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def buffer_updated(self, nbytes: int) -> None:
        buffer = self._buffer
        assert buffer is not None
        if nbytes == len(buffer) and self._size < _MAX_BUFFER:
            self._size = min(_MAX_BUFFER, self._size * 4)
            self._buffer = None
        if self._on_data(buffer[:nbytes]):
            self._buffer = None  # the link's transport still points into it

    def eof_received(self) -> bool | None:
        self.eof = True
        self._relay._local_eof()
        return True  # keep our write side open for the remaining answers

    def connection_lost(self, exc: Exception | None) -> None:
        self._relay._local_lost(exc)

    def pause_writing(self) -> None:
        self._relay._pause_link(True)

    def resume_writing(self) -> None:
        self._relay._pause_link(False)


class LinkState(Enum):
    HANDSHAKE = "handshake"
    RUNNING = "running"
    GONE = "gone"


class Link(_Buffered):
    """One TLS connection to the other end; replaced after every drop."""

    def __init__(self, relay: _RelaySide, *, client: bool) -> None:
        super().__init__()
        self._relay = relay
        self._on_data = relay._from_link  # bound once: this runs for every read
        self.state = LinkState.HANDSHAKE
        self._welcome = WelcomeReader() if client else None
        self.reads = 0
        """Reads so far: the keep-alive tick compares it with the last tick's (cheaper than a clock)."""
        self.running_ = False
        self.seen_reads = 0
        self.quiet_since = asyncio.get_running_loop().time()
        self.handshake_limit = float("inf")
        """Seconds the link may wait for the peer's welcome (set by the client side)."""
        loop = asyncio.get_running_loop()
        self.settled: asyncio.Future[bool] = loop.create_future()
        """True once running, False if it failed or was lost first."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = t = cast(asyncio.Transport, transport)
        _set_nodelay(t)

    def buffer_updated(self, nbytes: int) -> None:
        buffer = self._buffer
        assert buffer is not None
        if nbytes == len(buffer) and self._size < _MAX_BUFFER:
            self._size = min(_MAX_BUFFER, self._size * 4)
            self._buffer = None
        self.reads += 1
        data = buffer[:nbytes]
        if self.running_:
            self._on_data(self, data)
        elif self._welcome is not None and self.state is LinkState.HANDSHAKE:
            self._relay._on_welcome_bytes(self, data)

    def eof_received(self) -> bool | None:
        return None  # a link that ends without a FIN frame is a drop: close, resume later

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = LinkState.GONE
        self.running_ = False
        if not self.settled.done():
            self.settled.set_result(False)
        self._relay._link_lost(self, exc)

    def pause_writing(self) -> None:
        self._relay._pause_local_for_link(True)

    def resume_writing(self) -> None:
        self._relay._pause_local_for_link(False)

    def gone(self) -> None:
        self.state = LinkState.GONE
        self.running_ = False

    def running(self) -> None:
        self.state = LinkState.RUNNING
        self.running_ = True
        if not self.settled.done():
            self.settled.set_result(True)
