"""The resumable agent channel through the real daemon and a local VM (netns mode, root).

``cloud-api-adaptor serve`` (a process) creates and starts a local VM: its own
network namespace joined by a veth pair, running the development agent and the
real ``agent-protocol-forwarder``.  A client on the sandbox's agent socket (the
shim's place) keeps calling Health/Check while the node<->VM link is broken
three ways, from inside the VM's namespace: a 20 s blackhole (nft drops every
packet), a TCP reset (``ss -K``), and a restart of the forwarder's listener
(SIGHUP).  The client must see no EOF and exactly one reply per call (a
duplicated request would bring a second reply, a lost one none).  Then StopVM
leaves nothing.

The daemon notices a dead link after 5 s of silence (its keep-alive default)
and redials every 50 ms; both resume windows (node 60 s, VM 10 min) exceed
the blackhole.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud_api_adaptor import kata_client as kata
from cloud_api_adaptor._pb import health_pb2, ttrpc_pb2
from cloud_api_adaptor.proxy.testing import StubClient
from cloud_api_adaptor.testing.eventually import eventually
from cloud_api_adaptor.ttrpc.framing import OversizedFrame
from cloud_api_adaptor.wire import FORWARDER_PORT

from .daemon_proc import DaemonProcess

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(shutil.which("nft") is None, reason="needs nft"),
]

BLACKHOLE = 20.0
CHECK = ttrpc_pb2.Request(
    service="grpc.Health", method="Check", payload=health_pb2.CheckRequest().SerializeToString()
).SerializeToString()


class StrictClient(StubClient):
    """Counts every reply frame: a reply for a stream already answered (or never asked) is a duplicate."""

    def __init__(self) -> None:
        super().__init__()
        self.replies = 0
        self.unexpected = 0

    def data_received(self, data: bytes) -> None:
        for frame in self._decoder.feed(data):
            self.replies += 1
            fut = self._pending.pop(frame.stream_id, None)
            if fut is None or isinstance(frame, OversizedFrame):
                self.unexpected += 1
                continue
            if not fut.done():
                fut.set_result(ttrpc_pb2.Response.FromString(frame.data))


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=30).stdout


def netns_names() -> set[str]:
    return {line.split()[0] for line in sh("ip", "netns", "list").splitlines() if line.strip()}


@pytest.fixture
def daemon(short_tmp: Path) -> Iterator[DaemonProcess]:
    d = DaemonProcess(short_tmp, extra_env={"LOCAL_MODE": "netns", "AGENT_RESUME_WINDOW": "60s"})
    d.start()
    yield d
    d.stop()


def forwarder_pid(ns: str) -> int:
    for pid in sh("ip", "netns", "pids", ns).split():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"agent-protocol-forwarder" in cmdline or b"forwarder_cli" in cmdline:
            return int(pid)
    raise AssertionError(f"no forwarder in {ns}")


@pytest.mark.asyncio
async def test_a_pod_survives_blackhole_reset_and_listener_restart(daemon: DaemonProcess) -> None:
    before = netns_names()
    sid = uuid.uuid4().hex * 2
    path = await kata.create_vm(daemon.socket, sid, kata.kata_annotations("pod-resume"))
    await kata.start_vm(daemon.socket, sid, timeout=60)
    (ns,) = {n for n in netns_names() - before if not n.startswith("cni")}
    loop = asyncio.get_running_loop()
    _, client = await loop.create_unix_connection(StrictClient, path)
    sent = 0

    async def calls(n: int, pause: float = 0.0) -> None:
        nonlocal sent
        futures = []
        for _ in range(n):
            futures.append(client.send_request(CHECK))
            sent += 1
            if pause:
                await asyncio.sleep(pause)
        async with asyncio.timeout(60):
            for fut in futures:
                reply = await fut
                status = health_pb2.HealthCheckResponse.FromString(reply.payload).status
                assert status == health_pb2.HealthCheckResponse.SERVING

    try:
        await calls(20)
        # 1. a blackhole: every packet dropped in the VM's namespace, keep-alives every 0.5 s meanwhile
        sh("ip", "netns", "exec", ns, "nft", "add table inet caa_blackhole")
        for hook in ("input", "output"):
            sh(
                "ip",
                "netns",
                "exec",
                ns,
                "nft",
                f"add chain inet caa_blackhole {hook} {{ type filter hook {hook} priority 0; policy drop; }}",
            )
        try:
            pending = asyncio.ensure_future(calls(int(BLACKHOLE / 0.5), pause=0.5))
            await asyncio.sleep(BLACKHOLE)
        finally:
            sh("ip", "netns", "exec", ns, "nft", "delete table inet caa_blackhole")
        await pending
        # 2. a reset of the connection, from the VM's side
        burst = asyncio.ensure_future(calls(40))
        sh("ip", "netns", "exec", ns, "ss", "-K", "state", "established", f"( sport = :{FORWARDER_PORT} )")
        await burst
        await calls(10)
        # 3. the forwarder's listener restarts (and with it every link)
        burst = asyncio.ensure_future(calls(40))
        os.kill(forwarder_pid(ns), signal.SIGHUP)
        await burst
        await calls(10)
        await eventually(lambda: client.replies == sent, "every call answered")
        assert client.unexpected == 0  # no duplicated reply, so no duplicated request
        assert not client.closed.done()  # the shim saw no EOF
        log = daemon.log.read_text()
        assert log.count("resumed") >= 3, "the link was not resumed three times"
    finally:
        client.close()
        await kata.stop_vm(daemon.socket, sid)
    assert list(daemon.pods_dir.iterdir()) == []
    assert ns not in netns_names()
