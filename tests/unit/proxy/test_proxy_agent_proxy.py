"""AgentProxy: readiness dialling, timeout, socket hygiene, reuse of the first connection, reconnects.

The dialling policy itself (staggering, the bound on attempts in flight, no new
attempt during a handshake) is tested on fake time in ``tests/unit/test_proxy_dialer.py``;
here real sockets show the real connector meets it.

Dropped SYNs (a booting cloud VM without a listener often drops rather than
refuses) are made with a loopback listener whose accept queue is full: the
kernel then drops every new SYN, and the dialling sockets sit in SYN_SENT,
visible in ``/proc/net/tcp``.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from cloud_api_adaptor.errors import DeadlineExceeded, FailedPrecondition
from cloud_api_adaptor.proxy.agent_proxy import AgentChannel, AgentProxy
from cloud_api_adaptor.proxy.tls import AgentTls, CertKeyPair, make_server_context
from cloud_api_adaptor.settings import TlsSettings
from cloud_api_adaptor.testing.eventually import eventually


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tcp_sockets_to(port: int, state: str) -> set[int]:
    """Local ports of this namespace's IPv4 sockets in ``state`` (/proc/net/tcp's hex) towards ``port``."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[2].rpartition(":")[2], 16) == port and fields[3] == state:
            found.add(int(fields[1].rpartition(":")[2], 16))
    return found


SYN_SENT, ESTABLISHED = "02", "01"


class BlackHole:
    """A loopback listener whose accept queue is full, so that new SYNs are dropped, not refused.

    ``listen(0)`` queues one connection; a filler takes that place.  ``serve``
    turns it into an echoing forwarder (the queue drained, the backlog raised).
    """

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.port: int = self.sock.getsockname()[1]
        self.filler = socket.create_connection(("127.0.0.1", self.port))

    async def serve(self) -> EchoServer:
        conn, _ = self.sock.accept()
        conn.close()
        self.filler.close()
        return await EchoServer(self.port).start(sock=self.sock)

    def close(self) -> None:
        self.filler.close()
        self.sock.close()


class EchoServer:
    """A stand-in forwarder on loopback that echoes; counts and can drop its connections."""

    def __init__(self, port: int, ssl_context: ssl.SSLContext | None = None) -> None:
        self.port = port
        self.ssl = ssl_context
        self.accepted = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.add(writer)
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def start(self, sock: socket.socket | None = None) -> EchoServer:
        if sock is not None:
            self._server = await asyncio.start_server(self._handle, sock=sock, ssl=self.ssl)
        else:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, ssl=self.ssl)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        if self._server is not None:
            await self._server.wait_closed()
        await asyncio.sleep(0)


@pytest_asyncio.fixture
async def servers() -> AsyncIterator[list[EchoServer]]:
    started: list[EchoServer] = []
    yield started
    for s in started:
        await s.stop()


async def roundtrip(path: Path, data: bytes = b"ping") -> bytes:
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        writer.write(data)
        return await reader.readexactly(len(data))
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.asyncio
async def test_start_waits_for_the_forwarder_then_relays(short_tmp: Path, servers: list[EchoServer]) -> None:
    port = free_port()
    proxy = AgentProxy(short_tmp / "sb" / "agent.ttrpc")
    starting = asyncio.create_task(proxy.start("127.0.0.1", port, timeout=60))
    try:
        await eventually(lambda: proxy.stats.upstream_failures >= 2, "a refused dial")
        assert not starting.done()
        servers.append(await EchoServer(port).start())
        await starting
        assert await roundtrip(proxy.socket_path) == b"ping"
    finally:
        await proxy.aclose()


@pytest_asyncio.fixture
async def hole() -> AsyncIterator[BlackHole]:
    h = BlackHole()
    yield h
    h.close()


