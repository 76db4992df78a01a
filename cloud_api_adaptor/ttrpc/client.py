"""ttrpc client for unary calls, many in flight on one connection.

Calls take odd stream ids 1, 3, 5, ... and are matched to Response frames by id,
so answers may come back in any order.  Failures are always ``RpcError``:

* a non-OK status from the peer -> that status;
* a request above 4 MiB -> RESOURCE_EXHAUSTED, raised locally before sending (as ttrpc 1.2.6+);
* the deadline passing -> DEADLINE_EXCEEDED, enforced locally and sent as ``timeout_nano``;
* the connection failing or closing -> UNAVAILABLE for every pending and later call.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl as ssl_module
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from cloud_api_adaptor.ttrpc.connection import ClientStreamIds, FrameConnection
from cloud_api_adaptor.ttrpc.framing import (
    MAX_MESSAGE_LENGTH,
    Frame,
    MessageType,
    OversizedFrame,
    OversizedMessageError,
)
from cloud_api_adaptor.ttrpc.messages import (
    EnvelopeError,
    Metadata,
    MetadataLike,
    decode_response,
    encode_request,
)
from cloud_api_adaptor.ttrpc.status import Code, RpcError

logger = logging.getLogger(__name__)

RespT = TypeVar("RespT", bound=Message)


class _ClientConnection(FrameConnection):
    """Client side of one connection: routes Response frames to the waiting call."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: dict[int, asyncio.Future[bytes]] = {}
        self.close_reason: str | None = None

    def frame_received(self, frame: Frame) -> None:
        if frame.type != MessageType.RESPONSE:
            logger.debug("ttrpc client: ignoring frame type %d on stream %d", frame.type, frame.stream_id)
            return
        waiter = self.pending.pop(frame.stream_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(frame.data)

    def oversized_frame_received(self, frame: OversizedFrame) -> None:
        # ttrpc 1.2 fails only that stream and keeps the connection.
        waiter = self.pending.pop(frame.stream_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_exception(RpcError(Code.RESOURCE_EXHAUSTED, str(OversizedMessageError(frame.length))))

    def closed(self, exc: Exception | None) -> None:
        self.close_reason = f"ttrpc: connection closed: {exc}" if exc else "ttrpc: connection closed"
        pending, self.pending = self.pending, {}
        for waiter in pending.values():
            if not waiter.done():
                waiter.set_exception(RpcError(Code.UNAVAILABLE, self.close_reason))


class Client:
    """A ttrpc client over one connection; an async context manager (closes on exit)."""

    def __init__(self, connection: _ClientConnection) -> None:
        """Wrap a connected protocol; use the ``connect_*``/``from_transport`` constructors."""
        self._conn = connection
        self._ids = ClientStreamIds()

    # -- constructors -----------------------------------------------------------------

    @classmethod
    async def connect_unix(
        cls,
        path: Path | str,
        *,
        ssl: ssl_module.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> Client:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_unix_connection(
                _ClientConnection, os.fspath(path), ssl=ssl, server_hostname=server_hostname
            )
        except OSError as exc:
            raise RpcError(Code.UNAVAILABLE, f"dial unix {path}: {exc.strerror or exc}") from exc
        return cls(conn)

    @classmethod
    async def connect_tcp(
        cls,
        host: str,
        port: int,
        *,
        ssl: ssl_module.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> Client:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(
                _ClientConnection, host, port, ssl=ssl, server_hostname=server_hostname
            )
        except OSError as exc:
            raise RpcError(Code.UNAVAILABLE, f"dial tcp {host}:{port}: {exc.strerror or exc}") from exc
        return cls(conn)

    @classmethod
    async def connect_socket(
        cls,
        sock: socket.socket,
        *,
        ssl: ssl_module.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> Client:
        """Use an already connected socket (e.g. a socketpair end)."""
        loop = asyncio.get_running_loop()
        if sock.family == socket.AF_UNIX:
            _, conn = await loop.create_unix_connection(
                _ClientConnection, sock=sock, ssl=ssl, server_hostname=server_hostname
            )
        else:
            _, conn = await loop.create_connection(
                _ClientConnection, sock=sock, ssl=ssl, server_hostname=server_hostname
            )
        return cls(conn)

    @classmethod
    def from_transport(cls, transport: asyncio.Transport) -> Client:
        """Take over an existing transport, e.g. the result of ``loop.start_tls``.

        Nothing may have been read from it that belongs to the ttrpc stream.
        """
        conn = _ClientConnection()
        transport.set_protocol(conn)
        conn.connection_made(transport)
        return cls(conn)

    # -- calls ------------------------------------------------------------------------

    async def call(
        self,
        service: str,
        method: str,
        request: Message,
        response_type: type[RespT],
        *,
        timeout: float | None = None,
        metadata: MetadataLike | None = None,
    ) -> RespT:
        """Call ``service``/``method`` and return the decoded reply; raises ``RpcError``."""
        conn = self._conn
        if conn.is_closing:
            raise RpcError(Code.UNAVAILABLE, conn.close_reason or "ttrpc: connection closed")
        if timeout is not None and timeout <= 0:
            raise RpcError(Code.DEADLINE_EXCEEDED, "context deadline exceeded")
        data = encode_request(
            service, method, request.SerializeToString(), timeout=timeout, metadata=Metadata.coerce(metadata)
        )
        if len(data) > MAX_MESSAGE_LENGTH:
            raise RpcError(Code.RESOURCE_EXHAUSTED, str(OversizedMessageError(len(data))))
        stream_id = self._ids.allocate()
        if stream_id is None:
            raise RpcError(Code.UNAVAILABLE, "ttrpc: stream ids exhausted on this connection")
        waiter: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        conn.pending[stream_id] = waiter
        try:
            conn.send_frame(stream_id, MessageType.REQUEST, data)
            await conn.drain()
            if timeout is None:
                raw = await waiter
            else:
                async with asyncio.timeout(timeout):
                    raw = await waiter
        except TimeoutError:
            raise RpcError(Code.DEADLINE_EXCEEDED, "context deadline exceeded") from None
        finally:
            conn.pending.pop(stream_id, None)
        return _decode_reply(raw, response_type)

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def is_closed(self) -> bool:
        return self._conn.is_closing

    def close(self) -> None:
        """Start closing; pending calls fail with UNAVAILABLE."""
        self._conn.close()

    async def aclose(self) -> None:
        """Close and wait until the connection is gone."""
        self._conn.close()
        await self._conn.wait_closed()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


def _decode_reply(raw: bytes, response_type: type[RespT]) -> RespT:
    try:
        status, payload = decode_response(raw)
    except EnvelopeError as exc:
        raise RpcError(Code.INTERNAL, str(exc)) from exc
    if status is not None:
        raise RpcError.from_status(status)
    try:
        return response_type.FromString(payload)
    except DecodeError as exc:
        raise RpcError(
            Code.INTERNAL, f"ttrpc: error unmarshalling reply as {response_type.DESCRIPTOR.full_name}: {exc}"
        ) from exc
