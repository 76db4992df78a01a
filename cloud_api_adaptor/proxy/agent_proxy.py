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
    ) -> None:
        self.socket_path = socket_path
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

    # -- listening -------------------------------------------------------------

    async def _listen(self, host: str, port: int) -> None:
        if self._closed:
            raise FailedPrecondition(f"agent proxy {self.socket_path} is closed")
        if self._listening:
            raise FailedPrecondition(f"agent proxy {self.socket_path} is already listening")
        self._addr = (host, port)
        path = self.socket_path
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a stale socket from an earlier run
        loop = asyncio.get_running_loop()
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

    async def _stop_listening(self) -> None:
        server, self._server = self._server, None
        self._listening = False
        if server is not None:
            server.close()
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            self.socket_path.unlink()
        if server is not None:
            await server.wait_closed()

    def _accept(self) -> asyncio.BaseProtocol:
        """Protocol factory for shim connections (runs inside the event loop)."""
        spare = self._spare
        if self._resume_window > 0 and (spare is None or _resumes(spare)):
            return self._accept_resumable()
        down = Pipe(self.stats, downstream=True)
        self.stats.connections_total += 1
        self.stats.connections_active += 1
        self._pipes.add(down)
        down.closed.add_done_callback(lambda _f: self._forget(down, counted=True))
        spare, self._spare = self._spare, None
        if spare is not None and spare.is_alive:
            # connection_made has not run yet; link once it has.
            down.connected.add_done_callback(lambda _f: self._join(down, spare))
        else:
            if spare is not None:
                spare.close()
            self._tasks.spawn(self._connect_upstream(down), name=f"agent-proxy-dial {self.socket_path}")
        return down

    def _forget(self, pipe: Pipe, *, counted: bool = False) -> None:
        if pipe in self._pipes:
            self._pipes.discard(pipe)
            if counted:
                self.stats.connections_active -= 1

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

    async def adopt(self, sock: socket.socket, state: SessionState) -> None:
        """Continue a session handed over by ``release_sessions`` (of another process) on ``sock``."""
        if self._resume_window <= 0 or self._addr is None:
            raise FailedPrecondition(f"agent proxy {self.socket_path} cannot resume sessions")
        relay = self._new_relay(Session.restore(state), opened=True)
        loop = asyncio.get_running_loop()
        await loop.connect_accepted_socket(lambda: relay.local, sock=sock)
        self._tasks.spawn(
            self._keep_linked(relay, None, opened=True), name=f"agent-proxy-session {relay.name}"
        )

    def _accept_resumable(self) -> asyncio.BaseProtocol:
        relay = self._new_relay(Session(new_session_id()))
        spare, self._spare = self._spare, None
        self._tasks.spawn(self._keep_linked(relay, spare), name=f"agent-proxy-session {relay.name}")
        return relay.local

    def _new_relay(self, session: Session, *, opened: bool = False) -> ResumableRelay:
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

        relay.ended.add_done_callback(forget)
        return relay

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

    def __init__(self, tls: AgentTls, *, dial_timeout: float = 300.0, resume_window: float = 0.0) -> None:
        self._tls = tls
        self._dial_timeout = dial_timeout
        self._resume_window = resume_window

    def apf_tls_fields(self, instance_name: str) -> dict[str, Any]:
        return self._tls.apf_tls_fields(instance_name)

    def new_proxy(self, socket_path: Path, instance_name: str) -> AgentProxy:
        return AgentProxy(
            socket_path,
            self._tls.client_context(resumable=self._resume_window > 0),
            self._tls.server_hostname(instance_name),
            dial_timeout=self._dial_timeout,
            resume_window=self._resume_window,
        )
