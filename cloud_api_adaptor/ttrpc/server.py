"""ttrpc server: routing, deadlines and the one place exceptions become a status.

Behaviour follows containerd/ttrpc 1.2, the server Kata talks to, wherever a peer can
observe it:

* stream ids must be odd and increase; a bad id is answered INVALID_ARGUMENT on
  that same id and the connection keeps serving;
* an unknown service or method is UNIMPLEMENTED "service X" / "method Y";
* an oversized frame (> 4 MiB data) is answered RESOURCE_EXHAUSTED on its stream,
  and an oversized reply is replaced by that status rather than sent;
* ``timeout_nano`` > 0 runs the handler under that deadline; when it passes the
  handler is cancelled and the answer is DEADLINE_EXCEEDED;
* ``RpcError`` becomes its status; the server's ``error_translator`` (the one
  place a service maps its own exception classes) may turn others into one;
  anything left is a generic INTERNAL status with an error id that the log line
  carrying the traceback names (``status.internal_error``);
* every call runs in its own task, so long-poll calls (WaitProcess, ReadStdout)
  never hold up other calls on the connection and answers go out in any order.

Kata is unary only, so streaming requests and Data frames are refused without
closing the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import socket
import ssl as ssl_module
import stat
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, TypeVar

from google.protobuf.message import DecodeError, Message

from cloud_api_adaptor.ttrpc.connection import FrameConnection, ServerStreamIds
from cloud_api_adaptor.ttrpc.framing import (
    MAX_MESSAGE_LENGTH,
    Flags,
    Frame,
    MessageType,
    OversizedFrame,
    OversizedMessageError,
)
from cloud_api_adaptor.ttrpc.messages import (
    EnvelopeError,
    Metadata,
    decode_request,
    encode_response,
    encode_status,
)
from cloud_api_adaptor.ttrpc.status import Code, RpcError, internal_error

logger = logging.getLogger(__name__)

ReqT = TypeVar("ReqT", bound=Message)
_STREAMING_FLAGS = int(Flags.REMOTE_OPEN | Flags.REMOTE_CLOSED)  # plain int: IntFlag.__and__ is slow


@dataclass(frozen=True, slots=True)
class CallContext:
    """What a handler knows about its call besides the request message."""

    service: str
    method: str
    metadata: Metadata
    deadline: float | None
    """Event-loop time (``loop.time()``) at which the caller gives up; None if it set no deadline."""
    stream_id: int

    def time_remaining(self) -> float | None:
        """Seconds left before the deadline (may be negative), or None without a deadline."""
        if self.deadline is None:
            return None
        return self.deadline - asyncio.get_running_loop().time()


@dataclass(frozen=True, slots=True)
class UnaryMethod(Generic[ReqT]):
    """A unary RPC: the request message class and the coroutine that answers it."""

    request_type: type[ReqT]
    handler: Callable[[ReqT, CallContext], Awaitable[Message]]


ErrorTranslator = Callable[[Exception], RpcError | None]
"""Maps a handler's own exception classes to an RpcError; None leaves it an internal error."""


