"""The ttrpc Server and Client over a real unix socket.

Every error path is followed by a successful call on the same connection, because
a Go/Rust peer keeps one connection for the whole sandbox and an error must never
cost it the connection.  Raw-socket tests write hand-built frames and assert the
exact reply bytes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import stat
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio

from cloud_api_adaptor._pb import hypervisor_pb2 as hv
from cloud_api_adaptor._pb import ttrpc_pb2
from cloud_api_adaptor.testing.eventually import eventually
from cloud_api_adaptor.ttrpc import CallContext, Client, Code, RpcError, Server, UnaryMethod
from cloud_api_adaptor.ttrpc.framing import Frame, FrameDecoder, encode_frame

SVC = "hypervisor.Hypervisor"
VersionReq = hv.VersionRequest
VersionResp = hv.VersionResponse


@dataclass
class Stub:
    """Handlers whose behaviour is chosen by the request's ``version`` string."""

    gates: dict[str, asyncio.Event] = field(default_factory=dict)
    started: dict[str, asyncio.Event] = field(default_factory=dict)
    cancelled: list[str] = field(default_factory=list)

    def gate(self, name: str) -> asyncio.Event:
        return self.gates.setdefault(name, asyncio.Event())

    def start_signal(self, name: str) -> asyncio.Event:
        return self.started.setdefault(name, asyncio.Event())

    async def version(self, req: hv.VersionRequest, ctx: CallContext) -> hv.VersionResponse:
        return VersionResp(version="0.0.0")

    async def echo(self, req: hv.VersionRequest, ctx: CallContext) -> hv.VersionResponse:
        return VersionResp(version=req.version)

    async def wait(self, req: hv.VersionRequest, ctx: CallContext) -> hv.VersionResponse:
        """A long-poll call: blocks until its gate opens; records being cancelled."""
        self.start_signal(req.version).set()
        try:
            await self.gate(req.version).wait()
        except asyncio.CancelledError:
            self.cancelled.append(req.version)
            raise
        return VersionResp(version=f"released {req.version}")

    async def metadata(self, req: hv.VersionRequest, ctx: CallContext) -> hv.VersionResponse:
        return VersionResp(version=";".join(f"{k}={v}" for k, v in ctx.metadata.pairs()))

    async def deadline(self, req: hv.VersionRequest, ctx: CallContext) -> hv.VersionResponse:
        remaining = ctx.time_remaining()
        return VersionResp(version="none" if remaining is None else ("positive" if remaining > 0 else "past"))

    async def big(self, req: hv.VersionRequest, ctx: CallContext) -> hv.VersionResponse:
        return VersionResp(version="x" * (5 << 20))

    async def boom(self, req: hv.VersionRequest, ctx: CallContext) -> hv.VersionResponse:
        raise ValueError("kaput")

    async def refuse(self, req: hv.VersionRequest, ctx: CallContext) -> hv.VersionResponse:
        raise RpcError(Code.NOT_FOUND, f"sandbox {req.version} not found")

    async def translated(self, req: hv.VersionRequest, ctx: CallContext) -> hv.VersionResponse:
        raise KeyError("translate me")

    def methods(self) -> dict[str, UnaryMethod[hv.VersionRequest]]:
        names = ["version", "echo", "wait", "metadata", "deadline", "big", "boom", "refuse", "translated"]
        return {name.capitalize(): UnaryMethod(VersionReq, getattr(self, name)) for name in names}


def _translate(exc: Exception) -> RpcError | None:
    if isinstance(exc, KeyError):
        return RpcError(Code.FAILED_PRECONDITION, "translated")
    return None


@dataclass
class Running:
    server: Server
    stub: Stub
    path: Path


@pytest_asyncio.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    stub = Stub()
    server = Server(error_translator=_translate)
    server.add_service(SVC, stub.methods())
    path = tmp_path / "run" / "hypervisor.sock"
    await server.start_unix(path)
    try:
        yield Running(server, stub, path)
    finally:
        for gate in stub.gates.values():
            gate.set()
        await server.wait_closed(grace=1.0)


