"""An agent proxy's resumable sessions: one ``ResumableRelay`` per shim connection, kept linked.

Split from ``agent_proxy`` (which listens, accepts and dials): here a shim
connection becomes a session, gets a link to the forwarder and a new one after
every drop (within the resume window), falls back to a plain relay when the
forwarder does not offer resumability, and is handed over or adopted across
daemons.  With an fd-keeper, the connection the session serves is our end of a
pair the keeper relays to the shim (``agent_keeper``), so that a crash of this
process loses no byte (docs/survival.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloud_api_adaptor.aio import TaskSupervisor
from cloud_api_adaptor.errors import FailedPrecondition
from cloud_api_adaptor.proxy.agent_keeper import KeeperReports
from cloud_api_adaptor.proxy.dialer import DialFailed
from cloud_api_adaptor.transport.custody import (
    InheritedConnection,
    SocketCustody,
    session_meta,
    session_state,
)
from cloud_api_adaptor.transport.pump import Pipe, PumpStats
from cloud_api_adaptor.transport.resumable import ResumableRelay
from cloud_api_adaptor.transport.resume import ALPN, ResumeError, Session, SessionState, new_session_id

logger = logging.getLogger("cloud_api_adaptor.proxy.agent_proxy")


@dataclass
class ProxyStats(PumpStats):
    """Counters for later metrics."""

    connections_total: int = 0
    """Shim connections accepted."""
    connections_active: int = 0
    upstream_dials: int = 0
    """Upstream connections established (the readiness dial included)."""
    upstream_failures: int = 0
    """Failed upstream connect attempts."""
    resumes: int = 0
    """Resumable sessions continued on a new link."""


class ResumableSessions:
    """The session half of ``AgentProxy`` (a mixin: the proxy provides the attributes below)."""

    socket_path: Path
    stats: ProxyStats
    relays: set[ResumableRelay]
    _custody: SocketCustody | None
    _keys: dict[Pipe | ResumableRelay, str]
    #: sessions (and plain relays after a fall-back) whose shim connection the keeper relays
    _reports: dict[ResumableRelay, KeeperReports]
    _relayed_downs: set[Pipe]
    _tasks: TaskSupervisor
    _spare: Pipe | None
    _pipes: set[Pipe]
    _detaching: bool
    _resume_window: float
    _resume_keepalive: float
    _resume_dead_after: float
    _dial_timeout: float
    _addr: tuple[str, int] | None

    async def _dial(self, deadline: float, stop: asyncio.Future[Any] | None = None) -> Pipe:
        raise NotImplementedError

    def _forget(self, pipe: Pipe, *, counted: bool = False) -> None:
        raise NotImplementedError

    def _join(self, down: Pipe, up: Pipe) -> None:
        raise NotImplementedError

    # -- through the keeper ---------------------------------------------------------

    def _through_keeper(
        self, sock: socket.socket, key: str, state: SessionState, opened: bool, outbox: bytes = b""
    ) -> socket.socket | None:
        """Let the keeper relay ``sock`` (closed here if it does): our end of the pair, or None."""
        custody = self._custody
        if custody is None or not custody.relays:
            return None
        ours = custody.relay_connection(
            self.socket_path, sock, key, session_meta(state, opened), state.unacked, outbox
        )
        if ours is None:
            return None
        sock.close()
        ours.setblocking(False)
        return ours

    async def _serve_resumable(self, sock: socket.socket) -> None:
        """A shim connection just accepted: a new session, through the keeper if there is one."""
        session = Session(new_session_id())
        key = f"C:{session.session_id.hex()}"
        ours = self._through_keeper(sock, key, session.snapshot(), opened=False)
        protocol = self._accept_resumable(session, key, relayed=ours is not None)
        await self._connect(protocol, ours or sock)

    async def _connect(self, protocol: asyncio.BaseProtocol, sock: socket.socket) -> None:
        try:
            await asyncio.get_running_loop().connect_accepted_socket(lambda: protocol, sock)
        except BaseException:
            sock.close()
            raise

    # -- adopting what a previous daemon (or the keeper) passed ------------------------

    async def _adopt_resumable(self, conn: InheritedConnection) -> None:
        """Continue a passed session (or start one on a passed connection that has none).

        ``conn.relayed``: the keeper handed us a new pair with the session's exact
        state after a restart (a crash included).  Otherwise the real shim
        connection came by a hand-over: it goes through our keeper from now on.
        """
        if conn.session is not None:
            state = session_state(conn.session, bytes(conn.prefix))
            opened = bool(conn.session.get("opened", True))
        else:  # kept hold-only, or plain: a new session with the bytes read and not relayed
            fresh = Session(new_session_id())
            if conn.prefix:
                fresh.send(bytes(conn.prefix))
            state, opened = fresh.snapshot(), False
        sock, relayed, outbox = conn.sock, conn.relayed, bytes(conn.outbox)
        if not relayed:
            ours = self._through_keeper(sock, conn.key, state, opened, outbox)
            if ours is not None:
                sock, relayed, outbox = ours, True, b""  # the keeper writes the outbox first
        relay = self._new_relay(Session.restore(state), opened=opened, key=conn.key, relayed=relayed)
        await self._connect(relay.local, sock)
        if outbox and relay.local.transport is not None:
            relay.local.transport.write(outbox)
        self._tasks.spawn(
            self._keep_linked(relay, None, opened=opened), name=f"agent-proxy-session {relay.name}"
        )
        logger.info(
            "agent proxy %s: took over a shim connection (%s, %s%s)",
            self.socket_path,
            conn.key,
            "session resumed" if opened else "new session",
            ", relayed by the fd-keeper" if relayed else "",
        )

    async def adopt(self, sock: socket.socket, state: SessionState, key: str | None = None) -> None:
        """Continue a session handed over by ``release_sessions`` (of another process) on ``sock``."""
        if self._resume_window <= 0 or self._addr is None:
            raise FailedPrecondition(f"agent proxy {self.socket_path} cannot resume sessions")
        relay = self._new_relay(Session.restore(state), opened=True, key=key)
        await self._connect(relay.local, sock)
        self._tasks.spawn(
            self._keep_linked(relay, None, opened=True), name=f"agent-proxy-session {relay.name}"
        )

    # -- handing over ------------------------------------------------------------------

    async def release_sessions(self) -> list[tuple[socket.socket, SessionState]]:
        """Hand every resumable shim connection over (see ``ResumableRelay.release``).

        For a daemon hand-over: the new daemon ``adopt``s each pair; the forwarder
        keeps the sessions meanwhile, so neither the shim nor the agent notices.
        """
        released = []
        for relay in list(self.relays):
            try:
                released.append(await relay.release())
            except (ResumeError, TimeoutError) as exc:
                logger.warning(
                    "agent proxy %s: session %s not handed over: %s", self.socket_path, relay.name, exc
                )
        return released

    async def _release(self, relay: ResumableRelay, reclaim: bool) -> InheritedConnection | None:
        """A session stopped at a consistent point (``ResumableRelay.release``) to pass on.

        The forwarder keeps its half and its agent connection for the resume
        window.  A session the keeper relays: the keeper learns the last
        acknowledgement and keeps the shim's connection for the next daemon
        (a restart: the same path as a crash), or gives it back (``reclaim``:
        a hand-over to another daemon and its own keeper).
        """
        key = self._keys.get(relay) or f"C:{relay.name}"
        opened = relay.hello_sent  # the forwarder knows the session: the next daemon resumes it
        reports = self._reports.get(relay)
        try:
            sock, state = await relay.release()
        except (ResumeError, TimeoutError) as exc:
            logger.warning(
                "agent proxy %s: session %s not handed over: %s", self.socket_path, relay.name, exc
            )
            return None
        path = os.fspath(self.socket_path)
        if reports is None or self._custody is None:
            return InheritedConnection(key, path, sock, bytearray(state.unacked), session_meta(state, opened))
        self._custody.report("acked", key, acked=state.acked)
        sock.close()  # our end of the pair: the keeper drains it to EOF
        if not reclaim:
            return None
        return await asyncio.to_thread(self._custody.reclaim, key, state.acked)

    async def _reclaim_plain(self, down: Pipe, reclaim: bool) -> InheritedConnection | None:
        """A plain relay (after a fall-back) through the keeper: let go of it, or take it back."""
        key = self._keys.get(down)
        held = down.take_held()
        if down.transport is not None:
            down.transport.abort()  # our end of the pair
        if not reclaim or key is None or self._custody is None:
            return None
        conn = await asyncio.to_thread(self._custody.reclaim, key, 0)
        if conn is not None:
            conn.prefix[:0] = held  # read from the pair before what the keeper still held
        return conn

    # -- sessions ------------------------------------------------------------------------

    def _accept_resumable(
        self, session: Session | None = None, key: str | None = None, *, relayed: bool = False
    ) -> asyncio.BaseProtocol:
        """A shim connection on a new session (``session``: one holding bytes a previous daemon read)."""
        relay = self._new_relay(session or Session(new_session_id()), key=key, relayed=relayed)
        spare, self._spare = self._spare, None
        self._tasks.spawn(self._keep_linked(relay, spare), name=f"agent-proxy-session {relay.name}")
        return relay.local

    def _new_relay(
        self, session: Session, *, opened: bool = False, key: str | None = None, relayed: bool = False
    ) -> ResumableRelay:
        relay = ResumableRelay(
            session,
            client=True,
            stats=self.stats,
            keepalive=self._resume_keepalive,
            dead_after=self._resume_dead_after,
            open_timeout=self._dial_timeout,
            opened=opened,
        )
        self.stats.connections_total += 1
        self.stats.connections_active += 1
        self.relays.add(relay)

        def forget(_f: object) -> None:
            self.relays.discard(relay)
            self._reports.pop(relay, None)
            self.stats.connections_active -= 1
            relay_key = self._keys.pop(relay, None)
            if relay_key is not None and self._custody is not None and not self._detaching:
                self._custody.release_connection(relay_key)

        relay.ended.add_done_callback(forget)
        if relayed and key is not None and self._custody is not None:
            self._keys[relay] = key
            self._reports[relay] = KeeperReports(self._custody, key, relay)
        elif self._custody is not None:
            self._tasks.spawn(self._keep_relay(relay, key), name=f"agent-proxy-keep {relay.name}")
        return relay

    async def _keep_relay(self, relay: ResumableRelay, key: str | None) -> None:
        """Register a resumable shim connection with the keeper (hold-only) once its transport exists."""
        for _ in range(100):
            if relay.local.transport is not None or relay.ended.done():
                break
            await asyncio.sleep(0)
        t = relay.local.transport
        sock = t.get_extra_info("socket") if t is not None else None
        if sock is None or relay.ended.done() or self._custody is None:
            return
        self._keys[relay] = self._custody.keep_connection(self.socket_path, sock.fileno(), key)

    async def _keep_linked(self, relay: ResumableRelay, first: Pipe | None, *, opened: bool = False) -> None:
        """Give the session a link, and a new one after every drop, until it ends."""
        loop = asyncio.get_running_loop()
        ended = relay.ended
        try:
            while not ended.done():
                await _first_of(relay.link_lost.wait(), ended)
                if ended.done():
                    return
                deadline = loop.time() + (self._resume_window if opened else self._dial_timeout)
                if opened:
                    logger.info("agent proxy %s: resuming session %s", self.socket_path, relay.name)
                while not relay.link_up.is_set() and not ended.done():
                    if first is not None and first.is_alive:
                        up, first = first, None
                    else:
                        if first is not None:
                            first.close()
                            first = None
                        try:
                            up = await self._dial(deadline, stop=ended)
                        except DialFailed as exc:
                            relay.end(
                                f"cannot reach the forwarder at {self._addr}: "
                                f"{describe(exc.last) if exc.last else 'timeout'}"
                                + (f" (resume window {self._resume_window:g} s passed)" if opened else "")
                            )
                            return
                    assert up.transport is not None
                    if not resumes(up):
                        if opened:
                            up.close()
                            relay.end("the forwarder no longer offers a resumable channel")
                        else:
                            self._fall_back(relay, up)
                        return
                    reports = self._reports.get(relay)
                    if reports is not None and not relay.hello_sent:
                        reports.opened()
                    link_ = relay.attach_client(up.transport)
                    if await link_.settled:
                        if opened:
                            self.stats.resumes += 1
                            logger.info("agent proxy %s: session %s resumed", self.socket_path, relay.name)
                        opened = True
        finally:
            if first is not None:
                first.close()

    def _fall_back(self, relay: ResumableRelay, up: Pipe) -> None:
        """The forwarder does not offer resumability: relay this shim connection plainly."""
        key = self._keys.pop(relay, None)  # the connection lives on as the plain relay below
        reports = self._reports.pop(relay, None)
        lt, sent, eof = relay.release_local()
        if lt is None or lt.is_closing():
            up.close()
            return
        down = Pipe(self.stats, downstream=True)
        lt.set_protocol(down)
        down.connection_made(lt)
        self.stats.connections_active += 1  # the relay's forget() counted this connection out
        self._pipes.add(down)
        if key is not None:
            self._keys[down] = key
        if reports is not None:
            reports.plain()
            self._relayed_downs.add(down)
        down.closed.add_done_callback(lambda _f: self._forget(down, counted=True))
        if sent and up.transport is not None:
            up.transport.write(sent)
        if eof:
            down.eof_received()
        self._join(down, up)


def describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "connection attempt timed out"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"tls: failed to verify certificate: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"tls: {exc.reason or exc}"
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.strerror or os.strerror(exc.errno).lower()
    return str(exc) or type(exc).__name__


def resumes(pipe: Pipe) -> bool:
    """The dialled connection agreed on the resumable channel (ALPN)."""
    t = pipe.transport
    ssl_object = None if t is None else t.get_extra_info("ssl_object")
    return ssl_object is not None and ssl_object.selected_alpn_protocol() == ALPN


async def _first_of(wait: Coroutine[Any, Any, Any], future: asyncio.Future[Any]) -> None:
    task = asyncio.ensure_future(wait)
    try:
        await asyncio.wait([task, future], return_when=asyncio.FIRST_COMPLETED)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def flushed(pipes: set[Pipe], grace: float) -> None:
    """Wait (bounded) until no transport of ``pipes`` has bytes left in its write buffer."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while loop.time() < deadline:
        busy = [p for p in pipes if p.transport is not None and not p.transport.is_closing()]
        if not any(p.transport.get_write_buffer_size() for p in busy if p.transport is not None):
            return
        await asyncio.sleep(0.01)
