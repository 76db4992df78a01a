"""Running pods survive the daemon: a hand-over, a kill -9 and a SIGTERM restart, as a shim sees them.

The "shim" here is a client that holds one agent-socket connection for the
whole test (as Kata's shim does for a pod's life) against the development
agent in a local VM: any EOF on it would be pod death.  What must hold:
- the hypervisor socket path exists at every instant of a hand-over;
- a StopVM sent while the hand-over is in progress succeeds;
- the agent connection keeps working across a hand-over, and across a kill -9
  and a SIGTERM restart with the fd-keeper, including a call sent while no
  daemon was running at all;
- nothing is left behind: no pod directory, no VM process, nothing in the keeper.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cloud_api_adaptor import kata_client as kata
from cloud_api_adaptor._pb import health_pb2, ttrpc_pb2
from cloud_api_adaptor._pb import hypervisor_pb2 as hv
from cloud_api_adaptor._pb import hypervisor_pb2_grpc as hv_grpc
from cloud_api_adaptor._pb import podvminfo_pb2 as pvi
from cloud_api_adaptor.hypervisor.service import PODVMINFO_SERVICE
from cloud_api_adaptor.proxy.testing import StubClient
from cloud_api_adaptor.testing.eventually import eventually, eventually_sync
from cloud_api_adaptor.transport.keeper_link import KeeperLink
from cloud_api_adaptor.ttrpc import Code, RpcError
from cloud_api_adaptor.ttrpc.framing import OversizedFrame

from .daemon_proc import DaemonProcess
from .test_lifecycle_local import vm_processes

SERVING = health_pb2.HealthCheckResponse.SERVING
# Well below the daemon's drain bound (10 s), so the call finishes rather than being cancelled.
IN_FLIGHT_DEADLINE = 6.0
KEEPER_BIN = Path(sys.executable).parent / "caa-fd-keeper"


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def new_id() -> str:
    return uuid.uuid4().hex


class PathWatcher:
    """Polls a path from a thread as fast as it can; records every moment it is not a socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.polls = 0
        self.gaps: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if not stat.S_ISSOCK(os.lstat(self.path).st_mode):
                    self.gaps.append("not a socket")
            except FileNotFoundError:
                self.gaps.append("missing")
            self.polls += 1

    def __enter__(self) -> PathWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def successor(old: DaemonProcess, name: str, extra_env: dict[str, str] | None = None) -> DaemonProcess:
    """A second daemon on the same node: same socket, probe port, state directory (hostPath)."""
    new = DaemonProcess(old.root)
    new.env = {**old.env, **(extra_env or {})}
    new.probe_port = old.probe_port
    new.log = old.root / f"daemon-{name}.log"
    return new


