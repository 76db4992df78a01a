"""The development agent answers a one-container pod as the Kata shim drives it, over a real socket."""

from __future__ import annotations

import asyncio
import signal
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from google.protobuf import empty_pb2
from google.protobuf.message import Message

from cloud_api_adaptor._pb import agent_pb2, health_pb2
from cloud_api_adaptor.testing.eventually import eventually
from cloud_api_adaptor.ttrpc import Client, Code, RpcError
from cloud_api_adaptor.vm.devagent import run_devagent

A = "grpc.AgentService"


class NumberedClient:
    """Sends each request with ``devagent-seq: <stream>/<n>``, as the shim simulator does."""

    def __init__(self, client: Client, stream: str = "pod") -> None:
        self.client = client
        self.stream = stream
        self.n = 0

    async def call(
        self, method: str, request: Message, reply: type[Message], *, n: int | None = None
    ) -> Message:
        if n is None:
            self.n += 1
            n = self.n
        service = "grpc.Health" if method == "Check" else A
        return await self.client.call(
            service, method, request, reply, metadata={"devagent-seq": f"{self.stream}/{n}"}
        )


async def in_flight(c: NumberedClient) -> None:
    """Let the tasks just created send their requests, then a round trip: the agent has them all."""
    await asyncio.sleep(0)
    await c.call("Check", health_pb2.CheckRequest(), health_pb2.HealthCheckResponse)


@pytest_asyncio.fixture
async def agent(tmp_path: Path) -> AsyncIterator[tuple[NumberedClient, Path]]:
    sock, root = tmp_path / "agent.sock", tmp_path / "root"
    stop = asyncio.Event()
    serving = asyncio.create_task(run_devagent(sock, stop, root))
    try:
        await eventually(sock.exists, "the agent's socket", interval=0.005)
        async with await Client.connect_unix(sock) as client:
            yield NumberedClient(client), root
    finally:
        stop.set()
        await serving


@pytest.mark.asyncio
async def test_one_container_pod_lives_and_stops_as_the_shim_drives_it(
    agent: tuple[NumberedClient, Path],
) -> None:
    c, root = agent
    E = empty_pb2.Empty
    check = await c.call("Check", health_pb2.CheckRequest(), health_pb2.HealthCheckResponse)
    assert check.status == health_pb2.HealthCheckResponse.SERVING  # type: ignore[attr-defined]
    await c.call("CreateSandbox", agent_pb2.CreateSandboxRequest(sandbox_id="sb", hostname="pod"), E)
    assert sorted(p.name for p in (root / "run" / "sandbox-ns").iterdir()) == ["ipc", "uts"]
    await c.call(
        "GetGuestDetails", agent_pb2.GuestDetailsRequest(mem_block_size=True), agent_pb2.GuestDetailsResponse
    )
    iface = agent_pb2.Interface(
        name="eth0", mtu=1450, IPAddresses=[agent_pb2.IPAddress(address="10.0.0.2", mask="24")]
    )
    assert (
        await c.call(
            "UpdateInterface", agent_pb2.UpdateInterfaceRequest(interface=iface), agent_pb2.Interface
        )
        == iface
    )
    routes = agent_pb2.Routes(Routes=[agent_pb2.Route(dest="0.0.0.0/0", gateway="10.0.0.1", device="eth0")])
    await c.call("UpdateRoutes", agent_pb2.UpdateRoutesRequest(routes=routes), agent_pb2.Routes)
    listed = await c.call("ListInterfaces", agent_pb2.ListInterfacesRequest(), agent_pb2.Interfaces)
    assert list(listed.Interfaces) == [iface]  # type: ignore[attr-defined]
    assert await c.call("ListRoutes", agent_pb2.ListRoutesRequest(), agent_pb2.Routes) == routes
    hosts = "/run/kata-containers/shared/containers/ctr/hosts"
    body = b"127.0.0.1 localhost\n" * 10
    for offset in range(0, len(body), 64):  # CopyFile in chunks, as the shim sends big files
        chunk = body[offset : offset + 64]
        req = agent_pb2.CopyFileRequest(
            path=hosts, file_size=len(body), file_mode=0o100644, dir_mode=0o750, offset=offset, data=chunk
        )
        await c.call("CopyFile", req, E)
    copied = root / hosts.lstrip("/")
    assert copied.read_bytes() == body and stat.S_IMODE(copied.stat().st_mode) == 0o644
    await c.call("CreateContainer", agent_pb2.CreateContainerRequest(container_id="ctr", exec_id="ctr"), E)
    await c.call("StartContainer", agent_pb2.StartContainerRequest(container_id="ctr"), E)
    oom = asyncio.create_task(c.call("GetOOMEvent", agent_pb2.GetOOMEventRequest(), agent_pb2.OOMEvent))
    wait = asyncio.create_task(
        c.call(
            "WaitProcess",
            agent_pb2.WaitProcessRequest(container_id="ctr", exec_id="ctr"),
            agent_pb2.WaitProcessResponse,
        )
    )
    await in_flight(c)
    for _ in range(3):  # keep-alives go through while both long-polls are open
        await c.call("Check", health_pb2.CheckRequest(), health_pb2.HealthCheckResponse)
    assert not wait.done() and not oom.done()
    sig0 = agent_pb2.SignalProcessRequest(container_id="ctr", exec_id="ctr", signal=0)
    await c.call("SignalProcess", sig0, E)  # a probe: the container keeps running
    assert not wait.done()
    await c.call(
        "SignalProcess", agent_pb2.SignalProcessRequest(container_id="ctr", signal=signal.SIGTERM), E
    )
    assert (await wait).status == 128 + signal.SIGTERM  # type: ignore[attr-defined]
    await c.call("RemoveContainer", agent_pb2.RemoveContainerRequest(container_id="ctr"), E)
    await c.call("RemoveStaleVirtiofsShareMounts", agent_pb2.RemoveStaleVirtiofsShareMountsRequest(), E)
    assert not oom.done()
    await c.call("DestroySandbox", agent_pb2.DestroySandboxRequest(), E)
    with pytest.raises(RpcError) as err:
        await oom
    assert err.value.code == Code.INTERNAL  # what kata-agent answers once its event channel closes
    assert list((root / "run" / "sandbox-ns").iterdir()) == []