@pytest.mark.asyncio
async def test_timing_out_behind_dropped_syns_leaves_no_socket(short_tmp: Path, hole: BlackHole) -> None:
    proxy = AgentProxy(short_tmp / "agent.ttrpc", retry_interval=0.02, connect_attempt_timeout=60)
    with pytest.raises(DeadlineExceeded) as err:
        await proxy.start("127.0.0.1", hole.port, timeout=0.3)
    assert str(err.value) == (
        f"failed to establish agent proxy connection to 127.0.0.1:{hole.port}: connection attempt timed out"
    )
    assert tcp_sockets_to(hole.port, SYN_SENT) == set()
    assert not proxy.socket_path.exists()
    await proxy.aclose()


@pytest.mark.asyncio
async def test_an_attempt_that_times_out_is_a_failure_and_the_dial_goes_on(
    short_tmp: Path, hole: BlackHole, servers: list[EchoServer]
) -> None:
    proxy = AgentProxy(
        short_tmp / "agent.ttrpc", retry_interval=0.01, connect_attempt_timeout=0.05, max_attempts_in_flight=2
    )
    starting = asyncio.create_task(proxy.start("127.0.0.1", hole.port, timeout=60))
    try:
        await eventually(lambda: proxy.stats.upstream_failures >= 3, "attempts timing out")
        assert not starting.done()
        servers.append(await hole.serve())
        await starting
        assert await roundtrip(proxy.socket_path) == b"ping"
    finally:
        await proxy.aclose()
    assert tcp_sockets_to(hole.port, SYN_SENT) == set()


@pytest.mark.asyncio
async def test_cancelling_a_start_with_attempts_in_flight_leaves_no_socket(
    short_tmp: Path, hole: BlackHole
) -> None:
    proxy = AgentProxy(short_tmp / "agent.ttrpc", retry_interval=0.02, connect_attempt_timeout=60)
    task = asyncio.create_task(proxy.start("127.0.0.1", hole.port, timeout=60))
    await eventually(lambda: len(tcp_sockets_to(hole.port, SYN_SENT)) >= 3, "attempts in flight")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert tcp_sockets_to(hole.port, SYN_SENT) == set()
    assert not proxy.socket_path.exists()
    await proxy.aclose()


@pytest.mark.asyncio
async def test_start_times_out_with_the_go_error_and_leaves_no_socket(short_tmp: Path) -> None:
    port = free_port()
    proxy = AgentProxy(short_tmp / "agent.ttrpc")
    with pytest.raises(DeadlineExceeded) as err:
        await proxy.start("127.0.0.1", port, timeout=0.3)
    assert str(err.value).startswith(f"failed to establish agent proxy connection to 127.0.0.1:{port}: ")
    assert "refused" in str(err.value).lower()
    assert not proxy.socket_path.exists()
    await proxy.aclose()


@pytest.mark.asyncio
async def test_cancelled_start_leaves_no_socket(short_tmp: Path) -> None:
    proxy = AgentProxy(short_tmp / "agent.ttrpc")
    task = asyncio.create_task(proxy.start("127.0.0.1", free_port(), timeout=60))
    await eventually(proxy.socket_path.exists, "the socket")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not proxy.socket_path.exists()
    await proxy.aclose()


@pytest.mark.asyncio
async def test_socket_is_private_and_a_stale_one_is_replaced(
    short_tmp: Path, servers: list[EchoServer]
) -> None:
    path = short_tmp / "agent.ttrpc"
    path.write_text("stale")
    servers.append(await EchoServer(free_port()).start())
    proxy = AgentProxy(path)
    try:
        await proxy.start("127.0.0.1", servers[0].port, timeout=10)
        mode = path.stat().st_mode
        assert stat.S_ISSOCK(mode)
        assert stat.S_IMODE(mode) == 0o600
    finally:
        await proxy.aclose()
    assert not path.exists()


