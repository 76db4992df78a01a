"""The byte pump: both directions, half-close, back-pressure, failure propagation, late linking."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio

from cloud_api_adaptor.testing.eventually import eventually
from cloud_api_adaptor.transport.pump import Pipe, PumpStats, link


@dataclass
class Rig:
    """client <-> [down Pipe | up Pipe] <-> backend, over two socketpairs."""

    client_r: asyncio.StreamReader
    client_w: asyncio.StreamWriter
    backend_r: asyncio.StreamReader
    backend_w: asyncio.StreamWriter
    down: Pipe
    up: Pipe
    stats: PumpStats


async def make_rig(*, linked: bool = True, filter=None) -> Rig:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    client_sock, relay_down = socket.socketpair()
    relay_up, backend_sock = socket.socketpair()
    stats = PumpStats()
    down = Pipe(stats, downstream=True, filter=filter)
    up = Pipe(stats)
    await loop.create_unix_connection(lambda: down, sock=relay_down)
    await loop.create_unix_connection(lambda: up, sock=relay_up)
    cr, cw = await asyncio.open_unix_connection(sock=client_sock)
    br, bw = await asyncio.open_unix_connection(sock=backend_sock)
    if linked:
        link(down, up)
    return Rig(cr, cw, br, bw, down, up, stats)


@pytest_asyncio.fixture
async def rig() -> AsyncIterator[Rig]:
    r = await make_rig()
    yield r
    await close_rig(r)


async def close_rig(r: Rig) -> None:
    for w in (r.client_w, r.backend_w):
        w.close()
    r.down.close()
    r.up.close()
    await asyncio.gather(r.down.closed, r.up.closed)
    for w in (r.client_w, r.backend_w):
        with contextlib.suppress(OSError):
            await w.wait_closed()


@pytest.mark.asyncio
async def test_bytes_flow_both_ways_unchanged_and_are_counted(rig: Rig) -> None:
    rig.client_w.write(b"hello agent")
    assert await rig.backend_r.readexactly(11) == b"hello agent"
    rig.backend_w.write(b"hello shim!!")
    assert await rig.client_r.readexactly(12) == b"hello shim!!"
    assert rig.stats.bytes_in == 11
    assert rig.stats.bytes_out == 12


@pytest.mark.asyncio
async def test_half_close_lets_the_other_side_finish_its_answer(rig: Rig) -> None:
    rig.client_w.write(b"request")
    rig.client_w.write_eof()
    assert await rig.backend_r.read() == b"request"  # EOF reached the backend
    rig.backend_w.write(b"late answer")
    await rig.backend_w.drain()
    rig.backend_w.close()
    assert await rig.client_r.read() == b"late answer"
    await asyncio.gather(rig.down.closed, rig.up.closed)


@pytest.mark.asyncio
async def test_one_side_failing_closes_the_other(rig: Rig) -> None:
    assert rig.up.transport is not None
    rig.up.transport.abort()  # what a transport does on a socket error
    assert await rig.client_r.read() == b""
    await asyncio.gather(rig.down.closed, rig.up.closed)
    assert not rig.down.is_alive and not rig.up.is_alive


@pytest.mark.asyncio
async def test_eof_from_both_sides_closes_the_relay(rig: Rig) -> None:
    rig.backend_w.close()
    assert await rig.client_r.read() == b""
    rig.client_w.write_eof()
    await asyncio.gather(rig.down.closed, rig.up.closed)


@pytest.mark.asyncio
async def test_a_slow_reader_pauses_the_writer_instead_of_buffering_everything(rig: Rig) -> None:
    payload = os.urandom(16 << 20)
    rig.client_w.write(payload)  # the backend is not reading yet
    assert rig.down.transport is not None
    down = rig.down.transport
    await eventually(lambda: not down.is_reading(), "the relay applying back-pressure", interval=0.005)
    assert rig.up.transport is not None
    assert rig.up.transport.get_write_buffer_size() < (4 << 20)
    received = await rig.backend_r.readexactly(len(payload))
    assert received == payload
    await rig.client_w.drain()


@pytest.mark.asyncio
async def test_data_read_before_linking_is_delivered_after() -> None:
    r = await make_rig(linked=False)
    try:
        r.client_w.write(b"early bytes")
        await r.client_w.drain()
        await asyncio.sleep(0)
        link(r.down, r.up)
        assert await r.backend_r.readexactly(11) == b"early bytes"
    finally:
        await close_rig(r)


@pytest.mark.asyncio
async def test_linking_to_a_dead_peer_closes_the_live_side() -> None:
    r = await make_rig(linked=False)
    try:
        r.backend_w.close()
        await r.up.closed  # an unlinked upstream pipe keeps reading, so it sees the EOF
        assert not r.up.is_alive
        link(r.down, r.up)
        assert await r.client_r.read() == b""
        await r.down.closed
    finally:
        await close_rig(r)


@pytest.mark.asyncio
async def test_a_filter_rewrites_the_downstream_direction_only() -> None:
    r = await make_rig(filter=lambda data: bytes(data).upper())
    try:
        r.client_w.write(b"shout")
        assert await r.backend_r.readexactly(5) == b"SHOUT"
        r.backend_w.write(b"quiet")
        assert await r.client_r.readexactly(5) == b"quiet"
    finally:
        await close_rig(r)


@pytest.mark.asyncio
async def test_bytes_stay_intact_when_the_peer_keeps_the_read_buffer(rig: Rig) -> None:
    """Reads of every size, a reader that lags: the pipe must not reuse a buffer the peer still holds."""
    rng = random.Random(7)
    chunks = [os.urandom(rng.choice([1, 10, 5000, 16 << 10, 70000, 300000])) for _ in range(60)]
    for chunk in chunks:
        rig.client_w.write(chunk)
    expected = b"".join(chunks)
    # the reader lags: wait until the relay has filled the backend's socket (it stops reading) or is done
    down = rig.down.transport
    assert down is not None
    await eventually(
        lambda: rig.stats.bytes_in > 0 and (rig.stats.bytes_in == len(expected) or not down.is_reading()),
        "the relay holding bytes the backend has not read",
        interval=0.005,
    )
    assert await rig.backend_r.readexactly(len(expected)) == expected
    assert rig.stats.bytes_in == len(expected)


@pytest.mark.asyncio
async def test_tcp_ends_get_tcp_nodelay() -> None:
    loop = asyncio.get_running_loop()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
    pipe = Pipe()
    await loop.create_connection(lambda: pipe, sock=client)
    try:
        assert pipe.transport is not None
        sock = pipe.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        pipe.close()
        await pipe.closed
        server.close()


class HoldingTransport(asyncio.Transport):
    """A peer that keeps references to what it is given, as uvloop does with bytes a full socket refused."""

    def __init__(self, *, keeps: bool) -> None:
        super().__init__()
        self.keeps = keeps
        self.held: list[bytes | bytearray | memoryview] = []
        self.sent = bytearray()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.keeps:
            self.held.append(data)  # a reference into the writer's memory, not a copy
        else:
            self.sent += data

    def received(self) -> bytes:
        return bytes(self.sent) + b"".join(bytes(d) for d in self.held)

    def get_write_buffer_size(self) -> int:
        return sum(len(d) for d in self.held)

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def feed(pipe: Pipe, data: bytes) -> memoryview:
    """What a transport does for a BufferedProtocol: fill the lent buffer, report the count."""
    buffer = pipe.get_buffer(-1)
    buffer[: len(data)] = data
    pipe.buffer_updated(len(data))
    return buffer


@pytest.mark.asyncio
@pytest.mark.parametrize("keeps", [True, False])
async def test_the_read_buffer_is_reused_only_when_the_peer_let_go_of_it(keeps: bool) -> None:
    reader, peer = Pipe(), Pipe()
    reader.connection_made(HoldingTransport(keeps=False))
    out = HoldingTransport(keeps=keeps)
    peer.connection_made(out)
    link(reader, peer)
    first = feed(reader, b"A" * 100)
    second = feed(reader, b"B" * 100)
    assert out.received() == b"A" * 100 + b"B" * 100
    # A peer that wrote everything at once leaves the buffer free: no allocation per read.
    assert (first.obj is second.obj) is not keeps