@pytest.mark.asyncio
async def test_destroying_the_sandbox_completes_wait_process(agent: tuple[NumberedClient, Path]) -> None:
    c, _ = agent
    E = empty_pb2.Empty
    await c.call("CreateSandbox", agent_pb2.CreateSandboxRequest(sandbox_id="sb"), E)
    await c.call("CreateContainer", agent_pb2.CreateContainerRequest(container_id="ctr", exec_id="ctr"), E)
    await c.call("StartContainer", agent_pb2.StartContainerRequest(container_id="ctr"), E)
    wait = asyncio.create_task(
        c.call(
            "WaitProcess",
            agent_pb2.WaitProcessRequest(container_id="ctr", exec_id="ctr"),
            agent_pb2.WaitProcessResponse,
        )
    )
    await in_flight(c)
    await c.call("DestroySandbox", agent_pb2.DestroySandboxRequest(), E)
    assert (await wait).status == 128 + signal.SIGKILL  # type: ignore[attr-defined]


@pytest.mark.asyncio
async def test_a_duplicated_request_is_refused_and_a_lost_one_fails_destroy_sandbox(
    agent: tuple[NumberedClient, Path],
) -> None:
    c, _ = agent
    E = empty_pb2.Empty
    await c.call("CreateSandbox", agent_pb2.CreateSandboxRequest(sandbox_id="sb"), E)  # 1
    with pytest.raises(RpcError) as dup:
        await c.call("Check", health_pb2.CheckRequest(), health_pb2.HealthCheckResponse, n=1)
    assert dup.value.code == Code.DATA_LOSS and "received twice" in dup.value.message
    await c.call("Check", health_pb2.CheckRequest(), health_pb2.HealthCheckResponse, n=3)  # 2 never arrives
    with pytest.raises(RpcError) as lost:
        await c.call("DestroySandbox", agent_pb2.DestroySandboxRequest(), E, n=4)
    assert lost.value.code == Code.DATA_LOSS and "[2]" in lost.value.message


@pytest.mark.asyncio
@pytest.mark.parametrize("path", ["/etc/passwd", "/run/../etc/x", "run/x", "/run/a/./b"])
async def test_copy_file_refuses_paths_outside_run(agent: tuple[NumberedClient, Path], path: str) -> None:
    c, root = agent
    with pytest.raises(RpcError) as err:
        await c.call(
            "CopyFile", agent_pb2.CopyFileRequest(path=path, file_size=1, data=b"x"), empty_pb2.Empty
        )
    assert err.value.code == Code.INVALID_ARGUMENT and "path" in err.value.message
    assert not root.exists() or not any(root.rglob("*"))


@pytest.mark.asyncio
async def test_containers_need_a_sandbox_and_unknown_ones_are_not_found(
    agent: tuple[NumberedClient, Path],
) -> None:
    c, _ = agent
    with pytest.raises(RpcError) as err:
        await c.call("CreateContainer", agent_pb2.CreateContainerRequest(container_id="x"), empty_pb2.Empty)
    assert err.value.code == Code.FAILED_PRECONDITION
    with pytest.raises(RpcError) as err:
        await c.call(
            "WaitProcess", agent_pb2.WaitProcessRequest(container_id="x"), agent_pb2.WaitProcessResponse
        )
    assert err.value.code == Code.NOT_FOUND


@pytest.mark.asyncio
async def test_like_kata_agent_create_sandbox_removes_the_socket_but_the_open_connection_lives(
    tmp_path: Path,
) -> None:
    sock = tmp_path / "agent.sock"
    stop = asyncio.Event()
    serving = asyncio.create_task(run_devagent(sock, stop, tmp_path / "root", like_kata_agent=True))
    try:
        await eventually(sock.exists, "the agent's socket", interval=0.005)
        async with await Client.connect_unix(sock) as client:
            c = NumberedClient(client)
            await c.call("CreateSandbox", agent_pb2.CreateSandboxRequest(sandbox_id="sb"), empty_pb2.Empty)
            assert not sock.exists()  # no second connection can be opened
            check = await c.call("Check", health_pb2.CheckRequest(), health_pb2.HealthCheckResponse)
            assert check.status == health_pb2.HealthCheckResponse.SERVING  # type: ignore[attr-defined]
    finally:
        stop.set()
        await serving
