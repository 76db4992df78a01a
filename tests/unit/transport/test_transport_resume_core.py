"""The resume protocol core without sockets: streams survive link drops at arbitrary points.

A simulated link carries each direction's frames as a byte string; a drop cuts
it at a random byte (mid-frame included) and discards the rest, then both ends
re-handshake.  Whatever the drop points, each side's delivered bytes equal the
other side's written bytes exactly.
"""

from __future__ import annotations

import random

import pytest

from cloud_api_adaptor.transport.resume import (
    HELLO_LEN,
    MAX_FRAME,
    HandshakeError,
    Hello,
    HelloReader,
    Kind,
    ProtocolError,
    ReplayBuffer,
    ReplayOverflow,
    ResumeRejected,
    Session,
    SessionState,
    Status,
    Welcome,
    WelcomeReader,
    encode_hello,
    encode_welcome,
    new_session_id,
)


def deliver(session: Session, wire: bytes, cut: int | None = None) -> bytes:
    """Feed ``wire`` (or its first ``cut`` bytes) in random small chunks; the payload delivered."""
    data = wire if cut is None else wire[:cut]
    out = bytearray()
    rng = random.Random(len(data))
    pos = 0
    while pos < len(data):
        step = rng.randint(1, 40)
        for piece in session.feed(data[pos : pos + step]):
            out += piece
        pos += step
    return bytes(out)


def handshake(client: Session, server: Session) -> tuple[bytes, bytes]:
    """A resume handshake through the encoders/readers; the frames each side sends first."""
    hello_bytes = encode_hello(Hello(Kind.RESUME, client.session_id, client.received))
    got = HelloReader().feed(hello_bytes)
    assert got is not None
    hello, rest = got
    assert rest == b"" and hello.session_id == server.session_id
    server.detach()
    to_client = server.resume(hello.received)
    welcome_bytes = encode_welcome(Welcome(Status.OK, server.received))
    got_w = WelcomeReader().feed(welcome_bytes)
    assert got_w is not None
    client.detach()
    to_server = client.resume(got_w[0].received)
    return to_server, to_client


@pytest.mark.parametrize("seed", range(60))
def test_no_byte_lost_or_duplicated_whatever_the_drop_points(seed: int) -> None:
    rng = random.Random(seed)
    sid = new_session_id()
    client, server = Session(sid, replay_limit=64 << 10), Session(sid, replay_limit=64 << 10)
    written = {"up": bytearray(), "down": bytearray()}
    delivered = {"up": bytearray(), "down": bytearray()}
    up_wire, down_wire = bytearray(), bytearray()
    piggybacked = 0
    for _round in range(40):
        # each side writes some messages (staying inside the replay window)
        for side, wire, key in ((client, up_wire, "up"), (server, down_wire, "down")):
            for _ in range(rng.randint(0, 4)):
                if side.window_full:
                    break
                msg = rng.randbytes(rng.randint(1, 3000))
                written[key] += msg
                out = side.send(msg) if rng.random() < 0.5 else side.send_header(msg) + msg
                piggybacked += out[0] == 2  # an ACK rides before the DATA frame
                wire.extend(out)
            if rng.random() < 0.3:
                wire.extend(side.ack())
        if rng.random() < 0.35:
            # the link drops: each direction delivered up to a random byte, the rest is lost
            delivered["up"] += deliver(server, bytes(up_wire), rng.randint(0, len(up_wire)))
            delivered["down"] += deliver(client, bytes(down_wire), rng.randint(0, len(down_wire)))
            to_server, to_client = handshake(client, server)
            up_wire[:] = to_server
            down_wire[:] = to_client
        else:
            delivered["up"] += deliver(server, bytes(up_wire))
            delivered["down"] += deliver(client, bytes(down_wire))
            up_wire.clear()
            down_wire.clear()
    delivered["up"] += deliver(server, bytes(up_wire))
    delivered["down"] += deliver(client, bytes(down_wire))
    assert delivered["up"] == written["up"]
    assert delivered["down"] == written["down"]
    assert server.received == client.sent and client.received == server.sent
    assert piggybacked  # drops and chunking met acks carried on data too