@pytest.mark.asyncio
async def test_the_readiness_connection_serves_the_first_shim_connection(
    short_tmp: Path, servers: list[EchoServer]
) -> None:
    server = await EchoServer(free_port()).start()
    servers.append(server)
    proxy = AgentProxy(short_tmp / "agent.ttrpc")
    try:
        await proxy.start("127.0.0.1", server.port, timeout=10)
        assert await roundtrip(proxy.socket_path) == b"ping"
        assert server.accepted == 1
        assert await roundtrip(proxy.socket_path, b"pong") == b"pong"
        assert server.accepted == 2
        assert proxy.stats.connections_total == 2
        assert proxy.stats.bytes_in == 8 and proxy.stats.bytes_out == 8
    finally:
        await proxy.aclose()


@pytest.mark.asyncio
async def test_a_new_shim_connection_reconnects_after_the_vm_connection_drops(
    short_tmp: Path, servers: list[EchoServer]
) -> None:
    port = free_port()
    first = await EchoServer(port).start()
    proxy = AgentProxy(short_tmp / "agent.ttrpc")
    try:
        await proxy.start("127.0.0.1", port, timeout=10)
        reader, writer = await asyncio.open_unix_connection(str(proxy.socket_path))
        writer.write(b"one")
        assert await reader.readexactly(3) == b"one"
        await first.stop()  # the forwarder dies: the shim connection ends
        assert await reader.read() == b""
        writer.close()
        servers.append(await EchoServer(port).start())
        assert await roundtrip(proxy.socket_path, b"two") == b"two"
    finally:
        await proxy.aclose()


@pytest.mark.asyncio
async def test_restore_listens_without_dialling(short_tmp: Path, servers: list[EchoServer]) -> None:
    server = await EchoServer(free_port()).start()
    servers.append(server)
    proxy = AgentProxy(short_tmp / "agent.ttrpc")
    try:
        await proxy.restore("127.0.0.1", server.port)
        assert proxy.is_listening
        assert server.accepted == 0
        assert await roundtrip(proxy.socket_path) == b"ping"
        assert server.accepted == 1
        with pytest.raises(FailedPrecondition):
            await proxy.restore("127.0.0.1", server.port)
    finally:
        await proxy.aclose()


@pytest.mark.asyncio
async def test_aclose_is_idempotent_and_ends_open_relays(short_tmp: Path, servers: list[EchoServer]) -> None:
    server = await EchoServer(free_port()).start()
    servers.append(server)
    proxy = AgentProxy(short_tmp / "agent.ttrpc")
    await proxy.start("127.0.0.1", server.port, timeout=10)
    reader, writer = await asyncio.open_unix_connection(str(proxy.socket_path))
    writer.write(b"x")
    assert await reader.readexactly(1) == b"x"
    await proxy.aclose()
    await proxy.aclose()
    assert await reader.read() == b""
    writer.close()
    assert not proxy.socket_path.exists()
    with pytest.raises(FailedPrecondition):
        await proxy.start("127.0.0.1", server.port, timeout=1)


@pytest.mark.asyncio
async def test_tls_dial_verifies_the_vm_certificate_name(
    short_tmp: Path, tmp_path: Path, servers: list[EchoServer]
) -> None:
    tls = AgentTls.from_settings(TlsSettings(), tmp_path)
    fields = tls.apf_tls_fields("podvm-one")
    server_ctx = make_server_context(
        server=CertKeyPair(fields["tls-server-cert"].encode(), fields["tls-server-key"].encode()),
        client_ca_pem=fields["tls-client-ca"].encode(),
        profile=None,
    )
    server = await EchoServer(free_port(), server_ctx).start()
    servers.append(server)
    channel = AgentChannel(tls, dial_timeout=5)
    good = channel.new_proxy(short_tmp / "good.ttrpc", "podvm-one")
    try:
        await good.start("127.0.0.1", server.port, timeout=10)
        assert await roundtrip(good.socket_path, b"secret") == b"secret"
    finally:
        await good.aclose()
    wrong = channel.new_proxy(short_tmp / "wrong.ttrpc", "podvm-two")
    with pytest.raises(DeadlineExceeded) as err:
        await wrong.start("127.0.0.1", server.port, timeout=0.5)
    assert "tls: failed to verify certificate: Hostname mismatch" in str(err.value)
    await wrong.aclose()