class Server:
    """A ttrpc server for unary services; an async context manager (close + wait_closed on exit)."""

    def __init__(
        self, *, error_translator: ErrorTranslator | None = None, shutdown_grace: float = 5.0
    ) -> None:
        self._services: dict[str, dict[str, UnaryMethod[Any]]] = {}
        self._translate = error_translator
        self._grace = shutdown_grace
        self._listeners: list[asyncio.AbstractServer] = []
        self._unix_paths: list[tuple[Path, int]] = []
        self._connections: set[_ServerConnection] = set()
        self._closing = False
        self._closed = False

    # -- configuration -----------------------------------------------------------------

    def add_service(self, name: str, methods: Mapping[str, UnaryMethod[Any]]) -> None:
        """Register ``name`` (fully qualified, e.g. ``hypervisor.Hypervisor``) and its methods."""
        if name in self._services:
            raise ValueError(f"duplicate service {name} registered")
        self._services[name] = dict(methods)

    # -- listening ---------------------------------------------------------------------

    async def start_unix(self, path: Path, mode: int = 0o600) -> None:
        """Listen on a unix socket at ``path``: parent dirs created, a stale socket replaced.

        The socket is chmod-ed before ``listen()``, so no peer can connect while it
        still has umask permissions.  A socket that a live process still answers on
        is not stolen: that raises ``OSError(EADDRINUSE)``.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_socket(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(os.fspath(path))
            os.chmod(path, mode)
            sock.listen(128)
            inode = os.stat(path).st_ino
        except BaseException:
            sock.close()
            raise
        self._unix_paths.append((path, inode))
        await self.start_on(sock)
        logger.info("ttrpc server listening on %s", path)

    async def start_on(self, sock: socket.socket, *, ssl: ssl_module.SSLContext | None = None) -> None:
        """Serve connections accepted from an already bound (and listening) socket."""
        if self._closing:
            raise RuntimeError("ttrpc server is closed")
        loop = asyncio.get_running_loop()
        if sock.family == socket.AF_UNIX:
            listener = await loop.create_unix_server(self._new_connection, sock=sock, ssl=ssl)
        else:
            listener = await loop.create_server(self._new_connection, sock=sock, ssl=ssl)
        self._listeners.append(listener)

    async def serve_socket(self, sock: socket.socket, *, ssl: ssl_module.SSLContext | None = None) -> None:
        """Serve one already connected socket (a socketpair end, an accepted connection)."""
        if self._closing:
            raise RuntimeError("ttrpc server is closed")
        await asyncio.get_running_loop().connect_accepted_socket(self._new_connection, sock, ssl=ssl)

    def protocol_factory(self) -> asyncio.Protocol:
        """A protocol for one connection, for callers that create transports themselves."""
        return self._new_connection()

    def _new_connection(self) -> _ServerConnection:
        return _ServerConnection(self)

    # -- shutdown ----------------------------------------------------------------------

    @property
    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Stop accepting connections and new calls; idle connections are closed now."""
        if self._closing:
            return
        self._closing = True
        for listener in self._listeners:
            listener.close()
        for conn in list(self._connections):
            conn.close_when_idle()

    async def wait_closed(self, grace: float | None = None) -> None:
        """Wait up to ``grace`` seconds for in-flight calls, cancel the rest, close every connection."""
        self.close()
        if self._closed:
            return
        grace = self._grace if grace is None else grace
        try:
            calls = [task for conn in self._connections for task in conn.calls()]
            if calls:
                _, pending = await asyncio.wait(calls, timeout=grace)
                for task in pending:
                    task.cancel()
                if pending:
                    logger.warning(
                        "ttrpc server: cancelled %d call(s) still running after %.1fs", len(pending), grace
                    )
                    await asyncio.gather(*pending, return_exceptions=True)
            conns = list(self._connections)
            for conn in conns:
                conn.close()
            if conns:
                waits = [asyncio.ensure_future(conn.wait_closed()) for conn in conns]
                _, stuck = await asyncio.wait(waits, timeout=1.0)
                for waiter in stuck:
                    waiter.cancel()
            for listener in self._listeners:
                await listener.wait_closed()
        finally:
            for conn in list(self._connections):
                for task in conn.calls():
                    task.cancel()
                conn.abort()
            self._unlink_sockets()
            self._closed = True

    def _unlink_sockets(self) -> None:
        for path, inode in self._unix_paths:
            with contextlib.suppress(FileNotFoundError):
                if os.stat(path).st_ino == inode:
                    path.unlink()
        self._unix_paths.clear()

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.wait_closed()

    # -- dispatch (called by connections) ------------------------------------------------

    def _lookup(self, service: str, method: str) -> UnaryMethod[Any]:
        methods = self._services.get(service)
        if methods is None:
            raise RpcError(Code.UNIMPLEMENTED, f"service {service}")
        handler = methods.get(method)
        if handler is None:
            raise RpcError(Code.UNIMPLEMENTED, f"method {method}")
        return handler

    def _status_for(self, exc: Exception, ctx: CallContext) -> RpcError:
        if isinstance(exc, RpcError):
            return exc
        if self._translate is not None:
            translated = self._translate(exc)
            if translated is not None:
                return translated
        return internal_error(exc, f"ttrpc /{ctx.service}/{ctx.method}", logger)


