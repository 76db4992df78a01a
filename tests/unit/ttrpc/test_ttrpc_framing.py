"""Frame encoding and incremental decoding, without sockets."""

from __future__ import annotations

import pytest

from cloud_api_adaptor.ttrpc.connection import ClientStreamIds, ServerStreamIds
from cloud_api_adaptor.ttrpc.framing import (
    MAX_MESSAGE_LENGTH,
    Frame,
    FrameDecoder,
    MessageType,
    OversizedFrame,
    OversizedMessageError,
    encode_frame,
)


def test_header_is_big_endian_length_stream_type_flags() -> None:
    assert (
        encode_frame(1, MessageType.REQUEST, b"abc", 0) == bytes.fromhex("00000003 00000001 01 00") + b"abc"
    )
    assert encode_frame(0x01020304, MessageType.DATA, b"", 0x5) == bytes.fromhex("00000000 01020304 03 05")


def test_frames_split_at_every_byte_boundary_decode_the_same() -> None:
    wire = encode_frame(1, 1, b"hello") + encode_frame(3, 1, b"") + encode_frame(5, 2, b"x" * 300)
    decoder = FrameDecoder()
    frames = []
    for i in range(len(wire)):
        frames.extend(decoder.feed(wire[i : i + 1]))
    assert frames == [Frame(1, 1, 0, b"hello"), Frame(3, 1, 0, b""), Frame(5, 2, 0, b"x" * 300)]
    assert decoder.buffered == 0


def test_oversized_frame_is_reported_and_skipped_without_buffering() -> None:
    decoder = FrameDecoder(max_length=16)
    wire = encode_frame(7, 1, b"ok") + bytes.fromhex("00000020 00000009 01 00")
    out = decoder.feed(wire + b"z" * 10)
    assert out == [Frame(7, 1, 0, b"ok"), OversizedFrame(9, 1, 32)]
    assert decoder.buffered == 0
    # The remaining 22 body bytes are discarded; the next frame decodes normally.
    assert decoder.feed(b"z" * 22 + encode_frame(11, 1, b"next")) == [Frame(11, 1, 0, b"next")]


def test_encoder_refuses_data_above_four_mebibytes() -> None:
    assert len(encode_frame(1, 1, b"\0" * MAX_MESSAGE_LENGTH)) == MAX_MESSAGE_LENGTH + 10
    with pytest.raises(OversizedMessageError) as info:
        encode_frame(1, 1, b"\0" * (MAX_MESSAGE_LENGTH + 1))
    assert str(info.value) == "message length 4194305 exceed maximum message size of 4194304"


def test_server_stream_ids_must_be_odd_and_increasing() -> None:
    ids = ServerStreamIds()
    assert ids.accept_request(2) == "StreamID must be odd for client initiated streams"
    assert ids.accept_request(3) is None
    assert ids.accept_request(3) == "StreamID cannot be re-used and must increment"
    assert ids.accept_request(1) == "StreamID cannot be re-used and must increment"
    assert ids.accept_request(9) is None  # gaps are fine


def test_client_stream_ids_are_odd_from_one_until_exhausted() -> None:
    ids = ClientStreamIds()
    assert [ids.allocate() for _ in range(3)] == [1, 3, 5]
    ids._next = 0xFFFF_FFFF
    assert ids.allocate() == 0xFFFF_FFFF
    assert ids.allocate() is None
