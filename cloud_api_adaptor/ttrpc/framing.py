"""ttrpc framing, sans-I/O: bytes in, frames out.

A frame is a 10-byte big-endian header (data length, stream id, message type,
flags) followed by the data.  The decoder never touches a socket; the asyncio
layer only feeds it bytes.  An announced length above ``MAX_MESSAGE_LENGTH`` is
not buffered: the decoder skips that many bytes and yields an ``OversizedFrame``
so the receiver can answer RESOURCE_EXHAUSTED and keep the connection.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag

HEADER = struct.Struct(">IIBB")
HEADER_LENGTH = HEADER.size  # 10
MAX_MESSAGE_LENGTH = 4 << 20  # 4 MiB of frame data, as in containerd/ttrpc


class MessageType(IntEnum):
    REQUEST = 1
    RESPONSE = 2
    DATA = 3


class Flags(IntFlag):
    NONE = 0
    REMOTE_CLOSED = 0x1
    REMOTE_OPEN = 0x2
    NO_DATA = 0x4


@dataclass(frozen=True, slots=True)
class Frame:
    stream_id: int
    type: int
    flags: int
    data: bytes


@dataclass(frozen=True, slots=True)
class OversizedFrame:
    """A frame whose announced length exceeded the limit; its data was discarded."""

    stream_id: int
    type: int
    length: int


class OversizedMessageError(ValueError):
    """Refused to encode a frame larger than the limit."""

    def __init__(self, length: int, maximum: int = MAX_MESSAGE_LENGTH) -> None:
        super().__init__(f"message length {length} exceed maximum message size of {maximum}")
        self.length = length
        self.maximum = maximum


def encode_frame(stream_id: int, type_: int, data: bytes, flags: int = 0) -> bytes:
    """Header + data; refuses data above the 4 MiB limit."""
    if len(data) > MAX_MESSAGE_LENGTH:
        raise OversizedMessageError(len(data))
    return HEADER.pack(len(data), stream_id, type_, flags) + data


class FrameDecoder:
    """Incremental decoder: ``feed(bytes)`` returns the frames completed so far."""

    __slots__ = ("_buf", "_discard", "_max")

    def __init__(self, max_length: int = MAX_MESSAGE_LENGTH) -> None:
        self._buf = bytearray()
        self._discard = 0
        self._max = max_length

    def feed(self, data: bytes) -> list[Frame | OversizedFrame]:
        out: list[Frame | OversizedFrame] = []
        if self._discard:
            skip = min(self._discard, len(data))
            self._discard -= skip
            data = data[skip:]
        self._buf += data
        buf = self._buf
        pos = 0
        end = len(buf)
        while end - pos >= HEADER_LENGTH:
            length, stream_id, type_, flags = HEADER.unpack_from(buf, pos)
            if length > self._max:
                pos += HEADER_LENGTH
                out.append(OversizedFrame(stream_id, type_, length))
                available = end - pos
                if available >= length:
                    pos += length
                else:
                    self._discard = length - available
                    pos = end
                continue
            if end - pos - HEADER_LENGTH < length:
                break
            start = pos + HEADER_LENGTH
            out.append(Frame(stream_id, type_, flags, bytes(buf[start : start + length])))
            pos = start + length
        if pos:
            del buf[:pos]
        return out

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame."""
        return len(self._buf)