def test_fin_is_delivered_once_across_a_resume() -> None:
    sid = new_session_id()
    client, server = Session(sid), Session(sid)
    wire = client.send(b"last words") + client.send_fin()
    assert deliver(server, wire, 3) == b""  # the link drops inside the first header
    assert not server.fin_received
    to_server, _ = handshake(client, server)
    assert deliver(server, to_server) == b"last words"
    assert server.fin_received
    client.feed(server.ack())  # a duplicated FIN after another resume is harmless
    to_server, _ = handshake(client, server)
    assert deliver(server, to_server) == b""
    assert server.fin_received


def test_acks_trim_the_replay_buffer_and_bound_it() -> None:
    sid = new_session_id()
    a, b = Session(sid, replay_limit=16 << 10), Session(sid, replay_limit=16 << 10)
    wire = a.send(b"x" * (8 << 10))
    assert a.window_full  # half the window outstanding: the I/O layer pauses its reader
    deliver(b, wire)
    assert b.ack_due
    a.feed(b.ack())
    assert a.unacked == 0 and not a.window_full
    a.send(b"y" * (16 << 10))
    with pytest.raises(ReplayOverflow):
        a.send(b"z")
    with pytest.raises(ReplayOverflow):
        a.send_header(b"z")
    with pytest.raises(ValueError):
        a.send_header(bytes(MAX_FRAME + 1))


def test_large_writes_are_split_into_frames() -> None:
    sid = new_session_id()
    a, b = Session(sid, replay_limit=8 << 20), Session(sid, replay_limit=8 << 20)
    big = random.Random(1).randbytes(MAX_FRAME * 2 + 5)
    got = bytearray()
    wire = a.send(big)
    for piece in b.feed(wire):
        got += piece
    assert got == big


def test_resume_beyond_the_replay_window_fails_cleanly() -> None:
    sid = new_session_id()
    a, b = Session(sid), Session(sid)
    deliver(b, a.send(b"0123456789"))
    a.feed(b.ack())  # a trimmed everything
    with pytest.raises(ResumeRejected) as exc:
        a.resume(4)  # a peer that lost bytes it had acknowledged: they are gone
    assert exc.value.status is Status.CANNOT_RESUME
    with pytest.raises(ResumeRejected):
        a.resume(11)  # more than was ever sent


def test_malformed_frames_are_protocol_errors() -> None:
    s = Session(new_session_id())
    with pytest.raises(ProtocolError, match="unknown frame type"):
        s.feed(b"\x09")
    with pytest.raises(ProtocolError, match="exceeds"):
        Session(new_session_id()).feed(b"\x01\xff\xff\xff\xff")
    with pytest.raises(ProtocolError, match="acknowledged"):
        Session(new_session_id()).feed(b"\x02" + (5).to_bytes(8, "big"))
    t = Session(new_session_id())
    t.feed(b"\x03")
    with pytest.raises(ProtocolError, match="after FIN"):
        t.feed(b"\x01\x00\x00\x00\x01x")


def test_bad_handshakes() -> None:
    with pytest.raises(HandshakeError, match="magic"):
        HelloReader().feed(b"PRI * HTTP/2.0")  # any other protocol
    with pytest.raises(HandshakeError, match="magic"):
        WelcomeReader().feed(b"\x00\x00\x00\x00" + bytes(10))
    good = encode_hello(Hello(Kind.NEW, new_session_id(), 0))
    with pytest.raises(HandshakeError, match="version"):
        HelloReader().feed(good[:4] + b"\x07" + good[5:])
    with pytest.raises(HandshakeError, match="kind"):
        HelloReader().feed(good[:5] + b"\x05" + good[6:])
    with pytest.raises(HandshakeError, match="new session"):
        HelloReader().feed(encode_hello(Hello(Kind.NEW, new_session_id(), 0))[:-1] + b"\x01")
    with pytest.raises(HandshakeError, match="status"):
        WelcomeReader().feed(b"CAAR\x01\x63" + bytes(8))
    # a hello split anywhere is read whole; what follows it is handed back
    reader = HelloReader()
    assert reader.feed(good[:7]) is None
    got = reader.feed(good[7:] + b"\x03")
    assert got is not None and got[1] == b"\x03" and len(good) == HELLO_LEN
    with pytest.raises(ValueError):
        encode_hello(Hello(Kind.NEW, b"short", 0))


