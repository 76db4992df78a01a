"""The resumable agent channel on loopback: shim -> AgentProxy -> mTLS (ALPN) -> Forwarder -> agent.

The link between proxy and forwarder is dropped in the ways it drops in real
life (a reset, the forwarder's listener restarting) while a client keeps
calling; the client must see no EOF, every call exactly one correct reply, and
the agent every request exactly once, in order, on its one connection.  Then the
fallbacks: a proxy with resumability against a forwarder without it, and the
other way round.  (The same with real processes and a network namespace:
``test_agent_channel_netns.py``.)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio

from cloud_api_adaptor.apf import ApfConfig
from cloud_api_adaptor.proxy.agent_proxy import AgentChannel, AgentProxy
from cloud_api_adaptor.proxy.testing import StubAgent, StubClient
from cloud_api_adaptor.proxy.tls import AgentTls, CertKeyPair, make_server_context
from cloud_api_adaptor.settings import TlsSettings
from cloud_api_adaptor.testing.eventually import eventually
from cloud_api_adaptor.transport.resume import (
    ALPN,
    WELCOME_LEN,
    Hello,
    Kind,
    Status,
    WelcomeReader,
    encode_hello,
    new_session_id,
)
from cloud_api_adaptor.vm.forwarder import Forwarder, ForwarderSettings, build_server_context

INSTANCE = "podvm-resume-0a1b2c"


@dataclass
class Stand:
    root: Path
    agent: StubAgent
    tls: AgentTls
    apf: ApfConfig
    forwarders: list[Forwarder] = field(default_factory=list)
    proxies: list[AgentProxy] = field(default_factory=list)
    clients: list[StubClient] = field(default_factory=list)

    async def forwarder(self, *, resume_window: float = 60.0, port: int = 0) -> tuple[Forwarder, int]:
        settings = ForwarderSettings(
            listen=f"127.0.0.1:{port}",
            kata_agent_socket=self.agent.path,
            resume_window=resume_window,
            resume_keepalive=0.2,
            resume_dead_after=2.0,
        )
        fwd = Forwarder(settings, build_server_context(settings, self.apf))
        self.forwarders.append(fwd)
        _, bound = await fwd.start()
        return fwd, bound

    async def proxy(self, port: int, *, resume_window: float = 30.0) -> AgentProxy:
        channel = AgentChannel(self.tls, dial_timeout=10, resume_window=resume_window)
        proxy = channel.new_proxy(self.root / f"sb{len(self.proxies)}" / "agent.ttrpc", INSTANCE)
        # Fast keep-alives: a drop is noticed in a second, not five.
        proxy._resume_keepalive, proxy._resume_dead_after = 0.2, 2.0
        self.proxies.append(proxy)
        await proxy.start("127.0.0.1", port, timeout=10)
        return proxy

    async def client(self, proxy: AgentProxy) -> StubClient:
        client = await StubClient.connect_unix(proxy.socket_path)
        self.clients.append(client)
        return client


@pytest_asyncio.fixture
async def stand(short_tmp: Path) -> AsyncIterator[Stand]:
    agent = StubAgent(short_tmp / "agent.sock")
    await agent.start()
    tls = AgentTls.from_settings(TlsSettings(), short_tmp / "state")
    apf = ApfConfig.from_mapping(
        {"pod-namespace": "default", "pod-name": "web", **tls.apf_tls_fields(INSTANCE)}
    )
    s = Stand(short_tmp, agent, tls, apf)
    try:
        yield s
    finally:
        for client in s.clients:
            client.close()
        for proxy in s.proxies:
            await proxy.aclose()
        for fwd in s.forwarders:
            await fwd.aclose()
        await agent.aclose()


class Caller:
    """Numbered echo calls; checks each reply and, at the end, what the agent received."""

    def __init__(self, client: StubClient) -> None:
        self.client = client
        self.sent: list[bytes] = []
        self.inflight: list[tuple[bytes, asyncio.Future[object]]] = []

    def call(self, n: int = 1) -> None:
        for _ in range(n):
            payload = f"call-{len(self.sent):06d}".encode() * 7
            self.sent.append(payload)
            req = _echo(payload)
            self.inflight.append((payload, self.client.send_request(req)))  # type: ignore[arg-type]

    async def settle(self, timeout: float = 20.0) -> None:
        async with asyncio.timeout(timeout):
            for payload, fut in self.inflight:
                reply = await fut
                assert reply.payload == payload  # type: ignore[attr-defined]
        self.inflight.clear()

    def check_agent(self, agent: StubAgent) -> None:
        got = [r.payload for r in agent.requests if r.service == "test.Echo"]
        assert got == self.sent  # every request exactly once, in order
        assert not self.client.closed.done()  # the shim saw no EOF


def _echo(payload: bytes) -> bytes:
    from cloud_api_adaptor._pb import ttrpc_pb2

    return ttrpc_pb2.Request(service="test.Echo", method="Echo", payload=payload).SerializeToString()


@pytest.mark.asyncio
async def test_a_reset_link_is_resumed_without_the_shim_or_agent_noticing(stand: Stand) -> None:
    _, port = await stand.forwarder()
    proxy = await stand.proxy(port)
    caller = Caller(await stand.client(proxy))
    caller.call(20)
    await caller.settle()
    (agent_conn,) = stand.agent._conns
    for _ in range(3):
        (relay,) = proxy.relays
        assert relay.link is not None and relay.link.transport is not None
        caller.call(30)  # in flight while the link goes
        relay.link.transport.abort()  # a reset, as seen from the node
        caller.call(30)  # sent while there is no link
        await caller.settle()
    caller.check_agent(stand.agent)
    assert stand.agent._conns == {agent_conn}  # the forwarder never dialled the agent again
    assert proxy.stats.resumes == 3


@pytest.mark.asyncio
async def test_large_calls_survive_resets_byte_exact(stand: Stand) -> None:
    """Calls of 16 KiB and more go out as a frame header plus the read buffer (``writelines``)
    and their replies carry acks; with resets in the middle every reply is still exact."""
    _, port = await stand.forwarder()
    proxy = await stand.proxy(port)
    caller = Caller(await stand.client(proxy))
    sizes = [100, 16 << 10, 20_000, 70_000, 300_000, 1 << 20]
    for turn in range(4):
        for i, size in enumerate(sizes * 2):
            payload = os.urandom(size)
            caller.sent.append(payload)
            caller.inflight.append((payload, caller.client.send_request(_echo(payload))))  # type: ignore[arg-type]
            if turn and i == 3:
                (relay,) = proxy.relays
                assert relay.link is not None and relay.link.transport is not None
                relay.link.transport.abort()  # mid-stream: some calls half sent, some replies half back
        await caller.settle(timeout=30)
    caller.check_agent(stand.agent)
    assert proxy.stats.resumes == 3
    (relay,) = proxy.relays
    assert relay.session.unacked <= relay.session.replay_limit // 2


@pytest.mark.asyncio
async def test_a_restarted_forwarder_listener_is_resumed(stand: Stand) -> None:
    fwd, port = await stand.forwarder()
    proxy = await stand.proxy(port)
    caller = Caller(await stand.client(proxy))
    caller.call(10)
    await caller.settle()
    caller.call(50)
    await fwd.restart_listener()
    caller.call(50)
    await caller.settle()
    caller.check_agent(stand.agent)
    assert len(stand.agent._conns) == 1
    assert fwd.sessions is not None and len(fwd.sessions) == 1


@pytest.mark.asyncio
async def test_beyond_the_resume_window_the_shim_connection_closes(stand: Stand) -> None:
    fwd, port = await stand.forwarder()
    proxy = await stand.proxy(port, resume_window=1.0)
    caller = Caller(await stand.client(proxy))
    caller.call(5)
    await caller.settle()
    # The VM is unreachable for longer than the window: every redial is refused.
    down = asyncio.ensure_future(fwd.restart_listener(down_for=60))
    try:
        async with asyncio.timeout(15):
            await caller.client.closed
        await eventually(lambda: not proxy.relays, "the proxy forgot the session")
    finally:
        down.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await down


@pytest.mark.asyncio
async def test_a_stopping_forwarder_ends_the_session_at_once(stand: Stand) -> None:
    fwd, port = await stand.forwarder()
    proxy = await stand.proxy(port)  # a resume window of 30 s: the FIN makes waiting unnecessary
    caller = Caller(await stand.client(proxy))
    caller.call(5)
    await caller.settle()
    await fwd.aclose()
    async with asyncio.timeout(5):
        await caller.client.closed  # EOF, as without resumability
    assert not stand.agent._conns


@pytest.mark.asyncio
async def test_the_forwarder_ends_a_session_nobody_resumes(stand: Stand) -> None:
    fwd, port = await stand.forwarder(resume_window=0.5)
    proxy = await stand.proxy(port)
    caller = Caller(await stand.client(proxy))
    caller.call(3)
    await caller.settle()
    await proxy.aclose()  # the node side goes away without a word
    await eventually(lambda: not stand.agent._conns, "the agent connection closed", timeout=10)
    assert fwd.sessions is not None and len(fwd.sessions) == 0


@pytest.mark.asyncio
async def test_resuming_proxy_falls_back_to_a_plain_forwarder(stand: Stand) -> None:
    _, port = await stand.forwarder(resume_window=0)  # like the Go forwarder: no ALPN
    proxy = await stand.proxy(port)
    caller = Caller(await stand.client(proxy))
    caller.call(40)
    await caller.settle()
    caller.check_agent(stand.agent)
    assert not proxy.relays  # a plain pump carries it


@pytest.mark.asyncio
async def test_plain_proxy_is_served_by_a_resuming_forwarder(stand: Stand) -> None:
    fwd, port = await stand.forwarder()
    proxy = await stand.proxy(port, resume_window=0)
    caller = Caller(await stand.client(proxy))
    caller.call(40)
    await caller.settle()
    caller.check_agent(stand.agent)
    assert fwd.sessions is not None and len(fwd.sessions) == 0
    caller.client.close()
    await eventually(
        lambda: not stand.agent._conns, "the agent connection closed"
    )  # a plain relay: closing the shim closes the agent's


@pytest.mark.asyncio
async def test_shim_close_ends_the_session_on_both_ends(stand: Stand) -> None:
    fwd, port = await stand.forwarder()
    proxy = await stand.proxy(port)
    caller = Caller(await stand.client(proxy))
    caller.call(5)
    await caller.settle()
    await caller.client.aclose()
    await eventually(lambda: not stand.agent._conns and not proxy.relays, "both ends closed")
    assert fwd.sessions is not None and len(fwd.sessions) == 0


class _SlowAgent(asyncio.Protocol):
    """An agent that does not read until told: what it gets is counted and hashed."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.received = bytearray()
        self.holding = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.pause_reading()  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        # uvloop starts reading an accepted connection after connection_made: pause again.
        self.received += data
        if self.holding and self.transport is not None:
            self.transport.pause_reading()

    def release(self) -> None:
        self.holding = False
        if self.transport is not None:
            self.transport.resume_reading()


