"""The worker side of the agent channel: one unix socket per sandbox, relayed to the VM's forwarder.

Kata's shim speaks ttrpc to ``<pods-dir>/<sandbox>/agent.ttrpc``; each connection
accepted there is relayed, byte for byte, to its own (m)TLS connection to the
pod VM's agent-protocol-forwarder.

Why protocol-blind: parsing every frame on the worker would put a decode and an
encode on the hot path of every agent call (Health checks, ReadStdout
long-polls, WriteStdin, CopyFile chunks).  The VM-side forwarder works at the
frame level for the calls it must change, so the worker stays a lean pump;
worker-side rewriting (CSI volume paths, GPU annotations) can be added as a
``pump.Filter`` on the downstream pipe without changing this module's shape.

How it dials and reconnects:
- readiness dials are staggered (``dialer.StaggeredDialer``): a new attempt
  every ``retry_interval`` (50 ms) even while earlier ones are pending, the
  first to finish TCP and TLS wins.  50 ms because StartVM should return
  within 100 ms of the forwarder accepting, and the wait for the next attempt
  plus the handshake must fit in that; the price is about twenty refused
  connects per second per booting VM.  In-flight attempts (10) times the
  interval covers the attempt timeout (0.5 s), so attempts stay 50 ms apart
  even when every SYN is dropped;
- the first connection is kept and handed to the first shim connection, so the
  TLS handshake done for readiness is not wasted;
- every shim connection gets its own upstream connection, so after the VM
  connection drops a new shim connection reconnects;
- ``restore`` re-creates the listener after a daemon restart without waiting.

Sockets that outlive the daemon (``transport.custody``): with a custody, the
listener and each accepted shim connection are registered with the fd-keeper,
a listener and connections passed by a previous daemon are taken over instead
of binding anew, and ``detach`` lets the daemon go away without the shim seeing
it (no unlink, no EOF): see docs/survival.md.

Resumable channel (``resume_window`` > 0, TLS on): when the forwarder agrees by
ALPN, a shim connection is a ``transport.resumable.ResumableRelay`` instead of
a plain pump.  A dropped link is redialled with the same staggered dialer and
the session resumed, for up to ``resume_window`` seconds from the drop; beyond
that the shim connection is closed as without resumability.  A forwarder that
does not offer it (the Go forwarder, ours with resume off) gets the plain relay:
the bytes the shim sent meanwhile go first.
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
from cloud_api_adaptor.errors import DeadlineExceeded, FailedPrecondition
from cloud_api_adaptor.proxy.dialer import DialFailed, Handshake, StaggeredDialer
from cloud_api_adaptor.proxy.tls import AgentTls
from cloud_api_adaptor.transport.custody import (
    InheritedConnection,
    SocketCustody,
    session_meta,
    session_state,
)
from cloud_api_adaptor.transport.pump import Pipe, PumpStats, close_pipes, link
from cloud_api_adaptor.transport.resumable import ResumableRelay
from cloud_api_adaptor.transport.resume import ALPN, ResumeError, Session, SessionState, new_session_id

logger = logging.getLogger(__name__)

SOCKET_NAME = "agent.ttrpc"


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


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "connection attempt timed out"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"tls: failed to verify certificate: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"tls: {exc.reason or exc}"
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.strerror or os.strerror(exc.errno).lower()
    return str(exc) or type(exc).__name__


class AgentProxy:
    """One sandbox's agent socket; ``start`` returns once the forwarder is reachable."""

    def __init__(
        self,
        socket_path: Path,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        *,
        dial_timeout: float = 300.0,
        retry_interval: float = 0.05,
        connect_attempt_timeout: float = 0.5,
        handshake_timeout: float = 10.0,
        max_attempts_in_flight: int = 10,
        resume_window: float = 0.0,
        resume_keepalive: float = 1.0,
        resume_dead_after: float = 5.0,
        custody: SocketCustody | None = None,
    ) -> None:
        self.socket_path = socket_path
        self._custody = custody
        #: the keeper key of each accepted shim connection
        self._keys: dict[Pipe | ResumableRelay, str] = {}
        self._downs: set[Pipe] = set()
        self._detaching = False
        self._ssl = ssl_context
        self._resume_window = resume_window if ssl_context is not None else 0.0
        self._resume_keepalive = resume_keepalive
        self._resume_dead_after = resume_dead_after
        if self._resume_window > 0 and ssl_context is not None:
            ssl_context.set_alpn_protocols([ALPN])
        self._server_hostname = server_hostname if ssl_context is not None else None
        self._dial_timeout = dial_timeout
        self._attempt_timeout = connect_attempt_timeout
        self._handshake_timeout = handshake_timeout
        self._dialer = StaggeredDialer(
            self._connect_once,
            close=Pipe.close,
            interval=retry_interval,
            max_in_flight=max_attempts_in_flight,
            retryable=(OSError, ssl.SSLError, TimeoutError, ConnectionError),
            on_failure=self._note_failure,
            name=f"agent-proxy-attempt {socket_path}",
        )
        self.stats = ProxyStats()
        self._server: asyncio.AbstractServer | None = None
        self._addr: tuple[str, int] | None = None
        self._spare: Pipe | None = None
        self._pipes: set[Pipe] = set()
        self.relays: set[ResumableRelay] = set()
        """The live resumable sessions (one per shim connection)."""
        self._tasks = TaskSupervisor(f"agent-proxy {socket_path}")
        self._closed = False
        self._listening = False

    def __repr__(self) -> str:
        return f"AgentProxy({str(self.socket_path)!r}, upstream={self._addr}, tls={self._ssl is not None})"

    @property
    def is_listening(self) -> bool:
        return self._listening

    # -- lifecycle ------------------------------------------------------------

    async def start(self, host: str, port: int, timeout: float) -> None:
        """Listen, then dial the forwarder until it answers or ``timeout`` passes.

        On timeout (or cancellation) the listener is closed and the socket removed.
        """
        await self._listen(host, port)
        loop = asyncio.get_running_loop()
        try:
            pipe = await self._dial(loop.time() + timeout)
        except DialFailed as exc:
            await self._stop_listening()
            raise DeadlineExceeded(
                f"failed to establish agent proxy connection to {host}:{port}: "
                f"{_describe(exc.last) if exc.last else 'timeout'}"
            ) from exc.last
        except BaseException:
            await self._stop_listening()
            raise
        if self._closed:
            pipe.close()
            return
        self._spare = pipe
        logger.info("agent proxy %s connected to %s:%d", self.socket_path, host, port)

    async def restore(self, host: str, port: int) -> None:
        """Listen again after a daemon restart; each shim connection dials on demand."""
        await self._listen(host, port)
        logger.info("agent proxy %s restored (upstream %s:%d)", self.socket_path, host, port)

    async def aclose(self) -> None:
        """Stop listening, remove the socket, close every relay; idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._stop_listening()
        spare, self._spare = self._spare, None
        if spare is not None:
            spare.close()
        for relay in list(self.relays):
            relay.end("agent proxy closing")
        await self._tasks.aclose()
        await close_pipes(self._pipes)

    async def detach(self, grace: float = 2.0) -> list[InheritedConnection]:
        """Go away without the shim noticing: stop accepting, keep the socket file, no EOF.

        Reading from the shim stops, what was already read is flushed to the
        forwarder and what came back is flushed to the shim (within ``grace``),
        then each shim connection is returned as a duplicate descriptor with
        anything still held for it, for the next daemon (the listener itself
        is in the custody's hands).  Answers the forwarder sends after this are
        lost unless the agent channel resumes its session (a plain relay
        cannot: the next daemon opens a new upstream connection).
        """
        if self._closed:
            return []
        self._closed = True
        self._detaching = True
        server, self._server = self._server, None
        self._listening = False
        if server is not None:
            server.close()
        handed = [conn for conn in [await self._release(r) for r in list(self.relays)] if conn is not None]
        downs = list(self._downs)
        for down in downs:
            if down.transport is not None and not down.transport.is_closing():
                down.transport.pause_reading()
        await _flushed(self._pipes, grace)
        for down in downs:
            t = down.transport
            sock = t.get_extra_info("socket") if t is not None else None
            if t is None or t.is_closing() or sock is None or down.closed.done():
                continue
            key = self._keys.get(down) or f"C:{id(down):x}"
            dup = socket.socket(fileno=os.dup(sock.fileno()))
            handed.append(
                InheritedConnection(key, os.fspath(self.socket_path), dup, bytearray(down.take_held()))
            )
        spare, self._spare = self._spare, None
        if spare is not None:
            spare.close()
        await self._tasks.aclose()
        for pipe in list(self._pipes):
            pipe.abort()
        if server is not None:
            await server.wait_closed()
        return handed

    async def _release(self, relay: ResumableRelay) -> InheritedConnection | None:
        """A resumable session stopped at a consistent point (``ResumableRelay.release``) to pass on.

        The forwarder keeps its half and its agent connection for the resume window.
        """
        key = self._keys.get(relay) or f"C:{relay.name}"
        opened = relay._hello_sent  # the forwarder knows the session: the next daemon resumes it
        try:
            sock, state = await relay.release()
        except (ResumeError, TimeoutError) as exc:
            logger.warning(
                "agent proxy %s: session %s not handed over: %s", self.socket_path, relay.name, exc
            )
            return None
        path = os.fspath(self.socket_path)
        return InheritedConnection(key, path, sock, bytearray(state.unacked), session_meta(state, opened))

    # -- listening -------------------------------------------------------------

    async def _listen(self, host: str, port: int) -> None:
        if self._closed:
            raise FailedPrecondition(f"agent proxy {self.socket_path} is closed")
        if self._listening:
            raise FailedPrecondition(f"agent proxy {self.socket_path} is already listening")
        self._addr = (host, port)
        path = self.socket_path
        loop = asyncio.get_running_loop()
        inherited = self._custody.take_listener(path) if self._custody is not None else None
        if inherited is not None:
            # Passed by the previous daemon (or the keeper): the file never went away.
            inherited.setblocking(False)
            self._server = await loop.create_unix_server(self._accept, sock=inherited)
            self._listening = True
            self._custody.keep_listener(path, inherited)  # type: ignore[union-attr]
            for conn in self._custody.take_connections(path):  # type: ignore[union-attr]
                await self._adopt(conn)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a stale socket from an earlier run
        # Bind, restrict, then listen: no peer can connect while the socket still has
        # umask permissions, and the process-wide umask is never touched (threads and
        # other tasks create files meanwhile).
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(os.fspath(path))
            os.chmod(path, 0o600)
            sock.listen(128)
            sock.setblocking(False)
            self._server = await loop.create_unix_server(self._accept, sock=sock)
        except BaseException:
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            raise
        self._listening = True
        if self._custody is not None:
            self._custody.keep_listener(path, sock)

    async def _stop_listening(self) -> None:
        server, self._server = self._server, None
        self._listening = False
        if server is not None:
            server.close()
        if self._custody is not None:
            self._custody.release_listener(self.socket_path)
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            self.socket_path.unlink()
        if server is not None:
            await server.wait_closed()

    def _accept(self) -> asyncio.BaseProtocol:
        """Protocol factory for shim connections (runs inside the event loop)."""
        spare = self._spare
        if self._resume_window > 0 and (spare is None or _resumes(spare)):
            return self._accept_resumable()
        down = self._new_downstream()
        spare, self._spare = self._spare, None
        if spare is not None and spare.is_alive:
            # connection_made has not run yet; link once it has.
            down.connected.add_done_callback(lambda _f: self._join(down, spare))
        else:
            if spare is not None:
                spare.close()
            self._tasks.spawn(self._connect_upstream(down), name=f"agent-proxy-dial {self.socket_path}")
        return down

    def _new_downstream(self, key: str | None = None) -> Pipe:
        down = Pipe(self.stats, downstream=True)
        self.stats.connections_total += 1
        self.stats.connections_active += 1
        self._pipes.add(down)
        self._downs.add(down)
        down.closed.add_done_callback(lambda _f: self._forget(down, counted=True))
        if self._custody is not None:
            down.connected.add_done_callback(lambda _f: self._keep(down, key))
        return down

    def _keep(self, down: Pipe, key: str | None) -> None:
        """Register a shim connection with the keeper as soon as it exists."""
        if self._custody is None or down.connected.cancelled() or down.connected.exception() is not None:
            return
        sock = down.transport.get_extra_info("socket") if down.transport is not None else None
        if sock is None or down.closed.done():
            return
        self._keys[down] = self._custody.keep_connection(self.socket_path, sock.fileno(), key)

    async def _adopt(self, conn: InheritedConnection) -> None:
        """Serve a shim connection accepted by a previous daemon: the shim never noticed the change."""
        if self._custody is not None:
            # Before a single byte moves: the keeper forgets the state left with it, which is stale
            # from now on (a crash later must not resume from it).
            self._custody.keep_connection(self.socket_path, conn.sock.fileno(), conn.key)
        if self._resume_window > 0:
            # A passed-on session is resumed; a connection the keeper kept through a crash has none
            # left (its state died with the daemon): it starts a new session (docs/survival.md).
            conn.sock.setblocking(False)
            try:
                if conn.session is not None and conn.session.get("opened", True):
                    await self.adopt(conn.sock, session_state(conn.session, bytes(conn.prefix)), conn.key)
                else:
                    if conn.session is not None:
                        session = Session.restore(session_state(conn.session, bytes(conn.prefix)))
                    else:
                        session = Session(new_session_id())
                        if conn.prefix:
                            session.send(bytes(conn.prefix))
                    protocol = self._accept_resumable(session, conn.key)
                    await asyncio.get_running_loop().connect_accepted_socket(lambda: protocol, conn.sock)
            except BaseException:
                conn.sock.close()
                raise
            logger.info(
                "agent proxy %s: took over a shim connection (%s, %s)",
                self.socket_path,
                conn.key,
                "session resumed" if conn.session is not None else "new session",
            )
            return
        down = self._new_downstream(conn.key)
        down.hold(bytes(conn.prefix))
        conn.sock.setblocking(False)
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(lambda: down, conn.sock)
        except BaseException:
            conn.sock.close()
            down.close()
            raise
        logger.info("agent proxy %s: took over a shim connection (%s)", self.socket_path, conn.key)
        self._tasks.spawn(self._connect_upstream(down), name=f"agent-proxy-dial {self.socket_path}")

    def _forget(self, pipe: Pipe, *, counted: bool = False) -> None:
        if pipe in self._pipes:
            self._pipes.discard(pipe)
            if counted:
                self.stats.connections_active -= 1
        self._downs.discard(pipe)
        key = self._keys.pop(pipe, None)
        if key is not None and self._custody is not None and not self._detaching:
            self._custody.release_connection(key)

    def _join(self, down: Pipe, up: Pipe) -> None:
        if down.connected.cancelled() or down.connected.exception() is not None:
            up.close()
            return
        self._pipes.add(up)
        up.closed.add_done_callback(lambda _f: self._forget(up))
        link(down, up)

    async def _connect_upstream(self, down: Pipe) -> None:
        loop = asyncio.get_running_loop()
        try:
            await down.connected
            up = await self._dial(loop.time() + self._dial_timeout, stop=down.closed)
        except DialFailed as exc:
            logger.warning(
                "agent proxy %s: cannot reach the forwarder at %s: %s",
                self.socket_path,
                self._addr,
                _describe(exc.last) if exc.last else "timeout",
            )
            down.close()
            return
        except ConnectionError:
            return
        except BaseException:
            down.close()
            raise
        self._join(down, up)

    # -- resumable sessions ---------------------------------------------------------

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

    async def adopt(self, sock: socket.socket, state: SessionState, key: str | None = None) -> None:
        """Continue a session handed over by ``release_sessions`` (of another process) on ``sock``."""
        if self._resume_window <= 0 or self._addr is None:
            raise FailedPrecondition(f"agent proxy {self.socket_path} cannot resume sessions")
        relay = self._new_relay(Session.restore(state), opened=True, key=key)
        loop = asyncio.get_running_loop()
        await loop.connect_accepted_socket(lambda: relay.local, sock=sock)
        self._tasks.spawn(
            self._keep_linked(relay, None, opened=True), name=f"agent-proxy-session {relay.name}"
        )

    def _accept_resumable(
        self, session: Session | None = None, key: str | None = None
    ) -> asyncio.BaseProtocol:
        """A shim connection on a new session (``session``: one holding bytes a previous daemon read)."""
        relay = self._new_relay(session or Session(new_session_id()), key=key)
        spare, self._spare = self._spare, None
        self._tasks.spawn(self._keep_linked(relay, spare), name=f"agent-proxy-session {relay.name}")
        return relay.local

    def _new_relay(self, session: Session, *, opened: bool = False, key: str | None = None) -> ResumableRelay:
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
            self.stats.connections_active -= 1
            relay_key = self._keys.pop(relay, None)
            if relay_key is not None and self._custody is not None and not self._detaching:
                self._custody.release_connection(relay_key)

        relay.ended.add_done_callback(forget)
        if self._custody is not None:
            self._tasks.spawn(self._keep_relay(relay, key), name=f"agent-proxy-keep {relay.name}")
        return relay

    async def _keep_relay(self, relay: ResumableRelay, key: str | None) -> None:
        """Register a resumable shim connection with the keeper once its transport exists."""
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
                                f"{_describe(exc.last) if exc.last else 'timeout'}"
                                + (f" (resume window {self._resume_window:g} s passed)" if opened else "")
                            )
                            return
                    assert up.transport is not None
                    if not _resumes(up):
                        if opened:
                            up.close()
                            relay.end("the forwarder no longer offers a resumable channel")
                        else:
                            self._fall_back(relay, up)
                        return
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
        lt, sent, eof = relay.release_local()
        if lt is None or lt.is_closing():
            up.close()
            return
        down = Pipe(self.stats, downstream=True)
        lt.set_protocol(down)
        down.connection_made(lt)
        self.stats.connections_active += 1  # the relay's forget() counted this connection out
        self._pipes.add(down)
        down.closed.add_done_callback(lambda _f: self._forget(down, counted=True))
        if sent and up.transport is not None:
            up.transport.write(sent)
        if eof:
            down.eof_received()
        self._join(down, up)

    # -- dialling ----------------------------------------------------------------

    async def _dial(self, deadline: float, stop: asyncio.Future[Any] | None = None) -> Pipe:
        """Connect (and handshake) until ``deadline``; see ``StaggeredDialer``."""
        pipe = await self._dialer.dial(deadline, stop=stop, should_stop=lambda: self._closed)
        self.stats.upstream_dials += 1
        return pipe

    def _note_failure(self, exc: BaseException, failures: int) -> None:
        self.stats.upstream_failures += 1
        # The first failure and then one in fifty: a VM boot is minutes of refusals.
        if failures == 1 or failures % 50 == 0:
            logger.info("Retrying failed agent proxy connection: %s (attempt %d)", _describe(exc), failures)

    async def _connect_once(self, handshake: Handshake) -> Pipe:
        """One attempt (the dialer's connector): TCP connect within ``connect_attempt_timeout``, then TLS.

        The dial's own deadline is not applied here: the dialer cancels what is
        still pending when it passes, so the error it reports is the last real
        failure (refused, unreachable, a bad certificate) rather than a timeout
        cut short by the deadline.
        """
        assert self._addr is not None
        host, port = self._addr
        loop = asyncio.get_running_loop()
        try:  # an IP address (the usual case) needs no resolver thread
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
        except socket.gaierror:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        if not infos:
            raise OSError(f"cannot resolve {host}")
        family, type_, proto, _, sockaddr = infos[0]
        sock = socket.socket(family, type_, proto)
        try:
            sock.setblocking(False)
            try:
                async with asyncio.timeout(self._attempt_timeout):
                    await loop.sock_connect(sock, sockaddr)
            except OSError as exc:
                if exc.errno is None:
                    raise
                raise OSError(
                    exc.errno, f"dial tcp {host}:{port}: connect: {os.strerror(exc.errno).lower()}"
                ) from exc
        except BaseException:
            sock.close()
            raise
        # From here the loop owns the socket: a failed or cancelled create_connection
        # closes its transport and with it the socket (closing it here as well would,
        # with uvloop, close a descriptor number that may already be reused).
        up = Pipe(self.stats)
        tls: dict[str, Any] = {}
        if self._ssl is not None:
            tls = {
                "ssl": self._ssl,
                "server_hostname": self._server_hostname,
                "ssl_handshake_timeout": self._handshake_timeout,
            }
        with handshake():
            await loop.create_connection(lambda: up, sock=sock, **tls)
        return up


async def _flushed(pipes: set[Pipe], grace: float) -> None:
    """Wait (bounded) until no transport of ``pipes`` has bytes left in its write buffer."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while loop.time() < deadline:
        busy = [p for p in pipes if p.transport is not None and not p.transport.is_closing()]
        if not any(p.transport.get_write_buffer_size() for p in busy if p.transport is not None):
            return
        await asyncio.sleep(0.01)


def _resumes(pipe: Pipe) -> bool:
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


class AgentChannel:
    """Builds per-sandbox proxies and apf.json TLS fields from one ``AgentTls`` (the daemon's port)."""

    def __init__(
        self,
        tls: AgentTls,
        *,
        dial_timeout: float = 300.0,
        resume_window: float = 0.0,
        custody: SocketCustody | None = None,
    ) -> None:
        self._tls = tls
        self._dial_timeout = dial_timeout
        self._resume_window = resume_window
        self.custody = custody

    def apf_tls_fields(self, instance_name: str) -> dict[str, Any]:
        return self._tls.apf_tls_fields(instance_name)

    def new_proxy(self, socket_path: Path, instance_name: str) -> AgentProxy:
        return AgentProxy(
            socket_path,
            self._tls.client_context(resumable=self._resume_window > 0),
            self._tls.server_hostname(instance_name),
            dial_timeout=self._dial_timeout,
            resume_window=self._resume_window,
            custody=self.custody,
        )
