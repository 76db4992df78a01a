"""One ttrpc byte stream as a lean ``asyncio.Protocol``: bytes in, frames out, frames written.

``FrameConnection`` is shared by the server and the client.  ``data_received``
feeds the sans-I/O ``FrameDecoder`` and hands each complete frame to a
synchronous ``frame_received``; subclasses decide what a frame means and create
a task only when there is asynchronous work to do (a handler to run).  There is
no StreamReader layer and no per-frame task: each would add a buffer copy or a
loop iteration to every call, which is most of a small call's cost.

Writes go straight to ``transport.write``; ``drain()`` lets a task wait while
the transport's buffer is above its high-water mark.  Stream-id rules live in
``ServerStreamIds`` and ``ClientStreamIds`` so they can be tested without I/O.
"""

from __future__ import annotations

import asyncio
import logging
from typing import cast

from cloud_api_adaptor.ttrpc.framing import (
    MAX_MESSAGE_LENGTH,
    Frame,
    FrameDecoder,
    OversizedFrame,
    encode_frame,
)

logger = logging.getLogger(__name__)

MAX_STREAM_ID = 0xFFFF_FFFF


class ServerStreamIds:
    """Validates client stream ids the way containerd/ttrpc 1.2 does: odd, strictly increasing."""

    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last = 0

    @staticmethod
    def parity_error(stream_id: int) -> str | None:
        if stream_id % 2 != 1:
            return "StreamID must be odd for client initiated streams"
        return None

    def accept_request(self, stream_id: int) -> str | None:
        """None if ``stream_id`` may open a new stream (and record it), else the error text."""
        error = self.parity_error(stream_id)
        if error is not None:
            return error
        if stream_id <= self.last:
            return "StreamID cannot be re-used and must increment"
        self.last = stream_id
        return None


class ClientStreamIds:
    """Hands out client stream ids 1, 3, 5, ... until the 32-bit space is used up."""

    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next = 1

    def allocate(self) -> int | None:
        stream_id = self._next
        if stream_id > MAX_STREAM_ID:
            return None
        self._next = stream_id + 2
        return stream_id


class FrameConnection(asyncio.Protocol):
    """Frame-level protocol over one transport; subclasses implement the ``*_received`` hooks."""

    def __init__(self, max_length: int = MAX_MESSAGE_LENGTH) -> None:
        self._decoder = FrameDecoder(max_length)
        self._transport: asyncio.Transport | None = None
        self._closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not an isinstance check: uvloop's transports implement the interface without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        for item in self._decoder.feed(data):
            if isinstance(item, Frame):
                self.frame_received(item)
            else:
                self.oversized_frame_received(item)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._wake_drain()
        if not self._closed.done():
            self._closed.set_result(None)
        self.closed(exc)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drain()

    # -- hooks ----------------------------------------------------------------------

    def frame_received(self, frame: Frame) -> None:
        """A complete frame arrived (called synchronously from ``data_received``)."""

    def oversized_frame_received(self, frame: OversizedFrame) -> None:
        """A header announced more than the limit; its data is being discarded."""

    def closed(self, exc: Exception | None) -> None:
        """The transport is gone (EOF, error or our own close)."""

    # -- writing and lifecycle -------------------------------------------------------

    @property
    def is_closing(self) -> bool:
        return self._transport is None or self._transport.is_closing()

    def send_frame(self, stream_id: int, type_: int, data: bytes, flags: int = 0) -> bool:
        """Write one frame; False if the connection is already closing (the frame is dropped).

        Raises ``OversizedMessageError`` for data above the 4 MiB limit, before writing anything.
        """
        frame = encode_frame(stream_id, type_, data, flags)
        transport = self._transport
        if transport is None or transport.is_closing():
            return False
        transport.write(frame)
        return True

    async def drain(self) -> None:
        """Wait while the transport's write buffer is above its high-water mark."""
        if not self._write_paused or self._transport is None:
            return
        if self._drain_waiter is None or self._drain_waiter.done():
            self._drain_waiter = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._drain_waiter)

    def _wake_drain(self) -> None:
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def close(self) -> None:
        """Close after buffered writes are flushed."""
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        """Close now, dropping buffered writes."""
        if self._transport is not None:
            self._transport.abort()

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)

    @property
    def is_closed(self) -> bool:
        return self._closed.done()
