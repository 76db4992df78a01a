"""Client and Server through the in-memory pair (no listening socket, no files)."""

from __future__ import annotations

import asyncio

import pytest

from cloud_api_adaptor._pb import hypervisor_pb2 as hv
from cloud_api_adaptor.ttrpc import CallContext, Client, Code, RpcError, Server, UnaryMethod
from cloud_api_adaptor.ttrpc.testing import ClientFor


def make_server(seen: list[CallContext]) -> Server:
    async def version(req: hv.VersionRequest, ctx: CallContext) -> hv.VersionResponse:
        seen.append(ctx)
        return hv.VersionResponse(version="0.0.0")

    server = Server()
    server.add_service("hypervisor.Hypervisor", {"Version": UnaryMethod(hv.VersionRequest, version)})
    return server


@pytest.mark.asyncio
async def test_pair_carries_calls_with_odd_increasing_stream_ids() -> None:
    seen: list[CallContext] = []
    server = make_server(seen)
    async with ClientFor(server) as client:
        for _ in range(3):
            reply = await client.call(
                "hypervisor.Hypervisor",
                "Version",
                hv.VersionRequest(),
                hv.VersionResponse,
                metadata={"K": "v"},
            )
            assert reply.version == "0.0.0"
    await server.wait_closed()
    assert [ctx.stream_id for ctx in seen] == [1, 3, 5]
    assert {(ctx.service, ctx.method, ctx.metadata.first("k")) for ctx in seen} == {
        ("hypervisor.Hypervisor", "Version", "v")
    }


@pytest.mark.asyncio
async def test_duplicate_service_is_rejected() -> None:
    server = make_server([])
    with pytest.raises(ValueError, match="duplicate service"):
        server.add_service("hypervisor.Hypervisor", {})


@pytest.mark.asyncio
async def test_closed_client_fails_calls_with_unavailable() -> None:
    server = make_server([])
    async with ClientFor(server) as client:
        await client.aclose()
        with pytest.raises(RpcError) as info:
            await client.call("hypervisor.Hypervisor", "Version", hv.VersionRequest(), hv.VersionResponse)
        assert info.value.code == Code.UNAVAILABLE
    await server.wait_closed()


@pytest.mark.asyncio
async def test_from_transport_takes_over_an_existing_connection() -> None:
    import socket

    server = make_server([])
    a, b = socket.socketpair()
    await server.serve_socket(a)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_unix_connection(asyncio.Protocol, sock=b)
    client = Client.from_transport(transport)
    try:
        reply = await client.call("hypervisor.Hypervisor", "Version", hv.VersionRequest(), hv.VersionResponse)
        assert reply.version == "0.0.0"
    finally:
        await client.aclose()
        await server.wait_closed()


@pytest.mark.asyncio
async def test_expired_timeout_fails_before_sending() -> None:
    seen: list[CallContext] = []
    server = make_server(seen)
    async with ClientFor(server) as client:
        with pytest.raises(RpcError) as info:
            await client.call(
                "hypervisor.Hypervisor", "Version", hv.VersionRequest(), hv.VersionResponse, timeout=0
            )
        assert info.value.code == Code.DEADLINE_EXCEEDED
    await server.wait_closed()
    assert seen == []


@pytest.mark.asyncio
async def test_client_fails_only_the_stream_of_an_oversized_reply() -> None:
    import socket

    from cloud_api_adaptor.ttrpc.framing import FrameDecoder, encode_frame
    from cloud_api_adaptor.ttrpc.messages import encode_response

    ours, peer = socket.socketpair()
    client = await Client.connect_socket(ours)
    reader, writer = await asyncio.open_unix_connection(sock=peer)
    try:
        first = asyncio.create_task(
            client.call("hypervisor.Hypervisor", "Version", hv.VersionRequest(), hv.VersionResponse)
        )
        second = asyncio.create_task(
            client.call("hypervisor.Hypervisor", "Version", hv.VersionRequest(), hv.VersionResponse)
        )
        decoder = FrameDecoder()
        frames: list[object] = []
        while len(frames) < 2:
            frames.extend(decoder.feed(await reader.read(65536)))
        # Stream 1 gets a frame announcing 5 MB; stream 3 a normal reply.
        writer.write(b"\x00\x4c\x4b\x40\x00\x00\x00\x01\x02\x00" + b"\0" * 5_000_000)
        writer.write(
            encode_frame(3, 2, encode_response(hv.VersionResponse(version="ok").SerializeToString()))
        )
        await writer.drain()
        with pytest.raises(RpcError) as info:
            await first
        assert info.value.code == Code.RESOURCE_EXHAUSTED
        assert (await second).version == "ok"
    finally:
        await client.aclose()
        writer.close()
        await writer.wait_closed()