class _ServerConnection(FrameConnection):
    """Server side of one connection: validates frames, starts one task per call, writes answers."""

    def __init__(self, server: Server) -> None:
        super().__init__()
        self._server = server
        self._ids = ServerStreamIds()
        self._calls: dict[int, asyncio.Task[None]] = {}
        self._loop = asyncio.get_running_loop()
        self._idle_close = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._server._connections.add(self)
        if self._server.is_closing:
            self.close()

    def closed(self, exc: Exception | None) -> None:
        # The peer is gone: nobody can receive the answers, so stop the work (as Go cancels the ctx).
        self._server._connections.discard(self)
        for task in self._calls.values():
            task.cancel()

    def eof_received(self) -> bool:
        # EOF means the peer is gone (Go's server treats it so too): close, which cancels its calls.
        # A peer that only half-closed cannot be told apart, and would leave long-polls hanging.
        return False

    def calls(self) -> list[asyncio.Task[None]]:
        return list(self._calls.values())

    def close_when_idle(self) -> None:
        if self._calls:
            self._idle_close = True
        else:
            self.close()

    # -- frames -----------------------------------------------------------------------

    def frame_received(self, frame: Frame) -> None:
        stream_id = frame.stream_id
        if frame.type == MessageType.REQUEST:
            error = self._ids.accept_request(stream_id)
            if error is not None:
                self._send_error(stream_id, Code.INVALID_ARGUMENT, error)
                return
            self._request_received(stream_id, frame)
        elif frame.type == MessageType.DATA:
            error = ServerStreamIds.parity_error(stream_id)
            # No stream is ever open (unary only), so any Data frame is for a dead stream.
            self._send_error(stream_id, Code.INVALID_ARGUMENT, error or "StreamID is no longer active")
        else:
            logger.debug("ttrpc: ignoring frame type %d on stream %d", frame.type, stream_id)

    def oversized_frame_received(self, frame: OversizedFrame) -> None:
        self._send_error(frame.stream_id, Code.RESOURCE_EXHAUSTED, str(OversizedMessageError(frame.length)))

    def _request_received(self, stream_id: int, frame: Frame) -> None:
        server = self._server
        try:
            envelope = decode_request(frame.data)
        except EnvelopeError as exc:
            self._send_error(stream_id, Code.INVALID_ARGUMENT, str(exc))
            return
        try:
            method = server._lookup(envelope.service, envelope.method)
        except RpcError as exc:
            self._send_status(stream_id, exc)
            return
        if frame.flags & _STREAMING_FLAGS:
            self._send_error(
                stream_id,
                Code.UNIMPLEMENTED,
                f"/{envelope.service}/{envelope.method}: streaming requests are not supported (unary only)",
            )
            return
        if server.is_closing or self._idle_close:
            self._send_error(stream_id, Code.UNAVAILABLE, "ttrpc: server shutting down")
            return
        request_type = method.request_type
        try:
            request = request_type.FromString(envelope.payload)
        except DecodeError as exc:
            self._send_error(
                stream_id,
                Code.INVALID_ARGUMENT,
                f"ttrpc: error unmarshalling payload as {request_type.DESCRIPTOR.full_name}: {exc}",
            )
            return
        timeout = envelope.timeout
        ctx = CallContext(
            service=envelope.service,
            method=envelope.method,
            metadata=envelope.metadata,
            deadline=None if timeout is None else self._loop.time() + timeout,
            stream_id=stream_id,
        )
        task = self._loop.create_task(self._run_call(method, request, ctx), name=f"ttrpc-call-{stream_id}")
        self._calls[stream_id] = task
        task.add_done_callback(functools.partial(self._call_done, stream_id))

    # -- calls ------------------------------------------------------------------------

    async def _run_call(self, method: UnaryMethod[Any], request: Message, ctx: CallContext) -> None:
        try:
            reply = await _call_with_deadline(method, request, ctx)
            body = encode_response(reply.SerializeToString())
            if len(body) > MAX_MESSAGE_LENGTH:
                # Go 1.2 would drop the connection here; answering keeps the other calls alive.
                logger.error("ttrpc /%s/%s: reply of %d bytes not sent", ctx.service, ctx.method, len(body))
                body = encode_status(
                    RpcError(Code.RESOURCE_EXHAUSTED, str(OversizedMessageError(len(body)))).to_status()
                )
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the connection or the server is going away: nobody to answer
            body = encode_status(RpcError(Code.CANCELLED, "context canceled").to_status())
        except Exception as exc:
            body = encode_status(self._server._status_for(exc, ctx).to_status())
        self.send_frame(ctx.stream_id, MessageType.RESPONSE, body)
        await self.drain()

    def _call_done(self, stream_id: int, task: asyncio.Task[None]) -> None:
        del self._calls[stream_id]
        if not task.cancelled() and task.exception() is not None:
            logger.error("ttrpc: call task %s failed", task.get_name(), exc_info=task.exception())
        if self._idle_close and not self._calls:
            self.close()

    def _send_error(self, stream_id: int, code: Code, message: str) -> None:
        self._send_status(stream_id, RpcError(code, message))

    def _send_status(self, stream_id: int, error: RpcError) -> None:
        self.send_frame(stream_id, MessageType.RESPONSE, encode_status(error.to_status()))


async def _call_with_deadline(method: UnaryMethod[Any], request: Message, ctx: CallContext) -> Message:
    if ctx.deadline is None:
        return await method.handler(request, ctx)
    timeout = asyncio.timeout_at(ctx.deadline)
    try:
        async with timeout:
            return await method.handler(request, ctx)
    except TimeoutError:
        if timeout.expired():
            raise RpcError(Code.DEADLINE_EXCEEDED, "context deadline exceeded") from None
        raise


def _remove_stale_socket(path: Path) -> None:
    """Unlink a socket file nobody listens on; refuse to touch anything else."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(os.fspath(path))
    except (ConnectionRefusedError, FileNotFoundError):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    except OSError:
        pass
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, f"{path} is in use by a live server")