@pytest_asyncio.fixture
async def client(running: Running) -> AsyncIterator[Client]:
    async with await Client.connect_unix(running.path) as c:
        yield c


class Raw:
    """A bare socket speaking frames, for asserting exact bytes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = FrameDecoder()
        self.frames: list[Frame] = []

    @classmethod
    async def open(cls, path: Path) -> Raw:
        return cls(*await asyncio.open_unix_connection(os.fspath(path)))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def recv(self) -> Frame:
        while not self.frames:
            chunk = await self.reader.read(65536)
            assert chunk, "server closed the connection"
            for item in self.decoder.feed(chunk):
                assert isinstance(item, Frame)
                self.frames.append(item)
        return self.frames.pop(0)

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


@pytest_asyncio.fixture
async def raw(running: Running) -> AsyncIterator[Raw]:
    conn = await Raw.open(running.path)
    try:
        yield conn
    finally:
        await conn.close()


def request_frame(
    stream_id: int, method: str, version: str = "", *, service: str = SVC, timeout_nano: int = 0
) -> bytes:
    payload = VersionReq(version=version).SerializeToString()
    req = ttrpc_pb2.Request(service=service, method=method, payload=payload, timeout_nano=timeout_nano)
    return encode_frame(stream_id, 1, req.SerializeToString())


def status_of(frame: Frame) -> tuple[int, str]:
    resp = ttrpc_pb2.Response.FromString(frame.data)
    return resp.status.code, resp.status.message


async def assert_still_serving(raw: Raw, stream_id: int) -> None:
    await raw.send(request_frame(stream_id, "Echo", "still here"))
    reply = await raw.recv()
    assert reply.stream_id == stream_id
    assert reply.data == b"\x12\x0c\x0a\x0astill here"


async def ok_call(client: Client) -> None:
    assert (await client.call(SVC, "Echo", VersionReq(version="ok"), VersionResp)).version == "ok"


# -- wire bytes ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_annotated_version_frame_gets_the_exact_go_reply(raw: Raw) -> None:
    probe = bytes.fromhex("00000045 00000001 01 00") + (
        b"\x0a\x15hypervisor.Hypervisor\x12\x07Version\x1a\x0c\x0a\x0awire-probe"
        b"\x20\x80\xe4\x97\xd0\x12\x2a\x0f\x0a\x09probe-key\x12\x02v1"
    )
    await raw.send(probe)
    reply = await raw.reader.readexactly(19)
    assert reply == bytes.fromhex("00000009 00000001 02 00") + b"\x12\x07\x0a\x050.0.0"


@pytest.mark.asyncio
async def test_even_stream_id_is_invalid_argument_and_connection_survives(raw: Raw) -> None:
    await raw.send(request_frame(2, "Version"))
    reply = await raw.recv()
    assert reply.stream_id == 2
    assert reply.type == 2
    assert status_of(reply) == (Code.INVALID_ARGUMENT, "StreamID must be odd for client initiated streams")
    await assert_still_serving(raw, 1)


@pytest.mark.asyncio
async def test_reused_stream_id_is_invalid_argument_and_connection_survives(raw: Raw) -> None:
    await assert_still_serving(raw, 5)
    await raw.send(request_frame(3, "Version"))
    reply = await raw.recv()
    assert (reply.stream_id, status_of(reply)) == (
        3,
        (Code.INVALID_ARGUMENT, "StreamID cannot be re-used and must increment"),
    )
    await assert_still_serving(raw, 7)


@pytest.mark.asyncio
async def test_undecodable_envelope_is_invalid_argument(raw: Raw) -> None:
    await raw.send(encode_frame(1, 1, b"\xff\xff\xff\xff"))
    code, message = status_of(await raw.recv())
    assert code == Code.INVALID_ARGUMENT
    assert message.startswith("unmarshal request error")
    await assert_still_serving(raw, 3)


@pytest.mark.asyncio
async def test_garbage_payload_is_invalid_argument_naming_the_message_type(raw: Raw) -> None:
    req = ttrpc_pb2.Request(service=SVC, method="Echo", payload=b"\xff\xff\xff\xff")
    await raw.send(encode_frame(1, 1, req.SerializeToString()))
    code, message = status_of(await raw.recv())
    assert code == Code.INVALID_ARGUMENT
    assert "hypervisor.VersionRequest" in message
    await assert_still_serving(raw, 3)


@pytest.mark.asyncio
async def test_oversized_frame_is_resource_exhausted_on_its_stream(raw: Raw) -> None:
    await raw.send(struct.pack(">IIBB", 5_000_000, 1, 1, 0) + b"\0" * 5_000_000)
    reply = await raw.recv()
    assert reply.stream_id == 1
    assert status_of(reply) == (
        Code.RESOURCE_EXHAUSTED,
        "message length 5000000 exceed maximum message size of 4194304",
    )
    await assert_still_serving(raw, 3)


@pytest.mark.asyncio
async def test_expired_deadline_cancels_the_handler_and_answers_deadline_exceeded(
    running: Running, raw: Raw
) -> None:
    await raw.send(request_frame(1, "Wait", "slow", timeout_nano=20_000_000))
    reply = await raw.recv()
    assert status_of(reply) == (Code.DEADLINE_EXCEEDED, "context deadline exceeded")
    assert running.stub.cancelled == ["slow"]
    await assert_still_serving(raw, 3)


@pytest.mark.asyncio
async def test_streaming_request_and_data_frames_are_refused_without_closing(raw: Raw) -> None:
    await raw.send(request_frame(1, "Echo", "s")[:9] + b"\x02" + request_frame(1, "Echo", "s")[10:])
    code, message = status_of(await raw.recv())
    assert code == Code.UNIMPLEMENTED
    assert "streaming" in message
    await raw.send(encode_frame(1, 3, b"data", 0x1))
    assert status_of(await raw.recv()) == (Code.INVALID_ARGUMENT, "StreamID is no longer active")
    await assert_still_serving(raw, 3)


# -- through the Client -----------------------------------------------------------------


@pytest.mark.asyncio
async def test_unknown_service_is_unimplemented(client: Client) -> None:
    with pytest.raises(RpcError) as info:
        await client.call("hypervisor.Nope", "Version", VersionReq(), VersionResp)
    assert (info.value.code, info.value.message) == (Code.UNIMPLEMENTED, "service hypervisor.Nope")
    await ok_call(client)


@pytest.mark.asyncio
async def test_unknown_method_is_unimplemented(client: Client) -> None:
    with pytest.raises(RpcError) as info:
        await client.call(SVC, "Nope", VersionReq(), VersionResp)
    assert (info.value.code, info.value.message) == (Code.UNIMPLEMENTED, "method Nope")
    await ok_call(client)


@pytest.mark.asyncio
async def test_an_unexpected_exception_reaches_the_client_as_a_generic_error_whose_id_is_logged(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.ERROR, logger="cloud_api_adaptor.ttrpc.server"),
        pytest.raises(RpcError) as info,
    ):
        await client.call(SVC, "Boom", VersionReq(), VersionResp)
    assert info.value.code is Code.INTERNAL
    assert "kaput" not in info.value.message
    match = re.search(r"error id ([0-9a-f]{12})", info.value.message)
    assert match is not None, info.value.message
    logged = [r for r in caplog.records if match.group(1) in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None
    assert "kaput" in str(logged[0].exc_info[1])
    await ok_call(client)


@pytest.mark.asyncio
async def test_handler_errors_map_to_status(client: Client) -> None:
    with pytest.raises(RpcError) as info:
        await client.call(SVC, "Refuse", VersionReq(version="abc"), VersionResp)
    assert (info.value.code, info.value.message) == (Code.NOT_FOUND, "sandbox abc not found")
    with pytest.raises(RpcError) as info:
        await client.call(SVC, "Translated", VersionReq(), VersionResp)
    assert (info.value.code, info.value.message) == (Code.FAILED_PRECONDITION, "translated")
    await ok_call(client)


@pytest.mark.asyncio
async def test_oversized_request_is_refused_locally(client: Client) -> None:
    with pytest.raises(RpcError) as info:
        await client.call(SVC, "Echo", VersionReq(version="x" * (5 << 20)), VersionResp)
    assert info.value.code == Code.RESOURCE_EXHAUSTED
    assert "exceed maximum message size of 4194304" in info.value.message
    await ok_call(client)


@pytest.mark.asyncio
async def test_oversized_reply_is_replaced_by_resource_exhausted(client: Client) -> None:
    with pytest.raises(RpcError) as info:
        await client.call(SVC, "Big", VersionReq(), VersionResp)
    assert info.value.code == Code.RESOURCE_EXHAUSTED
    await ok_call(client)


@pytest.mark.asyncio
async def test_deadline_reaches_the_handler(client: Client) -> None:
    assert (await client.call(SVC, "Deadline", VersionReq(), VersionResp, timeout=60)).version == "positive"
    assert (await client.call(SVC, "Deadline", VersionReq(), VersionResp)).version == "none"


@pytest.mark.asyncio
async def test_client_deadline_fails_locally_and_server_cancels(running: Running, client: Client) -> None:
    with pytest.raises(RpcError) as info:
        await client.call(SVC, "Wait", VersionReq(version="never"), VersionResp, timeout=0.02)
    assert info.value.code == Code.DEADLINE_EXCEEDED
    await ok_call(client)


@pytest.mark.asyncio
async def test_metadata_round_trip(client: Client) -> None:
    reply = await client.call(
        SVC, "Metadata", VersionReq(), VersionResp, metadata=[("Trace", "1"), ("x", "y"), ("trace", "2")]
    )
    assert reply.version == "trace=1;x=y;trace=2"


@pytest.mark.asyncio
async def test_concurrent_calls_are_answered_out_of_order(running: Running, client: Client) -> None:
    stub = running.stub
    first = asyncio.create_task(client.call(SVC, "Wait", VersionReq(version="a"), VersionResp))
    second = asyncio.create_task(client.call(SVC, "Wait", VersionReq(version="b"), VersionResp))
    await stub.start_signal("a").wait()
    await stub.start_signal("b").wait()
    # Both long-polls are pending; a third call still goes through.
    await ok_call(client)
    stub.gate("b").set()
    assert (await second).version == "released b"
    assert not first.done()
    stub.gate("a").set()
    assert (await first).version == "released a"


@pytest.mark.asyncio
async def test_many_concurrent_calls_on_one_connection(client: Client) -> None:
    replies = await asyncio.gather(
        *(client.call(SVC, "Echo", VersionReq(version=str(i)), VersionResp) for i in range(200))
    )
    assert [r.version for r in replies] == [str(i) for i in range(200)]


# -- lifecycle ----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_graceful_close_finishes_in_flight_call_and_refuses_new_ones(tmp_path: Path) -> None:
    stub = Stub()
    path = tmp_path / "g.sock"
    server = Server()
    server.add_service(SVC, stub.methods())
    await server.start_unix(path)
    client = await Client.connect_unix(path)
    try:
        call = asyncio.create_task(client.call(SVC, "Wait", VersionReq(version="inflight"), VersionResp))
        await stub.start_signal("inflight").wait()
        server.close()
        closing = asyncio.create_task(server.wait_closed(grace=30))
        with pytest.raises(RpcError) as info:
            await Client.connect_unix(path)
        assert info.value.code == Code.UNAVAILABLE
        # A new call on the draining connection is refused; the in-flight one still completes.
        with pytest.raises(RpcError) as refused:
            await client.call(SVC, "Echo", VersionReq(version="late"), VersionResp)
        assert refused.value.code == Code.UNAVAILABLE
        stub.gate("inflight").set()
        assert (await call).version == "released inflight"
        await closing
        assert stub.cancelled == []
        assert not path.exists()
    finally:
        await client.aclose()
        await server.wait_closed(grace=0)


@pytest.mark.asyncio
async def test_grace_expiry_cancels_calls_and_fails_pending_client_calls(tmp_path: Path) -> None:
    stub = Stub()
    path = tmp_path / "g.sock"
    server = Server()
    server.add_service(SVC, stub.methods())
    await server.start_unix(path)
    async with await Client.connect_unix(path) as client:
        call = asyncio.create_task(client.call(SVC, "Wait", VersionReq(version="stuck"), VersionResp))
        await stub.start_signal("stuck").wait()
        await server.wait_closed(grace=0.01)
        assert stub.cancelled == ["stuck"]
        with pytest.raises(RpcError) as info:
            await call
        assert info.value.code == Code.UNAVAILABLE
        with pytest.raises(RpcError) as after:
            await ok_call(client)
        assert after.value.code == Code.UNAVAILABLE


@pytest.mark.asyncio
async def test_client_disconnect_cancels_its_calls(running: Running) -> None:
    client = await Client.connect_unix(running.path)
    call = asyncio.create_task(client.call(SVC, "Wait", VersionReq(version="orphan"), VersionResp))
    await running.stub.start_signal("orphan").wait()
    await client.aclose()
    with pytest.raises(RpcError):
        await call
    await eventually(lambda: "orphan" in running.stub.cancelled, "the orphaned call cancelled")


@pytest.mark.asyncio
async def test_start_unix_creates_dirs_sets_mode_and_replaces_stale_socket(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "s.sock"
    path.parent.mkdir(parents=True)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(os.fspath(path))
    stale.close()  # the file stays, nobody listens: stale
    async with Server() as server:
        server.add_service(SVC, Stub().methods())
        await server.start_unix(path, mode=0o660)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
        async with await Client.connect_unix(path) as client:
            await ok_call(client)
        # A second server must not steal a live socket.
        with pytest.raises(OSError, match="in use"):
            await Server().start_unix(path)
    assert not path.exists()


@pytest.mark.asyncio
async def test_start_unix_refuses_to_replace_a_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "not-a-socket"
    path.write_text("keep me")
    with pytest.raises(FileExistsError):
        await Server().start_unix(path)
    assert path.read_text() == "keep me"


@pytest.mark.asyncio
async def test_connect_to_missing_socket_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(RpcError) as info:
        await Client.connect_unix(tmp_path / "missing.sock")
    assert info.value.code == Code.UNAVAILABLE


@pytest.mark.asyncio
async def test_tls_over_tcp_and_start_tls_takeover() -> None:
    from cloud_api_adaptor.proxy.tls import (
        issue_server_cert,
        make_client_context,
        make_server_context,
        new_ca,
    )

    ca = new_ca()
    server_ctx = make_server_context(server=issue_server_cert(ca, "agent"), client_ca_pem=None, profile=None)
    client_ctx = make_client_context(ca_pem=ca.cert_pem, client=None, profile=None)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    async with Server() as server:
        server.add_service(SVC, Stub().methods())
        await server.start_on(listener, ssl=server_ctx)
        async with await Client.connect_tcp("127.0.0.1", port, ssl=client_ctx, server_hostname="agent") as c:
            await ok_call(c)
        # Upgrade a plain connection with start_tls, then hand the transport to a Client.
        loop = asyncio.get_running_loop()
        plain, protocol = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        tls = await loop.start_tls(plain, protocol, client_ctx, server_hostname="agent")
        assert tls is not None  # no isinstance: uvloop's transports do not subclass asyncio.Transport
        async with Client.from_transport(tls) as c:
            await ok_call(c)