@pytest.mark.asyncio
async def test_a_slow_agent_pauses_the_shim_and_loses_nothing(stand: Stand, short_tmp: Path) -> None:
    """Back-pressure end to end: the shim's writes stall, memory stays bounded, every byte arrives once."""
    slow = _SlowAgent()
    server = await asyncio.get_running_loop().create_unix_server(lambda: slow, str(short_tmp / "slow.sock"))
    try:
        stand.agent = StubAgent(short_tmp / "slow.sock")  # only its path is used by the forwarder
        fwd, port = await stand.forwarder()
        proxy = await stand.proxy(port)
        reader, writer = await asyncio.open_unix_connection(str(proxy.socket_path))
        blob = os.urandom(1 << 20)
        written = 0
        stalled = False
        for _ in range(64):  # up to 64 MiB: far more than every buffer on the way holds
            writer.write(blob)
            written += len(blob)
            try:
                await asyncio.wait_for(writer.drain(), timeout=1.0)
            except TimeoutError:
                stalled = True
                break
        assert stalled, "the shim's writes never stalled: nothing pushed back"
        (relay,) = proxy.relays
        assert relay.session.unacked <= relay.session.replay_limit
        assert fwd.sessions is not None
        (far,) = fwd.sessions._relays.values()
        assert far.local.transport is not None
        assert far.local.transport.get_write_buffer_size() < 8 << 20  # the forwarder stopped reading too
        slow.release()
        await writer.drain()
        await eventually(lambda: len(slow.received) >= written, "the agent got everything", timeout=30)
        assert len(slow.received) == written
        assert bytes(slow.received[: len(blob)]) == blob and bytes(slow.received[-len(blob) :]) == blob
        writer.close()
        await writer.wait_closed()
        del reader
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.asyncio
async def test_a_session_handed_to_another_proxy_continues_unnoticed(stand: Stand) -> None:
    """The hand-over path: the shim's socket and the session state move to a new proxy (daemon)."""
    fwd, port = await stand.forwarder()
    old = await stand.proxy(port)
    caller = Caller(await stand.client(old))
    caller.call(20)
    await caller.settle()
    (agent_conn,) = stand.agent._conns
    caller.call(30)  # some of these are in flight during the move
    released = await old.release_sessions()
    assert len(released) == 1
    caller.call(10)  # written while no process serves the shim's connection: waits in the kernel
    await old.aclose()
    new = await stand.proxy(port)
    for sock, state in released:
        await new.adopt(sock, state)
    caller.call(30)
    await caller.settle()
    caller.check_agent(stand.agent)
    assert stand.agent._conns == {agent_conn}
    assert new.stats.resumes == 1 and len(new.relays) == 1  # adopted: its first link was a resume
    assert fwd.sessions is not None and len(fwd.sessions) == 1


