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

Sockets that outlive the daemon (``transport.custody``, docs/survival.md): the
listener is registered with the fd-keeper, passed ones are taken over instead
of binding anew, and ``detach`` goes away without the shim seeing it.  We accept
ourselves, so that a resumable connection goes to the keeper's relay before a
byte of it is read.

Resumable channel (``resume_window`` > 0, TLS on; ``agent_sessions``): when the
forwarder agrees by ALPN a shim connection is a ``ResumableRelay``, its link
redialled and resumed after a drop within ``resume_window``; a forwarder that
does not offer it gets the plain relay, the bytes the shim sent meanwhile first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
from pathlib import Path
from typing import Any

from cloud_api_adaptor.aio import TaskSupervisor
from cloud_api_adaptor.errors import DeadlineExceeded, FailedPrecondition
from cloud_api_adaptor.proxy.agent_keeper import KeeperReports
from cloud_api_adaptor.proxy.agent_sessions import ProxyStats, ResumableSessions, describe, flushed, resumes
from cloud_api_adaptor.proxy.dialer import DialFailed, Handshake, StaggeredDialer
from cloud_api_adaptor.proxy.tls import AgentTls
from cloud_api_adaptor.transport.custody import InheritedConnection, SocketCustody
from cloud_api_adaptor.transport.pump import Pipe, close_pipes, link
from cloud_api_adaptor.transport.resumable import ResumableRelay
from cloud_api_adaptor.transport.resume import ALPN

__all__ = ["SOCKET_NAME", "AgentChannel", "AgentProxy", "ProxyStats"]

logger = logging.getLogger(__name__)

SOCKET_NAME = "agent.ttrpc"


class AgentProxy(ResumableSessions):
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
        self._reports: dict[ResumableRelay, KeeperReports] = {}
        self._relayed_downs: set[Pipe] = set()
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
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
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
                f"{describe(exc.last) if exc.last else 'timeout'}"
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

    async def detach(self, grace: float = 2.0, *, reclaim: bool = False) -> list[InheritedConnection]:
        """Go away without the shim noticing: stop accepting, keep the socket file, no EOF.

        Reading from the shim stops, what was already read is flushed to the
        forwarder and what came back is flushed to the shim (within ``grace``),
        then each shim connection is returned as a duplicate descriptor with
        anything still held for it, for the next daemon (the listener itself
        is in the custody's hands).  Answers the forwarder sends after this are
        lost unless the agent channel resumes its session (a plain relay
        cannot: the next daemon opens a new upstream connection).

        A connection the fd-keeper relays stays with the keeper for the next
        daemon (a restart), or, with ``reclaim`` (a hand-over to a daemon with
        its own keeper), is taken back from it and returned.
        """
        if self._closed:
            return []
        self._closed = True
        self._detaching = True
        await self._stop_accepting(close=False)
        handed = [c for c in [await self._release(r, reclaim) for r in list(self.relays)] if c is not None]
        downs = list(self._downs | self._relayed_downs)
        for down in downs:
            if down.transport is not None and not down.transport.is_closing():
                down.transport.pause_reading()
        await flushed(self._pipes, grace)
        for down in downs:
            t = down.transport
            sock = t.get_extra_info("socket") if t is not None else None
            if t is None or t.is_closing() or sock is None or down.closed.done():
                continue
            if down in self._relayed_downs:
                conn = await self._reclaim_plain(down, reclaim)
                if conn is not None:
                    handed.append(conn)
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
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()  # the custody (or the keeper) holds a duplicate
        return handed

    # -- listening -------------------------------------------------------------

    async def _listen(self, host: str, port: int) -> None:
        if self._closed:
            raise FailedPrecondition(f"agent proxy {self.socket_path} is closed")
        if self._listening:
            raise FailedPrecondition(f"agent proxy {self.socket_path} is already listening")
        self._addr = (host, port)
        path = self.socket_path
        inherited = self._custody.take_listener(path) if self._custody is not None else None
        if inherited is not None:
            # Passed by the previous daemon (or the keeper): the file never went away.
            self._serve(inherited)
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
            self._serve(sock)
        except BaseException:
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            raise
        if self._custody is not None:
            self._custody.keep_listener(path, sock)

    def _serve(self, sock: socket.socket) -> None:
        """Accept on ``sock`` ourselves: a connection may go to the fd-keeper before any byte is read."""
        sock.setblocking(False)
        self._listener = sock
        self._listening = True
        self._accepting = self._tasks.spawn(
            self._accept_loop(sock), name=f"agent-proxy-accept {self.socket_path}"
        )

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _ = await loop.sock_accept(listener)
            except OSError as exc:  # out of descriptors and the like: the shim waits in the backlog
                logger.warning("agent proxy %s: accept failed: %s", self.socket_path, exc)
                await asyncio.sleep(0.1)
                continue
            sock.setblocking(False)
            try:
                await self._serve_accepted(sock)
            except Exception as exc:
                logger.warning("agent proxy %s: cannot serve a shim connection: %s", self.socket_path, exc)

    async def _serve_accepted(self, sock: socket.socket) -> None:
        spare = self._spare
        if self._resume_window > 0 and (spare is None or resumes(spare)):
            await self._serve_resumable(sock)
        else:
            await self._connect(self._accept(), sock)

    async def _stop_accepting(self, *, close: bool) -> None:
        task, self._accepting = self._accepting, None
        self._listening = False
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if close:
            listener, self._listener = self._listener, None
            if listener is not None:
                listener.close()

    async def _stop_listening(self) -> None:
        await self._stop_accepting(close=True)
        if self._custody is not None:
            self._custody.release_listener(self.socket_path)
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            self.socket_path.unlink()

    def _accept(self) -> asyncio.BaseProtocol:
        """A plain relay for a shim connection (the resumable channel is off or not offered)."""
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
        conn.sock.setblocking(False)
        if self._resume_window > 0:
            try:
                await self._adopt_resumable(conn)
            except BaseException:
                conn.sock.close()
                raise
            return
        if self._custody is not None and not conn.relayed:
            # Before a single byte moves: the keeper forgets the state left with it, which is stale
            # from now on (a crash later must not resume from it).
            self._custody.keep_connection(self.socket_path, conn.sock.fileno(), conn.key)
        down = self._new_downstream(None if conn.relayed else conn.key)
        if conn.relayed and self._custody is not None:  # the keeper relays it: no session any more
            self._custody.report("plain", conn.key)
            self._keys[down] = conn.key
            self._relayed_downs.add(down)
        down.hold(bytes(conn.prefix))
        await self._connect(down, conn.sock)
        if conn.outbox and down.transport is not None:
            down.transport.write(bytes(conn.outbox))
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
                describe(exc.last) if exc.last else "timeout",
            )
            down.close()
            return
        except ConnectionError:
            return
        except BaseException:
            down.close()
            raise
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
            logger.info("Retrying failed agent proxy connection: %s (attempt %d)", describe(exc), failures)

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
