"""Acks of the resume protocol: piggybacked on data, never later than before, version 1 bytes.

A DATA frame going back carries an ACK in the same write once ``PIGGYBACK_AT``
bytes are unacknowledged.  What must hold: the bytes on the wire are still
``caa-agent-resume/1`` frames (read here by a decoder written from the wire
format, as an old peer reads them); a one-way stream whose receiver never sends
data still gets standalone acks and never stalls at a full window; a peer that
only acks late (an old forwarder acks on ``ack_due`` and keep-alives only)
still gets our replay buffer trimmed; request/response traffic needs no
standalone acks at all.
"""

from __future__ import annotations

import random
import struct

import pytest

from cloud_api_adaptor.transport.resume import (
    ACK_EVERY,
    DEFAULT_REPLAY_LIMIT,
    PIGGYBACK_AT,
    ProtocolError,
    Session,
    new_session_id,
)


class V1Reader:
    """The version 1 wire format, decoded from its documentation: DATA 0x01 len:u32 payload,
    ACK 0x02 received:u64, FIN 0x03.  Fed in arbitrary pieces."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.payload = bytearray()
        self.acks: list[int] = []
        self.fin = False

    def feed(self, chunk: bytes) -> None:
        self.buf += chunk
        while self.buf:
            kind = self.buf[0]
            if kind == 1:
                if len(self.buf) < 5:
                    return
                (length,) = struct.unpack(">I", self.buf[1:5])
                if len(self.buf) < 5 + length:
                    return
                assert not self.fin, "DATA after FIN"
                self.payload += self.buf[5 : 5 + length]
                del self.buf[: 5 + length]
            elif kind == 2:
                if len(self.buf) < 9:
                    return
                (count,) = struct.unpack(">Q", self.buf[1:9])
                assert not self.acks or count >= self.acks[-1], "acks never go back"
                self.acks.append(count)
                del self.buf[:9]
            elif kind == 3:
                self.fin = True
                del self.buf[:1]
            else:
                raise AssertionError(f"not a version 1 frame type: {kind}")


def chunked(rng: random.Random, data: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(data):
        step = rng.choice((1, 3, 9, 40, 700, 5000, 70000))
        out.append(data[pos : pos + step])
        pos += step
    return out


def feed_all(session: Session, rng: random.Random, wire: bytes) -> bytes:
    got = bytearray()
    for piece in chunked(rng, wire):
        for part in session.feed(piece):
            got += part
    return bytes(got)


@pytest.mark.parametrize("seed", range(12))
def test_request_response_acks_ride_on_the_replies_and_stay_version_1(seed: int) -> None:
    """Both directions' bytes, read by a version 1 decoder, are exactly what was sent; the
    replay buffers are trimmed by acks carried on data.  With the default window no
    standalone ACK is ever due (messages up to ``ACK_EVERY - PIGGYBACK_AT``); with small
    windows the relay's standalone acks (on ``ack_due`` after a read) still come in time."""
    rng = random.Random(seed)
    sid = new_session_id()
    limit = (16 << 10, 64 << 10, DEFAULT_REPLAY_LIMIT)[seed % 3]
    node, vm = Session(sid, replay_limit=limit), Session(sid, replay_limit=limit)
    old_vm, old_node = V1Reader(), V1Reader()  # what an old peer would make of each direction
    sent_up, sent_down = bytearray(), bytearray()
    got_up, got_down = bytearray(), bytearray()
    largest = ACK_EVERY - PIGGYBACK_AT if limit == DEFAULT_REPLAY_LIMIT else limit // 4
    standalone = 0
    for _ in range(300):
        request = rng.randbytes(rng.randint(1, largest))
        reply = rng.randbytes(rng.randint(1, largest))
        for sender, receiver, old, msg, sent, got in (
            (node, vm, old_vm, request, sent_up, got_up),
            (vm, node, old_node, reply, sent_down, got_down),
        ):
            assert not sender.window_full
            wire = sender.send(msg) if rng.random() < 0.5 else sender.send_header(msg) + msg
            sent.extend(msg)
            old.feed(wire)
            got.extend(feed_all(receiver, rng, wire))
            if receiver.ack_due:
                ack = receiver.ack()
                sender.feed(ack)
                (old_vm if receiver is node else old_node).feed(ack)
                standalone += 1
            assert sender.unacked <= limit // 2
    assert got_up == sent_up and old_vm.payload == sent_up
    assert got_down == sent_down and old_node.payload == sent_down
    assert old_vm.acks and old_node.acks  # acks did travel
    assert old_vm.acks[-1] <= node.received and old_node.acks[-1] <= vm.received
    if limit == DEFAULT_REPLAY_LIMIT:
        assert standalone == 0, "request/response traffic needed standalone ACKs"


@pytest.mark.parametrize("limit", [16 << 10, 64 << 10, 1 << 20])
def test_a_one_way_stream_never_stalls_at_a_full_window(limit: int) -> None:
    """The receiver sends no data back: only standalone acks (``ack_due``, as the relay writes
    them after each read) open the sender's window; it must keep moving to the end."""
    rng = random.Random(limit)
    sid = new_session_id()
    sender, receiver = Session(sid, replay_limit=limit), Session(sid, replay_limit=limit)
    total, moved, wire_to_receiver = 4 << 20, bytearray(), bytearray()
    standalone = 0
    while sender.sent < total:
        if sender.window_full:
            assert wire_to_receiver, "stalled: the window is full and nothing is in flight to be acked"
        else:
            size = min(rng.choice((100, 4000, 30000)), limit // 2, total - sender.sent)
            msg = rng.randbytes(size)
            wire_to_receiver += sender.send(msg)
        # the link delivers part of what is in flight; the receiver acks when due
        cut = rng.randint(0, len(wire_to_receiver))
        for part in receiver.feed(bytes(wire_to_receiver[:cut])):
            moved += part
        del wire_to_receiver[:cut]
        if receiver.ack_due:
            sender.feed(receiver.ack())
            standalone += 1
    for part in receiver.feed(bytes(wire_to_receiver)):
        moved += part
    assert len(moved) == total == receiver.received
    assert standalone  # only they opened the window


def test_a_peer_that_acks_only_late_still_gets_our_replay_trimmed() -> None:
    """An old peer: it never piggybacks and acks only when due or on keep-alives.  Our
    replay buffer holds everything until then and that ack trims it; the old peer's replay
    is trimmed by the acks on our data."""
    sid = new_session_id()
    new, old = Session(sid), Session(sid)
    old._piggyback_at = 1 << 62  # as version 1 was first released
    for i in range(200):
        old.feed(new.send(b"request %d " % i * 20))
        reply = old.send(b"reply %d" % i * 100)
        assert reply[0] == 1  # a bare DATA frame, no ACK before it
        new.feed(reply)
        assert not old.ack_due
    assert new.unacked == new.sent > 0  # nothing acked yet: all kept for replay
    assert not new.window_full
    assert old.unacked < PIGGYBACK_AT + 1000  # our acks came with our requests
    new.feed(old.ack())  # the keep-alive ACK
    assert new.unacked == 0


def test_an_ack_beyond_what_was_sent_is_still_refused() -> None:
    sid = new_session_id()
    a, b = Session(sid), Session(sid)
    b.feed(a.send(bytes(PIGGYBACK_AT)))
    wire = b.send(b"x")
    assert wire[0] == 2  # the ACK comes first
    with pytest.raises(ProtocolError, match="acknowledged"):
        Session(sid).feed(wire)  # a session that never sent those bytes
    assert a.feed(wire) == [memoryview(b"x")] and a.unacked == 0