async def _raw_resume_link(stand: Stand, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TLS connection that agreed on the resumable channel, with nothing sent yet."""
    ctx = stand.tls.client_context(resumable=True)
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=INSTANCE)
    assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == ALPN
    return reader, writer


@pytest.mark.asyncio
async def test_bad_and_unknown_hellos_are_refused_and_the_forwarder_keeps_serving(stand: Stand) -> None:
    fwd, port = await stand.forwarder()
    reader, writer = await _raw_resume_link(stand, port)
    writer.write(b"GET / HTTP/1.1\r\n\r\n")  # not a hello
    welcome = WelcomeReader().feed(await reader.readexactly(WELCOME_LEN))
    assert welcome is not None and welcome[0].status is Status.BAD_HELLO
    assert await reader.read() == b""  # and closed
    writer.close()

    reader, writer = await _raw_resume_link(stand, port)
    writer.write(encode_hello(Hello(Kind.RESUME, new_session_id(), 123)))  # a session it never had
    welcome = WelcomeReader().feed(await reader.readexactly(WELCOME_LEN))
    assert welcome is not None and welcome[0].status is Status.UNKNOWN_SESSION
    assert await reader.read() == b""
    writer.close()

    proxy = await stand.proxy(port)  # still serving
    caller = Caller(await stand.client(proxy))
    caller.call(5)
    await caller.settle()
    caller.check_agent(stand.agent)
    assert fwd.sessions is not None and len(fwd.sessions) == 1


@pytest.mark.asyncio
async def test_a_resume_beyond_what_the_forwarder_sent_ends_that_session_only(stand: Stand) -> None:
    _, port = await stand.forwarder()
    proxy = await stand.proxy(port)
    caller = Caller(await stand.client(proxy))
    caller.call(3)
    await caller.settle()
    (relay,) = proxy.relays
    sid = relay.session.session_id
    reader, writer = await _raw_resume_link(stand, port)
    # Someone claims to have received more than the forwarder ever sent: refused, session ended.
    writer.write(encode_hello(Hello(Kind.RESUME, sid, relay.session.received + 10_000)))
    welcome = WelcomeReader().feed(await reader.readexactly(WELCOME_LEN))
    assert welcome is not None and welcome[0].status is Status.CANNOT_RESUME
    writer.close()
    await eventually(lambda: not stand.agent._conns, "the session's agent connection closed")
    async with asyncio.timeout(10):
        await caller.client.closed  # its shim connection is closed, as without resumability


@pytest.mark.asyncio
async def test_a_resume_that_gets_no_answer_is_retried(stand: Stand) -> None:
    """A link that completes TLS but never answers the hello (a wedged listener) is dropped and redialled."""
    fwd, port = await stand.forwarder()
    proxy = await stand.proxy(port)
    caller = Caller(await stand.client(proxy))
    caller.call(5)
    await caller.settle()
    fields = stand.tls.apf_tls_fields(INSTANCE)
    mute_ctx = make_server_context(
        server=CertKeyPair(fields["tls-server-cert"].encode(), fields["tls-server-key"].encode()),
        client_ca_pem=fields["tls-client-ca"].encode(),
        profile=None,
    )
    mute_ctx.set_alpn_protocols([ALPN])
    held: list[asyncio.StreamWriter] = []

    async def mute(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        held.append(w)  # agrees to resume, then never says a word

    down = asyncio.ensure_future(fwd.restart_listener(down_for=4.0))
    server: asyncio.Server | None = None
    try:
        await eventually(lambda: fwd._server is None, "the forwarder stopped listening")
        server = await asyncio.start_server(mute, "127.0.0.1", port, ssl=mute_ctx, reuse_address=True)
        caller.call(10)  # waiting in the replay buffer
        await eventually(lambda: held, "the proxy reached the mute listener")
        server.close()  # stops listening; the connection it holds stays open and silent
        await down
        await caller.settle(timeout=30)
    finally:
        for w in held:
            w.transport.abort()
        down.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await down
        if server is not None:
            server.close()
    caller.check_agent(stand.agent)
    assert len(stand.agent._conns) == 1
