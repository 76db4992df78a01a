"""Frame-level stand-ins for the kata-agent and the shim, for tests and benchmarks.

``StubAgent`` listens on a unix socket and answers ttrpc requests without a
real ttrpc server: ``grpc.Health/Check`` (SERVING), ``grpc.Health/Version``,
``test.Echo/Echo`` (payload echoed, for throughput), every ``grpc.AgentService``
method (empty reply), anything else UNIMPLEMENTED.  It records each request as
received, raw bytes included, so tests can assert what reached "the agent".
``StubClient`` is a minimal multiplexing ttrpc client over any stream transport.
Both are lean ``asyncio.Protocol``s so a benchmark measures the relays, not them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from cloud_api_adaptor._pb import health_pb2, ttrpc_pb2
from cloud_api_adaptor.ttrpc.framing import FrameDecoder, MessageType, OversizedFrame, encode_frame

CODE_RESOURCE_EXHAUSTED = 8
CODE_UNIMPLEMENTED = 12


@dataclass(frozen=True)
class RecordedRequest:
    """One request frame as the agent saw it."""

    stream_id: int
    service: str
    method: str
    payload: bytes
    raw: bytes
    """The frame data (the serialized ttrpc Request) exactly as received."""


class _AgentConnection(asyncio.Protocol):
    def __init__(self, agent: StubAgent) -> None:
        self._agent = agent
        self._decoder = FrameDecoder()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = t = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport
        self._agent._conns.add(t)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._agent._conns.discard(self._transport)

    def data_received(self, data: bytes) -> None:
        out: list[bytes] = []
        for frame in self._decoder.feed(data):
            if isinstance(frame, OversizedFrame):
                status = ttrpc_pb2.Response()
                status.status.code = CODE_RESOURCE_EXHAUSTED
                status.status.message = (
                    f"message length {frame.length} exceed maximum message size of 4194304"
                )
                out.append(encode_frame(frame.stream_id, MessageType.RESPONSE, status.SerializeToString()))
                continue
            if frame.type != MessageType.REQUEST:
                continue
            req = ttrpc_pb2.Request.FromString(frame.data)
            self._agent.requests.append(
                RecordedRequest(frame.stream_id, req.service, req.method, req.payload, frame.data)
            )
            out.append(encode_frame(frame.stream_id, MessageType.RESPONSE, self._agent.answer(req)))
        if out and self._transport is not None:
            self._transport.write(b"".join(out))


_CHECK_REPLY = ttrpc_pb2.Response(
    payload=health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING).SerializeToString()
).SerializeToString()


class StubAgent:
    """A kata-agent stand-in on a unix socket; use as ``async with StubAgent(path) as agent``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.requests: list[RecordedRequest] = []
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[asyncio.Transport] = set()

    def answer(self, req: ttrpc_pb2.Request) -> bytes:
        if req.service == "grpc.Health" and req.method == "Check":
            return _CHECK_REPLY
        if req.service == "grpc.Health" and req.method == "Version":
            body = health_pb2.VersionCheckResponse(grpc_version="stub", agent_version="stub-agent")
            return ttrpc_pb2.Response(payload=body.SerializeToString()).SerializeToString()
        if req.service == "test.Echo":
            return ttrpc_pb2.Response(payload=req.payload).SerializeToString()
        if req.service == "grpc.AgentService":
            return b""  # Empty reply, status absent (= OK), as Go's ttrpc 1.1 server sends it
        resp = ttrpc_pb2.Response()
        resp.status.code = CODE_UNIMPLEMENTED
        resp.status.message = f"service {req.service}"
        return resp.SerializeToString()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._server = await loop.create_unix_server(lambda: _AgentConnection(self), str(self.path))

    async def aclose(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for t in list(self._conns):
            t.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        if server is not None:
            await server.wait_closed()

    async def __aenter__(self) -> StubAgent:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class StubClient(asyncio.Protocol):
    """A minimal ttrpc client: odd stream ids, any number of calls in flight."""

    def __init__(self) -> None:
        self._decoder = FrameDecoder()
        self._transport: asyncio.Transport | None = None
        self._pending: dict[int, asyncio.Future[ttrpc_pb2.Response]] = {}
        self._ids = itertools.count(1, 2)
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @classmethod
    async def connect_unix(cls, path: Path) -> StubClient:
        _, proto = await asyncio.get_running_loop().create_unix_connection(cls, str(path))
        return proto

    @classmethod
    async def connect_tcp(
        cls,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> StubClient:
        kwargs: dict[str, Any] = {}
        if ssl_context is not None:
            kwargs = {"ssl": ssl_context, "server_hostname": server_hostname}
        _, proto = await asyncio.get_running_loop().create_connection(cls, host, port, **kwargs)
        return proto

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        for frame in self._decoder.feed(data):
            fut = self._pending.pop(frame.stream_id, None)
            if fut is None or fut.done() or isinstance(frame, OversizedFrame):
                continue
            fut.set_result(ttrpc_pb2.Response.FromString(frame.data))

    def connection_lost(self, exc: Exception | None) -> None:
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError("connection closed"))
        if not self.closed.done():
            self.closed.set_result(None)

    def send_request(self, request: bytes) -> asyncio.Future[ttrpc_pb2.Response]:
        """Send a serialized ttrpc Request as-is; the future resolves with the Response."""
        if self._transport is None or self._transport.is_closing():
            raise ConnectionError("connection closed")
        sid = next(self._ids)
        fut: asyncio.Future[ttrpc_pb2.Response] = asyncio.get_running_loop().create_future()
        self._pending[sid] = fut
        self._transport.write(encode_frame(sid, MessageType.REQUEST, request))
        return fut

    async def call(self, service: str, method: str, payload: bytes = b"") -> ttrpc_pb2.Response:
        req = ttrpc_pb2.Request(service=service, method=method, payload=payload)
        return await self.send_request(req.SerializeToString())

    async def health_check(self) -> int:
        resp = await self.call("grpc.Health", "Check", health_pb2.CheckRequest().SerializeToString())
        return health_pb2.HealthCheckResponse.FromString(resp.payload).status

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    async def aclose(self) -> None:
        self.close()
        await self.closed
