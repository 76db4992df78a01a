"""The ttrpc client and server on uvloop, which ``serve`` uses by default.

uvloop's transports implement the asyncio interfaces without subclassing them,
so nothing in the frame loop may depend on ``isinstance(transport, asyncio.Transport)``.
Each test runs its own uvloop loop through ``asyncio.Runner``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from cloud_api_adaptor._pb import hypervisor_pb2 as hv
from cloud_api_adaptor.ttrpc import CallContext, Client, Code, RpcError, Server, UnaryMethod
from cloud_api_adaptor.ttrpc.testing import ClientFor

uvloop = pytest.importorskip("uvloop")
pytestmark = pytest.mark.timeout(60)  # a broken transport hand-off hangs rather than fails

T = TypeVar("T")
HV = "hypervisor.Hypervisor"


def run_on_uvloop(main: Coroutine[Any, Any, T]) -> T:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def make_server() -> Server:
    async def version(req: hv.VersionRequest, ctx: CallContext) -> hv.VersionResponse:
        assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")
        return hv.VersionResponse(version="0.0.0")

    async def stop_vm(req: hv.StopVMRequest, ctx: CallContext) -> hv.StopVMResponse:
        await asyncio.sleep(3600)  # only a deadline ends this
        return hv.StopVMResponse()

    server = Server()
    server.add_service(
        HV,
        {
            "Version": UnaryMethod(hv.VersionRequest, version),
            "StopVM": UnaryMethod(hv.StopVMRequest, stop_vm),
        },
    )
    return server


def test_calls_over_the_in_memory_pair_work_on_uvloop() -> None:
    async def main() -> list[str]:
        async with make_server() as server, ClientFor(server) as client:
            replies = await asyncio.gather(
                *(client.call(HV, "Version", hv.VersionRequest(), hv.VersionResponse) for _ in range(5))
            )
            return [r.version for r in replies]

    assert run_on_uvloop(main()) == ["0.0.0"] * 5


def test_a_new_connection_per_call_on_a_unix_socket_works_on_uvloop(short_tmp: Path) -> None:
    sock = short_tmp / "hv.sock"

    async def main() -> list[str]:
        versions = []
        async with make_server() as server:
            await server.start_unix(sock)
            for _ in range(3):
                async with await Client.connect_unix(sock) as client:
                    reply = await client.call(HV, "Version", hv.VersionRequest(), hv.VersionResponse)
                    versions.append(reply.version)
        return versions

    assert run_on_uvloop(main()) == ["0.0.0"] * 3
    assert not sock.exists()


def test_deadlines_cancel_the_handler_on_uvloop() -> None:
    async def main() -> tuple[Code, str]:
        async with make_server() as server, ClientFor(server) as client:
            with pytest.raises(RpcError) as info:
                await client.call(HV, "StopVM", hv.StopVMRequest(id="x"), hv.StopVMResponse, timeout=0.05)
            # The connection keeps serving after the expired call.
            reply = await client.call(HV, "Version", hv.VersionRequest(), hv.VersionResponse)
            return info.value.code, reply.version

    assert run_on_uvloop(main()) == (Code.DEADLINE_EXCEEDED, "0.0.0")