def test_snapshot_and_restore_continue_the_session_elsewhere() -> None:
    sid = new_session_id()
    client, server = Session(sid), Session(sid)
    deliver(server, client.send(b"abc"))
    client.feed(server.ack())
    wire = client.send(b"defgh")
    deliver(client, server.send(b"reply"))
    deliver(server, wire, 7)  # 'de' arrived, the rest was lost with the old process
    moved = Session.restore(client.snapshot())
    assert moved.snapshot() == client.snapshot()
    to_server, to_client = handshake(moved, server)
    assert deliver(server, to_server) == b"fgh"
    assert deliver(moved, to_client) == b""
    assert server.received == 8 and moved.received == 5
    with pytest.raises(ValueError):
        Session.restore(type(client.snapshot())(sid, 5, 0, 0, b"", False, False, 1 << 20))


@pytest.mark.parametrize("seed", range(20))
def test_the_replay_buffer_keeps_bytes_in_order_across_wraps(seed: int) -> None:
    rng = random.Random(seed)
    buf, model = ReplayBuffer(), bytearray()
    for _ in range(300):
        if rng.random() < 0.55:
            data = rng.randbytes(rng.randint(0, 9000))
            buf.append(data if rng.random() < 0.5 else memoryview(data))
            model += data
        else:
            n = rng.randint(0, len(model))
            buf.trim(n)
            del model[:n]
        assert len(buf) == len(model)
        assert buf.contents() == model


def test_session_state_travels_as_bytes() -> None:
    sid = new_session_id()
    s = Session(sid, replay_limit=1 << 20)
    s.send(b"not yet acked")
    s.feed(Session(sid).send(b"xyz"))
    s.send_fin()
    state = s.snapshot()
    assert SessionState.from_bytes(state.to_bytes()) == state
    with pytest.raises(ValueError):
        SessionState.from_bytes(state.to_bytes()[:-1])
    with pytest.raises(ValueError):
        SessionState.from_bytes(b"XXXX" + state.to_bytes()[4:])
    with pytest.raises(ValueError):
        SessionState.from_bytes(b"short")


@pytest.mark.parametrize("seed", range(10))
def test_whole_frame_reads_and_frame_parsing_mix_into_one_exact_stream(seed: int) -> None:
    """The relay tries ``whole_data`` (one read = one DATA frame) and falls back to ``feed``:
    whatever the reads look like, the delivered bytes are the sent bytes, in order, once."""
    rng = random.Random(seed)
    sid = new_session_id()
    a, b = Session(sid), Session(sid)
    wire, written, got = bytearray(), bytearray(), bytearray()
    data_frames: dict[int, int] = {}  # where a DATA frame starts on the wire -> its size
    for _ in range(200):
        msg = rng.randbytes(rng.randint(1, 2000))
        written += msg
        data_frames[len(wire)] = 5 + len(msg)
        wire += a.send(msg)
        if rng.random() < 0.2:
            wire += b.ack()
    boundaries = [*sorted(data_frames), len(wire)]
    whole = pos = 0
    while pos < len(wire):
        if rng.random() < 0.6 and pos in data_frames:  # exactly the next DATA frame, as one read
            size = data_frames[pos]
        elif rng.random() < 0.5:  # up to a later frame boundary: several frames, or a frame's rest
            size = rng.choice([b for b in boundaries if b > pos][:3]) - pos
        else:
            size = rng.randint(1, 3000)
        read = memoryview(bytes(wire[pos : pos + size]))
        pos += size
        piece = b.whole_data(read)
        if piece is not None:
            whole += 1
            got += piece
        else:
            for part in b.feed(read):
                got += part
    assert got == written and b.received == len(written)
    assert whole  # the fast path was taken
    assert Session(sid).whole_data(memoryview(b.ack())) is None  # an ACK is not data
