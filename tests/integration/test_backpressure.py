"""A peer that pipelines requests and never reads its replies cannot grow the daemon or slow other peers.

The flooder writes up to 200,000 Version requests on one connection as fast as
the kernel takes them and never reads; the daemon must stop reading that
connection once its bounds are reached (calls in flight, unsent replies), so
its memory stays flat while another connection keeps being answered.
"""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import threading
import time
from pathlib import Path

import pytest

from cloud_api_adaptor import kata_client as kata
from cloud_api_adaptor.testing.eventually import eventually
from cloud_api_adaptor.ttrpc.framing import MessageType, encode_frame
from cloud_api_adaptor.ttrpc.messages import encode_request

from .daemon_proc import DaemonProcess

REQUESTS = 200_000
MIB = 1 << 20


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class Flooder(threading.Thread):
    """Pipelines Version requests on one connection and never reads; stops when told or when all are sent."""

    def __init__(
        self, path: Path, count: int, service: str = "hypervisor.Hypervisor", method: str = "Version"
    ) -> None:
        super().__init__(name="flooder", daemon=True)
        request = encode_request(service, method, b"")
        self.frames = [encode_frame(2 * i + 1, MessageType.REQUEST, request) for i in range(count)]
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.sock.settimeout(0.2)
        self.sent = 0
        self.blocked = threading.Event()  # the daemon stopped reading: a write timed out
        self.stop = threading.Event()

    def run(self) -> None:
        batch = 256
        while self.sent < len(self.frames) and not self.stop.is_set():
            chunk = b"".join(self.frames[self.sent : self.sent + batch])
            try:
                self.sock.sendall(chunk)
            except TimeoutError:
                self.blocked.set()
                continue  # sendall may have written part of it; the count stays a lower bound
            except OSError:
                return
            self.sent += batch

    def close(self) -> None:
        self.stop.set()
        self.join(10)
        self.sock.close()


@pytest.mark.asyncio
async def test_a_peer_that_never_reads_cannot_grow_the_daemon_or_slow_the_others(short_tmp: Path) -> None:
    d = DaemonProcess(short_tmp)
    d.start()
    flooder: Flooder | None = None
    try:
        assert d.proc is not None
        pid = d.proc.pid
        await kata.version(d.socket)  # warm: the first call's imports are not the flood's cost
        before = rss(pid)
        flooder = Flooder(d.socket, REQUESTS)
        flooder.start()
        latencies: list[float] = []
        deadline = time.monotonic() + 120
        # probe on fresh connections (as Kata's shim does) until the flooder is held back, and a while longer
        while not flooder.blocked.is_set() or len(latencies) < 50:
            assert time.monotonic() < deadline, "the daemon never stopped reading the flooder"
            started = time.monotonic()
            assert await asyncio.wait_for(kata.version(d.socket), 30) == "0.0.0"
            latencies.append(time.monotonic() - started)
            await asyncio.sleep(0.01)
        during = rss(pid)
        assert during - before < 50 * MIB, f"RSS grew by {(during - before) / MIB:.1f} MiB"
        assert flooder.sent < REQUESTS  # the daemon held the flooder back rather than taking everything
        print(
            f"flood: {flooder.sent} requests accepted before the daemon stopped reading; RSS +"
            f"{(during - before) / MIB:.1f} MiB; other connection's Version p50 "
            f"{statistics.median(latencies) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms"
        )
        flooder.close()
        flooder = None
        await eventually(lambda: rss(pid) - before < 20 * MIB, "memory returned after the flooder left")
        assert await kata.version(d.socket) == "0.0.0"
    finally:
        if flooder is not None:
            flooder.close()
        d.stop()


def netns_rss(netns: Path) -> int:
    """Total RSS of the processes in the network namespace ``netns`` (a local VM: forwarder, agent)."""
    inode = netns.stat().st_ino
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "ns" / "net").stat().st_ino == inode:
                total += rss(int(entry.name))
        except (OSError, AssertionError):
            continue
    return total


@pytest.mark.root
@pytest.mark.asyncio
async def test_the_agent_channel_holds_back_a_peer_that_never_reads(short_tmp: Path) -> None:
    """The same flood on a sandbox's agent socket: proxy, forwarder and agent all stop reading in turn."""
    d = DaemonProcess(short_tmp)
    d.start()
    flooder: Flooder | None = None
    sandbox_id = "flood" + "0" * 59
    try:
        assert d.proc is not None
        pid = d.proc.pid
        path = Path(await kata.create_vm(d.socket, sandbox_id, kata.kata_annotations("flood")))
        await kata.start_vm(d.socket, sandbox_id, timeout=60)
        [vm_record] = (d.state_dir / "providers" / "local" / "records").glob("*.json")
        vm_netns = Path("/run/netns") / json.loads(vm_record.read_text())["netns"]
        agent = await kata.AgentClient.connect(str(path))
        assert await agent.check() == 1
        before, vm_before = rss(pid), netns_rss(vm_netns)
        flooder = Flooder(path, REQUESTS, service="grpc.Health", method="Check")
        flooder.start()
        deadline = time.monotonic() + 120
        checks = 0
        # Health replies are small: loopback TCP buffers may absorb them all, or the chain holds the
        # flooder back; either way no process may buffer them in memory
        while (flooder.is_alive() and not flooder.blocked.is_set()) or checks < 20:
            assert time.monotonic() < deadline, "the flood neither ended nor was held back"
            assert await asyncio.wait_for(agent.check(), 30) == 1  # another connection keeps its answers
            checks += 1
            await asyncio.sleep(0.01)
        print(f"agent flood: {flooder.sent} requests written, held back: {flooder.blocked.is_set()}")
        assert rss(pid) - before < 50 * MIB
        assert netns_rss(vm_netns) - vm_before < 50 * MIB
        await agent.aclose()
        flooder.close()
        flooder = None
        await kata.stop_vm(d.socket, sandbox_id)
    finally:
        if flooder is not None:
            flooder.close()
        d.stop()