@pytest.fixture
def keeper(short_tmp: Path) -> Iterator[Path]:
    path = short_tmp / "keeper.sock"
    log = (short_tmp / "keeper.log").open("ab")
    proc = subprocess.Popen(
        [str(KEEPER_BIN), "--socket", str(path), "--log-level", "debug"], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        eventually_sync(lambda: path.exists() or proc.poll() is not None, "the fd-keeper to listen")
        assert proc.poll() is None, (short_tmp / "keeper.log").read_text()
        yield path
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            log.close()
    assert not path.exists()


def scrape_metrics(port: int) -> dict[str, float]:
    """The daemon's /metrics (label-less series only), as Prometheus would read them."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    families = text_string_to_metric_families(text)
    return {
        sample.name: sample.value for family in families for sample in family.samples if not sample.labels
    }


CHECK = ttrpc_pb2.Request(
    service="grpc.Health", method="Check", payload=health_pb2.CheckRequest().SerializeToString()
).SerializeToString()


class StrictClient(StubClient):
    """The shim's agent connection: counts every reply; one for a stream not waiting is a duplicate."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = 0
        self.replies = 0
        self.unexpected = 0

    def send_request(self, request: bytes) -> asyncio.Future[ttrpc_pb2.Response]:
        self.sent += 1
        return super().send_request(request)

    def data_received(self, data: bytes) -> None:
        for frame in self._decoder.feed(data):
            self.replies += 1
            fut = self._pending.pop(frame.stream_id, None)
            if fut is None or isinstance(frame, OversizedFrame):
                self.unexpected += 1
            elif not fut.done():
                fut.set_result(ttrpc_pb2.Response.FromString(frame.data))


async def connect_shim(path: str) -> StrictClient:
    _, client = await asyncio.get_running_loop().create_unix_connection(StrictClient, path)
    return client


async def check(client: StrictClient) -> None:
    reply = await client.send_request(CHECK)
    assert health_pb2.HealthCheckResponse.FromString(reply.payload).status == SERVING


class Checker:
    """Bursts of pipelined health checks (many in flight at once), as the shim's traffic, until stopped.

    Every one must be answered exactly once: no error, no EOF, no duplicated reply.
    """

    def __init__(self, client: StrictClient, burst: int = 8) -> None:
        self.client = client
        self.burst = burst
        self.answered = 0
        self._done = asyncio.Event()
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while not self._done.is_set():
            await asyncio.gather(*(check(self.client) for _ in range(self.burst)))
            self.answered += self.burst

    async def more_answered(self) -> None:
        """Wait until two more bursts were answered than now (so through whoever serves now)."""
        mark = self.answered
        await eventually(lambda: self.answered > mark + self.burst, "health checks to be answered")

    async def stop(self) -> None:
        self._done.set()
        async with asyncio.timeout(60):
            await self._task
        assert self.client.replies == self.client.sent
        assert self.client.unexpected == 0
        assert not self.client.closed.done()


async def get_info_waiting(socket: Path, deadline: float) -> None:
    request = pvi.GetInfoRequest(PodName="never", PodNamespace="comes", Wait=True)
    await kata.one_call(socket, PODVMINFO_SERVICE, "GetInfo", request, pvi.GetInfoResponse, timeout=deadline)


def keeper_holds(path: Path) -> list[str]:
    """What the keeper holds or relays (sorted, a connection held twice shows twice); takes nothing."""
    link = KeeperLink(path)
    try:
        items = link.listing()
    finally:
        link.close()
    return sorted(
        str(i["listener"]) if i.get("kind") == "listener" else f"conn {i['listener']}" for i in items
    )


@pytest.mark.asyncio
async def test_a_hand_over_leaves_no_gap_and_the_shim_connection_open(short_tmp: Path) -> None:
    old = DaemonProcess(short_tmp)
    old.start()
    new: DaemonProcess | None = None
    agent: StrictClient | None = None
    try:
        running, stopping = new_id(), new_id()
        path = await kata.create_vm(old.socket, running, kata.kata_annotations("survivor"))
        await kata.create_vm(old.socket, stopping, kata.kata_annotations("leaver"))
        await asyncio.gather(
            kata.start_vm(old.socket, running, timeout=60), kata.start_vm(old.socket, stopping, timeout=60)
        )
        agent = await connect_shim(path)
        await check(agent)

        new = second = successor(old, "new")
        # The shim's keep-alives never stop: calls are in flight while the connection changes hands.
        checker = Checker(agent)
        try:
            await checker.more_answered()
            # A hypervisor call in flight in the old daemon (GetInfo waiting for a pod that never
            # comes, until its deadline) holds the hand-over open: the old daemon finishes it first.
            in_flight = asyncio.ensure_future(get_info_waiting(old.socket, IN_FLIGHT_DEADLINE))
            assert await kata.version(old.socket)  # GetInfo was accepted before this connection
            with PathWatcher(old.socket) as watcher:
                starting = asyncio.ensure_future(asyncio.to_thread(new.start))
                try:
                    await eventually(
                        lambda: "asked for this node's sockets" in old.log.read_text(),
                        "the hand-over to begin",
                    )
                    in_progress = not in_flight.done()
                    await kata.stop_vm(old.socket, stopping)  # the shim's StopVM, mid-hand-over
                finally:
                    await starting
                    with pytest.raises(RpcError) as err:
                        await in_flight
                assert err.value.code == Code.DEADLINE_EXCEEDED  # answered by the old daemon, not cut
                await eventually(lambda: "session resumed" in second.log.read_text(), "the session to resume")
            await checker.more_answered()
        finally:
            await checker.stop()
        await check(agent)  # the same connection, served through the new daemon
        assert in_progress, "the StopVM was sent after the hand-over had finished"
        # served by the new daemon from the backlog, or by the old one if it accepted the call before it
        # stopped accepting (under load the hand-over's log line can precede that): either way it succeeded
        assert any(f"sandbox {stopping} stopped" in d.log.read_text() for d in (old, new))
        assert watcher.polls > 100 and watcher.gaps == [], watcher.gaps[:5]
        # the hypervisor socket, the agent sockets (the StopVM may have reached either daemon), the shim
        assert re.search(r"received [23] listener\(s\) and 1 shim connection\(s\)", new.log.read_text())
        assert not (short_tmp / "pods" / stopping).exists()
        # the shim's agent session continued where the old daemon left it (transport.resume)
        assert "took over a shim connection" in new.log.read_text()
        scraped = scrape_metrics(new.probe_port)
        assert scraped["caa_agent_resumes_total"] >= 1 and scraped["caa_agent_connections_active"] == 1

        await agent.aclose()
        agent = None
        await kata.stop_vm(new.socket, running)
        assert list(new.pods_dir.iterdir()) == []
        assert old.stop() == 0
        assert new.stop() == 0
        new = None
        assert not old.socket.exists()
        assert not (old.state_dir / "handover.sock").exists()
        assert vm_processes(short_tmp) == []
    finally:
        if agent is not None:
            await agent.aclose()
        if new is not None:
            new.stop()
        old.stop()


@pytest.mark.asyncio
async def test_the_shim_connection_survives_kill_9_and_restart_with_the_keeper(
    short_tmp: Path, keeper: Path
) -> None:
    env = {"FD_KEEPER_SOCKET": str(keeper)}
    first = DaemonProcess(short_tmp, extra_env=env)
    first.start()
    daemons = [first]
    agent: StrictClient | None = None
    try:
        sid = new_id()
        path = await kata.create_vm(first.socket, sid, kata.kata_annotations("crash"))
        await kata.start_vm(first.socket, sid, timeout=60)
        agent = await connect_shim(path)
        await check(agent)
        assert keeper_holds(keeper) == sorted([str(first.socket), path, f"conn {path}"])

        first.kill9()
        assert stat.S_ISSOCK(os.lstat(first.socket).st_mode) and stat.S_ISSOCK(os.lstat(path).st_mode)
        # A call made while no daemon runs waits in the kernel and is answered after the restart.
        waiting = asyncio.ensure_future(check(agent))
        try:
            second = successor(first, "second")
            daemons.append(second)
            await asyncio.to_thread(second.start)
        finally:
            await waiting
        # The keeper relayed the shim's connection: the session resumes exactly where it was.
        assert "took over a shim connection" in second.log.read_text()
        await eventually(lambda: "session resumed" in second.log.read_text(), "the session to resume")

        # A graceful restart (SIGTERM) with the keeper leaves the shim's sockets alone, and the
        # session's state with the keeper: calls in flight at the restart are answered.
        checker = Checker(agent)
        try:
            await checker.more_answered()
            assert await asyncio.to_thread(second.stop) == 0
            assert stat.S_ISSOCK(os.lstat(path).st_mode)
            third = successor(first, "third")
            daemons.append(third)
            await asyncio.to_thread(third.start)
            await eventually(lambda: "session resumed" in third.log.read_text(), "the session to resume")
            await checker.more_answered()
        finally:
            await checker.stop()
        await check(agent)

        # A crash after a resumed session: the keeper's counters are exact at any moment.
        third.kill9()
        fourth = successor(first, "fourth")
        daemons.append(fourth)
        await asyncio.to_thread(fourth.start)
        await eventually(lambda: "session resumed" in fourth.log.read_text(), "the session to resume")
        await check(agent)

        # A hand-over next to the same keeper (a host running both daemons under systemd): the
        # keeper ends up holding each socket once, under the new daemon's registration.
        fifth = successor(first, "fifth")
        daemons.append(fifth)
        checker = Checker(agent)
        try:
            await checker.more_answered()
            await asyncio.to_thread(fifth.start)
            await eventually(lambda: "session resumed" in fifth.log.read_text(), "the session to resume")
            await checker.more_answered()
        finally:
            await checker.stop()
        assert keeper_holds(keeper) == sorted([str(first.socket), path, f"conn {path}"])
        assert fourth.stop() == 0

        await agent.aclose()
        agent = None
        await kata.stop_vm(fifth.socket, sid)
        assert list(fifth.pods_dir.iterdir()) == []
        await eventually(
            lambda: keeper_holds(keeper) == sorted([str(fifth.socket)]), "the keeper to drop the sandbox"
        )
        assert fifth.stop() == 0
        assert [pid for pid in vm_processes(short_tmp) if b"caa-fd-keeper" not in cmdline(pid)] == []
    finally:
        if agent is not None:
            await agent.aclose()
        for daemon in daemons:
            daemon.stop()


@pytest.mark.asyncio
async def test_the_grpc_socket_has_no_gap_either(short_tmp: Path) -> None:
    grpc_socket = short_tmp / "grpc.sock"
    old = DaemonProcess(short_tmp, {"GRPC_ENDPOINT": f"unix://{grpc_socket}"}, provider="fake")
    old.start()
    new: DaemonProcess | None = None
    try:
        async with grpc.aio.insecure_channel(f"unix://{grpc_socket}") as channel:
            stub = hv_grpc.HypervisorStub(channel)
            assert (await stub.Version(hv.VersionRequest(), timeout=10)).version == "0.0.0"
            new = successor(old, "new")
            with PathWatcher(grpc_socket) as watcher:
                await asyncio.to_thread(new.start)
            assert watcher.polls > 100 and watcher.gaps == [], watcher.gaps[:5]
            # the client's connection was closed with the old daemon; gRPC reconnects by itself
            assert (
                await stub.Version(hv.VersionRequest(), timeout=10, wait_for_ready=True)
            ).version == "0.0.0"
        assert old.stop() == 0
        assert new.stop() == 0
        new = None
        assert not grpc_socket.exists()
        assert [p.name for p in old.state_dir.glob("grpc-*.sock")] == []
    finally:
        if new is not None:
            new.stop()
        old.stop()
