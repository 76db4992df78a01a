"""The whole agent channel on loopback: shim -> AgentProxy (unix) -> mTLS -> forwarder -> agent (unix).

The agent is a frame-level stand-in that records every request exactly as it
arrived, so the tests assert bytes on the wire: replies, pass-through frames,
and the two requests the forwarder rewrites.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio

from cloud_api_adaptor._pb import agent_pb2, health_pb2, ttrpc_pb2
from cloud_api_adaptor.apf import ApfConfig
from cloud_api_adaptor.errors import DeadlineExceeded
from cloud_api_adaptor.proxy.agent_proxy import AgentChannel, AgentProxy
from cloud_api_adaptor.proxy.testing import StubAgent, StubClient
from cloud_api_adaptor.proxy.tls import AgentTls, make_client_context, new_ca
from cloud_api_adaptor.settings import TlsSettings
from cloud_api_adaptor.testing.eventually import eventually
from cloud_api_adaptor.ttrpc import Client
from cloud_api_adaptor.vm.forwarder import ForwarderSettings, run_forwarder

INSTANCE = "podvm-e2e-0a1b2c"
PODNS = "/run/netns/podns"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningForwarder:
    stop: asyncio.Event
    task: asyncio.Task[None]
    address: tuple[str, int]

    async def aclose(self) -> None:
        self.stop.set()
        await self.task


@dataclass
class Channel:
    root: Path
    agent: StubAgent
    tls: AgentTls
    apf: ApfConfig
    disable_tls: bool = False
    forwarders: list[RunningForwarder] = field(default_factory=list)
    proxies: list[AgentProxy] = field(default_factory=list)

    async def start_forwarder(self, port: int = 0) -> RunningForwarder:
        settings = ForwarderSettings(
            listen=f"127.0.0.1:{port}",
            kata_agent_socket=self.agent.path,
            pod_namespace=PODNS,
            disable_tls=self.disable_tls,
        )
        stop = asyncio.Event()
        ready: asyncio.Future[tuple[str, int]] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(run_forwarder(settings, stop, ready.set_result, apf=self.apf))
        waiters: list[asyncio.Future[object]] = [ready, task]  # type: ignore[list-item]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
        fwd = RunningForwarder(stop, task, ready.result())
        self.forwarders.append(fwd)
        return fwd

    def proxy(self, name: str = "sb") -> AgentProxy:
        proxy = AgentChannel(self.tls, dial_timeout=30).new_proxy(self.root / name / "agent.ttrpc", INSTANCE)
        self.proxies.append(proxy)
        return proxy

    async def ready_proxy(self) -> AgentProxy:
        fwd = self.forwarders[-1] if self.forwarders else await self.start_forwarder()
        proxy = self.proxy()
        await proxy.start(*fwd.address, timeout=30)
        return proxy


async def make_channel(root: Path, *, disable_tls: bool = False) -> Channel:
    agent = StubAgent(root / "agent.sock")
    await agent.start()
    tls = AgentTls.from_settings(TlsSettings(disabled=disable_tls), root / "state")
    apf = ApfConfig.from_mapping(
        {"pod-namespace": "default", "pod-name": "web", **tls.apf_tls_fields(INSTANCE)}
    )
    return Channel(root, agent, tls, apf, disable_tls)


async def close_channel(ch: Channel) -> None:
    for proxy in ch.proxies:
        await proxy.aclose()
    for fwd in ch.forwarders:
        await fwd.aclose()
    await ch.agent.aclose()


@pytest_asyncio.fixture
async def channel(short_tmp: Path) -> AsyncIterator[Channel]:
    ch = await make_channel(short_tmp)
    yield ch
    await close_channel(ch)


def check_request() -> bytes:
    return ttrpc_pb2.Request(
        service="grpc.Health",
        method="Check",
        payload=health_pb2.CheckRequest().SerializeToString(),
        timeout_nano=30_000_000_000,
        metadata=[ttrpc_pb2.KeyValue(key="traceparent", value="00-abc-def-01")],
    ).SerializeToString()


@pytest.mark.asyncio
async def test_health_check_crosses_the_channel_byte_for_byte(channel: Channel) -> None:
    proxy = await channel.ready_proxy()
    client = await StubClient.connect_unix(proxy.socket_path)
    try:
        raw = check_request()
        reply = await client.send_request(raw)
        assert reply.SerializeToString() == channel.agent.answer(ttrpc_pb2.Request.FromString(raw))
        assert (
            health_pb2.HealthCheckResponse.FromString(reply.payload).status
            == health_pb2.HealthCheckResponse.SERVING
        )
        assert [r.raw for r in channel.agent.requests] == [raw]
    finally:
        await client.aclose()


@pytest.mark.asyncio
async def test_the_project_ttrpc_client_works_through_the_channel(channel: Channel) -> None:
    proxy = await channel.ready_proxy()
    async with await Client.connect_unix(proxy.socket_path) as client:
        replies = await asyncio.gather(
            *(
                client.call("grpc.Health", "Check", health_pb2.CheckRequest(), health_pb2.HealthCheckResponse)
                for _ in range(20)
            )
        )
        assert {r.status for r in replies} == {health_pb2.HealthCheckResponse.SERVING}
        version = await client.call(
            "grpc.Health", "Version", health_pb2.CheckRequest(), health_pb2.VersionCheckResponse
        )
        assert version.agent_version == "stub-agent"


@pytest.mark.asyncio
async def test_the_forwarder_rewrites_create_sandbox_and_create_container_only(channel: Channel) -> None:
    proxy = await channel.ready_proxy()
    client = await StubClient.connect_unix(proxy.socket_path)
    try:
        sandbox = agent_pb2.CreateSandboxRequest(
            hostname="web", dns=["nameserver 10.96.0.10"], sandbox_id="sb"
        )
        container = agent_pb2.CreateContainerRequest(container_id="c1")
        container.OCI.Linux.Namespaces.add(Type="network", Path="/var/run/netns/cni-1234")
        container.OCI.Linux.Namespaces.add(Type="ipc", Path="")
        start = agent_pb2.StartContainerRequest(container_id="c1")
        sent = [
            ttrpc_pb2.Request(
                service="grpc.AgentService", method=m, payload=p.SerializeToString()
            ).SerializeToString()
            for m, p in (
                ("CreateSandbox", sandbox),
                ("CreateContainer", container),
                ("StartContainer", start),
            )
        ]
        await asyncio.gather(*(client.send_request(raw) for raw in sent))
        seen = {r.method: r for r in channel.agent.requests}
        assert list(agent_pb2.CreateSandboxRequest.FromString(seen["CreateSandbox"].payload).dns) == []
        assert agent_pb2.CreateSandboxRequest.FromString(seen["CreateSandbox"].payload).hostname == "web"
        namespaces = agent_pb2.CreateContainerRequest.FromString(
            seen["CreateContainer"].payload
        ).OCI.Linux.Namespaces
        assert [(n.Type, n.Path) for n in namespaces] == [("ipc", ""), ("network", PODNS)]
        assert seen["StartContainer"].raw == sent[2]
    finally:
        await client.aclose()


async def refused(ch: Channel, ctx: ssl.SSLContext) -> None:
    host, port = ch.forwarders[-1].address
    with pytest.raises((ConnectionError, ssl.SSLError, OSError)):
        client = await StubClient.connect_tcp(host, port, ctx, INSTANCE)
        try:
            await client.send_request(check_request())
        finally:
            await client.aclose()


@pytest.mark.asyncio
async def test_mtls_refuses_clients_without_a_trusted_certificate(channel: Channel, short_tmp: Path) -> None:
    await channel.start_forwarder()
    trust = channel.tls.ca_cert_pem
    await refused(channel, make_client_context(ca_pem=trust, client=None, profile=None))
    # Another daemon's client certificate (its own state dir), trusting our CA for the server side.
    stranger = AgentTls.from_settings(TlsSettings(), short_tmp / "other-state")
    stranger_ctx = stranger.client_context()
    assert stranger_ctx is not None and trust is not None
    stranger_ctx.load_verify_locations(cadata=trust.decode())
    await refused(channel, stranger_ctx)
    assert channel.agent.requests == []


@pytest.mark.asyncio
async def test_the_proxy_refuses_a_forwarder_with_a_foreign_certificate(channel: Channel) -> None:
    other_ca = new_ca()
    proxy = AgentProxy(
        channel.root / "x" / "agent.ttrpc",
        make_client_context(ca_pem=other_ca.cert_pem, client=None, profile=None),
        INSTANCE,
    )
    channel.proxies.append(proxy)
    fwd = await channel.start_forwarder()
    with pytest.raises(DeadlineExceeded, match="failed to verify certificate"):
        await proxy.start(*fwd.address, timeout=0.5)


@pytest.mark.asyncio
async def test_start_waits_for_the_vm_and_returns_once_the_forwarder_listens(channel: Channel) -> None:
    port = free_port()
    proxy = channel.proxy()
    starting = asyncio.create_task(proxy.start("127.0.0.1", port, timeout=60))
    await eventually(lambda: proxy.stats.upstream_failures >= 2, "two refused dials")
    assert not starting.done()
    await channel.start_forwarder(port)
    await starting
    client = await StubClient.connect_unix(proxy.socket_path)
    try:
        assert await client.health_check() == health_pb2.HealthCheckResponse.SERVING
    finally:
        await client.aclose()


@pytest.mark.asyncio
async def test_start_times_out_when_no_forwarder_ever_listens(channel: Channel) -> None:
    port = free_port()
    proxy = channel.proxy()
    with pytest.raises(
        DeadlineExceeded, match=f"failed to establish agent proxy connection to 127.0.0.1:{port}"
    ):
        await proxy.start("127.0.0.1", port, timeout=0.3)
    assert not proxy.socket_path.exists()


@pytest.mark.asyncio
async def test_a_new_shim_connection_works_after_the_forwarder_restarts(channel: Channel) -> None:
    first = await channel.start_forwarder()
    proxy = channel.proxy()
    await proxy.start(*first.address, timeout=30)
    old = await StubClient.connect_unix(proxy.socket_path)
    assert await old.health_check() == health_pb2.HealthCheckResponse.SERVING
    await first.aclose()
    await old.closed  # the VM connection dropped, and with it this shim connection
    await channel.start_forwarder(first.address[1])
    new = await StubClient.connect_unix(proxy.socket_path)
    try:
        assert await new.health_check() == health_pb2.HealthCheckResponse.SERVING
    finally:
        await new.aclose()


@pytest.mark.asyncio
async def test_disable_tls_on_both_ends(short_tmp: Path) -> None:
    ch = await make_channel(short_tmp, disable_tls=True)
    try:
        assert ch.apf.tls_server_cert == "" and ch.apf.tls_client_ca == ""
        proxy = await ch.ready_proxy()
        client = await StubClient.connect_unix(proxy.socket_path)
        try:
            assert await client.health_check() == health_pb2.HealthCheckResponse.SERVING
        finally:
            await client.aclose()
    finally:
        await close_channel(ch)


@pytest.mark.asyncio
async def test_the_forwarder_waits_for_the_agent_socket_to_appear(short_tmp: Path) -> None:
    ch = await make_channel(short_tmp)
    await ch.agent.aclose()  # the agent is not up yet
    try:
        proxy = await ch.ready_proxy()
        client = await StubClient.connect_unix(proxy.socket_path)
        checking = asyncio.ensure_future(client.health_check())
        # the request has crossed the proxy: the forwarder holds it while the agent is down
        await eventually(lambda: proxy.stats.bytes_in > 0, "the request relayed to the forwarder")
        assert not checking.done()
        await ch.agent.start()
        assert await checking == health_pb2.HealthCheckResponse.SERVING
        await client.aclose()
    finally:
        await close_channel(ch)


async def echo_through(proxy: AgentProxy) -> None:
    """Payloads from one byte to 3 MiB, concurrently: frames split across reads and TLS records."""
    client = await StubClient.connect_unix(proxy.socket_path)
    try:
        sizes = [1, 70_000, 1 << 20, 3 << 20] + [64 << 10] * 8
        payloads = [os.urandom(n) for n in sizes]
        replies = await asyncio.gather(*(client.call("test.Echo", "Echo", p) for p in payloads))
        assert [r.payload for r in replies] == payloads
    finally:
        await client.aclose()


@pytest.mark.asyncio
async def test_large_payloads_cross_the_channel_intact(channel: Channel) -> None:
    await echo_through(await channel.ready_proxy())


@pytest.mark.timeout(120)  # a broken transport hand-off hangs rather than fails
def test_the_channel_on_uvloop(short_tmp: Path) -> None:
    """Proxy and forwarder run on uvloop in production (``aio.run``): the same bytes on the wire."""
    uvloop = pytest.importorskip("uvloop")

    async def main() -> None:
        ch = await make_channel(short_tmp)
        try:
            proxy = await ch.ready_proxy()
            client = await StubClient.connect_unix(proxy.socket_path)
            try:
                raw = check_request()
                reply = await client.send_request(raw)
                assert reply.SerializeToString() == ch.agent.answer(ttrpc_pb2.Request.FromString(raw))
                sandbox = agent_pb2.CreateSandboxRequest(hostname="web", dns=["nameserver 10.96.0.10"])
                await client.call("grpc.AgentService", "CreateSandbox", sandbox.SerializeToString())
            finally:
                await client.aclose()
            seen = {r.method: r for r in ch.agent.requests}
            assert seen["Check"].raw == raw
            created = agent_pb2.CreateSandboxRequest.FromString(seen["CreateSandbox"].payload)
            assert (list(created.dns), created.hostname) == ([], "web")
            await echo_through(proxy)
        finally:
            await close_channel(ch)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
