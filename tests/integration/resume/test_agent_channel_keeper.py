"""The resumable agent channel with an fd-keeper relaying the shim's connection (in-process keeper).

A proxy that vanishes without a word (as a ``kill -9`` leaves it: no release, no
FIN, no report) is replaced by a new one that resumes the session exactly from
the keeper's counters: the client sees no EOF, every call one correct reply,
the agent every request once, in order, on its one connection.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud_api_adaptor.fdkeeper import FdKeeper
from cloud_api_adaptor.proxy.agent_proxy import AgentChannel, AgentProxy
from cloud_api_adaptor.proxy.testing import StubClient
from cloud_api_adaptor.testing.eventually import eventually
from cloud_api_adaptor.testing.keeper import keeper_in_thread
from cloud_api_adaptor.transport.custody import SocketCustody
from cloud_api_adaptor.transport.keeper_link import open_keeper
from cloud_api_adaptor.transport.resume import Session, new_session_id

from .test_agent_channel_resume import INSTANCE, Caller, Stand, _echo, stand

__all__ = ["stand"]


@pytest.fixture
def keeper(short_tmp: Path) -> Iterator[FdKeeper]:
    with keeper_in_thread(short_tmp / "keeper.sock") as fdk:
        yield fdk


async def kept_proxy(stand: Stand, keeper: FdKeeper, port: int) -> tuple[AgentProxy, SocketCustody]:
    link, inventory = await asyncio.to_thread(open_keeper, keeper.path, 1.0)
    assert link is not None
    custody = SocketCustody(inventory, link)
    channel = AgentChannel(stand.tls, dial_timeout=10, resume_window=30, custody=custody)
    proxy = channel.new_proxy(stand.root / "sb" / "agent.ttrpc", INSTANCE)
    proxy._resume_keepalive, proxy._resume_dead_after = 0.2, 2.0
    stand.proxies.append(proxy)
    if inventory.listeners:
        await proxy.restore("127.0.0.1", port)
    else:
        await proxy.start("127.0.0.1", port, timeout=10)
    return proxy, custody


async def vanish(proxy: AgentProxy, custody: SocketCustody) -> None:
    """What a kill -9 leaves: every descriptor of the proxy closes, nothing is said to anyone."""
    custody.forget_keeper()  # the keeper's control connection closes first: no drop reaches it
    proxy._closed = True  # nor is the socket file removed: a dead process unlinks nothing
    for relay in list(proxy.relays):
        for t in (relay.link.transport if relay.link else None, relay.local.transport):
            if t is not None:
                t.abort()
    await proxy._stop_accepting(close=True)
    await proxy._tasks.aclose()


@pytest.mark.asyncio
async def test_a_vanished_proxy_s_session_resumes_exactly_through_the_keeper(
    stand: Stand, keeper: FdKeeper
) -> None:
    fwd, port = await stand.forwarder()
    first, custody = await kept_proxy(stand, keeper, port)
    caller = Caller(await stand.client(first))
    caller.call(20)
    await caller.settle()
    (agent_conn,) = stand.agent._conns
    assert [r.key for r in keeper.relays] == [next(iter(first._keys.values()))]
    caller.call(30)  # some of these are in flight when the proxy vanishes
    await vanish(first, custody)
    caller.call(10)  # written while no proxy serves the shim: the keeper holds them
    second, custody2 = await kept_proxy(stand, keeper, port)
    await eventually(lambda: second.stats.resumes == 1, "the session to resume")
    caller.call(30)
    await caller.settle()
    caller.check_agent(stand.agent)
    assert stand.agent._conns == {agent_conn}  # the agent's one connection: never a second
    assert fwd.sessions is not None and len(fwd.sessions) == 1
    custody.close()  # the vanished proxy's duplicates (its process would have taken them along)
    custody2.close()


@pytest.mark.asyncio
async def test_a_session_the_forwarder_never_heard_of_is_opened_anew(stand: Stand) -> None:
    """A crash between telling the keeper "opened" and the hello: nothing was exchanged, so open it."""
    _, port = await stand.forwarder()
    proxy = await stand.proxy(port)
    shim, ours = socket.socketpair()
    ours.setblocking(False)
    state = Session(new_session_id()).snapshot()
    await proxy.adopt(ours, state)  # opened=True: the first link says RESUME
    _, client = await asyncio.get_running_loop().create_connection(StubClient, sock=shim)
    stand.clients.append(client)
    reply = await asyncio.wait_for(client.send_request(_echo(b"hello")), 10)
    assert reply.payload == b"hello"
    assert not client.closed.done()
