"""The forwarder's resumable sessions: one agent connection per session, kept across link drops.

The real kata-agent removes its own socket during CreateSandbox, so the
forwarder can never open a second connection to it: a session's agent
connection is dialled once, when the worker opens the session (hello NEW), and
held until the session ends.  A link that drops leaves the session waiting for a
hello RESUME for ``window`` seconds; after that the agent connection is closed,
as a plain relay would have closed it at once.

``AlpnDispatch`` is the listener's protocol factory product: once TLS is done it
looks at the ALPN protocol the worker agreed to and hands the connection either
to the plain relay (``pump.Pipe``, unchanged) or to ``ResumableSessions``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, cast

from cloud_api_adaptor.aio import TaskSupervisor
from cloud_api_adaptor.transport.pump import Filter, Pipe, PumpStats
from cloud_api_adaptor.transport.resumable import ResumableRelay
from cloud_api_adaptor.transport.resume import (
    ALPN,
    Hello,
    HelloReader,
    Kind,
    ResumeError,
    Session,
    Status,
    Welcome,
    encode_welcome,
)

logger = logging.getLogger(__name__)

AgentDialer = Callable[[Callable[[], asyncio.BaseProtocol], asyncio.Future[str]], Awaitable[bool]]


def negotiated_resume(transport: asyncio.BaseTransport) -> bool:
    """True when the TLS handshake agreed on ``transport.resume.ALPN``."""
    ssl_object = transport.get_extra_info("ssl_object")
    return ssl_object is not None and ssl_object.selected_alpn_protocol() == ALPN


class AlpnDispatch(asyncio.Protocol):
    """Hands an accepted connection to the plain relay or to the resumable sessions."""

    def __init__(self, sessions: ResumableSessions, plain: Callable[[], Pipe]) -> None:
        self._sessions = sessions
        self._plain = plain

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if negotiated_resume(transport):
            proto: asyncio.BaseProtocol = _HelloWait(self._sessions)
        else:
            proto = self._plain()
        transport.set_protocol(proto)
        proto.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        pass


class _HelloWait(asyncio.Protocol):
    """A resumable link before its hello: read it, then let the session table decide."""

    def __init__(self, sessions: ResumableSessions) -> None:
        self._sessions = sessions
        self._reader = HelloReader()
        self._transport: asyncio.Transport | None = None
        self._done = False
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        # A peer that agreed to ALPN but never says hello is not kept forever.
        self._timer = asyncio.get_running_loop().call_later(30.0, self._transport.abort)

    def data_received(self, data: bytes) -> None:
        if self._done:
            return
        t = self._transport
        assert t is not None
        try:
            got = self._reader.feed(data)
        except ResumeError as exc:
            logger.warning("resumable link: bad hello: %s", exc)
            self._finish()
            t.write(encode_welcome(Welcome(Status.BAD_HELLO, 0)))
            t.close()
            return
        if got is None:
            return
        self._finish()
        t.pause_reading()
        self._sessions.hello(t, *got)

    def _finish(self) -> None:
        self._done = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish()


class ResumableSessions:
    """The forwarder's table of resumable sessions (session id -> relay)."""

    def __init__(
        self,
        tasks: TaskSupervisor,
        stats: PumpStats,
        *,
        connect_agent: AgentDialer,
        new_filter: Callable[[], Filter],
        window: float,
        keepalive: float,
        dead_after: float,
    ) -> None:
        self._tasks = tasks
        self._stats = stats
        self._connect_agent = connect_agent
        self._new_filter = new_filter
        self._window = window
        self._keepalive = keepalive
        self._dead_after = dead_after
        self._relays: dict[bytes, ResumableRelay] = {}
        self._opening: dict[bytes, tuple[asyncio.Transport, Hello, bytes]] = {}
        """The latest link of each session whose agent dial is still under way."""

    def __len__(self) -> int:
        return len(self._relays)

    def get(self, session_id: bytes) -> ResumableRelay | None:
        return self._relays.get(session_id)

    def hello(self, transport: asyncio.Transport, hello: Hello, rest: bytes) -> None:
        relay = self._relays.get(hello.session_id)
        if hello.kind is Kind.NEW:
            if relay is not None:
                self._refuse(transport, Status.BUSY)
                return
            relay = ResumableRelay(
                Session(hello.session_id),
                client=False,
                filter=self._new_filter(),
                stats=self._stats,
                keepalive=self._keepalive,
                dead_after=self._dead_after,
            )
            self._relays[hello.session_id] = relay
            relay.ended.add_done_callback(lambda _f: self._forget(hello.session_id, relay))
            self._tasks.spawn(self._open(relay, transport, hello, rest), name=f"session-open {relay.name}")
            return
        if relay is None:
            logger.info("resume of unknown session %s refused", hello.session_id.hex()[:12])
            self._refuse(transport, Status.UNKNOWN_SESSION)
            return
        if relay.local.transport is None:
            # Still dialling the agent for this session: the link is taken once it answers.
            old = self._opening.get(hello.session_id)
            if old is not None:
                old[0].abort()
            self._opening[hello.session_id] = (transport, hello, rest)
            return
        relay.attach_server(transport, hello, rest)
        transport.resume_reading()
        logger.info("agent channel %s resumed", relay.name)

    @staticmethod
    def _refuse(transport: asyncio.Transport, status: Status) -> None:
        transport.write(encode_welcome(Welcome(status, 0)))
        transport.close()

    def _forget(self, session_id: bytes, relay: ResumableRelay) -> None:
        if self._relays.get(session_id) is relay:
            del self._relays[session_id]

    async def _open(
        self, relay: ResumableRelay, transport: asyncio.Transport, hello: Hello, rest: bytes
    ) -> None:
        """Dial the agent (once, for the session's life), then welcome the worker."""
        sid = hello.session_id
        self._opening[sid] = (transport, hello, rest)
        try:
            reached = await self._connect_agent(lambda: relay.local, relay.ended)
        finally:
            transport, hello, rest = self._opening.pop(sid, (transport, hello, rest))
        if not reached:
            self._refuse(transport, Status.UNKNOWN_SESSION)
            relay.end("the kata-agent socket is not reachable")
            return
        if transport.is_closing():
            # The link dropped while we dialled: the session waits for a resume like any other.
            relay.session.detach()
        else:
            relay.attach_server(transport, hello, rest)
            transport.resume_reading()
        self._tasks.spawn(self._expire(relay), name=f"session-window {relay.name}")

    async def _expire(self, relay: ResumableRelay) -> None:
        """End the session once it has been without a link for ``window`` seconds."""
        while not relay.ended.done():
            await _first_of(relay.link_lost.wait(), relay.ended)
            if relay.ended.done():
                return
            if not await _first_of(relay.link_up.wait(), relay.ended, timeout=self._window):
                relay.end(f"not resumed within {self._window:g} s")

    def drop_links(self) -> None:
        """Abort every session's link (the sessions wait for a resume)."""
        for relay in list(self._relays.values()):
            link = relay.link
            if link is not None and link.transport is not None:
                link.transport.abort()

    async def aclose(self) -> None:
        relays = list(self._relays.values())
        for relay in relays:
            relay.finish("forwarder stopping")  # the worker closes the shim's connection at once
        if relays:
            await asyncio.wait([r.ended for r in relays], timeout=5.0)


async def _first_of(
    wait: Coroutine[Any, Any, Any], future: asyncio.Future[Any], timeout: float | None = None
) -> bool:
    """Wait for the coroutine or the future, at most ``timeout``; False if neither finished."""
    task: asyncio.Future[Any] = asyncio.ensure_future(wait)
    try:
        done, _ = await asyncio.wait([task, future], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return bool(done)
