"""The resumable agent channel across a real link: the forwarder runs as its own process in a VM namespace.

The test makes a network namespace (the VM) joined to ours by a veth pair, runs
the real ``agent-protocol-forwarder`` CLI inside it, and the worker's
``AgentProxy`` here, dialling it across the veth.  The stub agent is reached on
its unix socket (file system, not network).  Then the link is broken as it
breaks in real life, while a client on the agent socket keeps calling:

- a 20 s blackhole: nft drops every packet in the VM's namespace (the node
  notices within ``dead_after`` and keeps redialling; the windows, 60 s, exceed
  the blackhole);
- a TCP reset: ``ss -K`` in the VM's namespace kills the forwarder's socket;
- a restart of the forwarder's TLS listener (SIGHUP).

After each: no EOF on the client, every call exactly one correct reply, the
agent every request exactly once and in order, on the one connection it ever
got.  Needs root (namespaces, nft); skipped otherwise.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from cloud_api_adaptor.apf import ApfConfig
from cloud_api_adaptor.proxy.agent_proxy import AgentChannel, AgentProxy
from cloud_api_adaptor.proxy.testing import StubAgent, StubClient
from cloud_api_adaptor.proxy.tls import AgentTls
from cloud_api_adaptor.settings import TlsSettings
from cloud_api_adaptor.testing.eventually import eventually
from tests.integration.resume.test_agent_channel_resume import Caller

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("nft") is None or shutil.which("ip") is None,
    reason="needs root, ip and nft",
)

INSTANCE = "podvm-netns-resume"
BLACKHOLE = 20.0
PORT = 15150


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


@dataclass
class VmLink:
    ns: str
    host_if: str
    host_ip: str
    vm_ip: str

    def in_vm(self, *argv: str) -> None:
        sh("ip", "netns", "exec", self.ns, *argv)

    def blackhole(self) -> None:
        self.in_vm("nft", "add table inet caa_blackhole")
        for hook in ("input", "output"):
            self.in_vm(
                "nft",
                f"add chain inet caa_blackhole {hook} {{ type filter hook {hook} priority 0; policy drop; }}",
            )

    def restore(self) -> None:
        self.in_vm("nft", "delete table inet caa_blackhole")

    def reset(self) -> None:
        self.in_vm("ss", "-K", "dst", self.host_ip)


@pytest_asyncio.fixture
async def vm_link() -> AsyncIterator[VmLink]:
    tag = secrets.token_hex(3)
    octet = 1 + secrets.randbelow(250)
    link = VmLink(f"caa-rs-{tag}", f"crs{tag}h", f"10.253.{octet}.1", f"10.253.{octet}.2")
    guest_if = f"crs{tag}g"
    try:
        sh("ip", "netns", "add", link.ns)
        sh("ip", "link", "add", link.host_if, "type", "veth", "peer", "name", guest_if)
        sh("ip", "link", "set", guest_if, "netns", link.ns)
        sh("ip", "addr", "add", f"{link.host_ip}/30", "dev", link.host_if)
        sh("ip", "link", "set", link.host_if, "up")
        link.in_vm("ip", "addr", "add", f"{link.vm_ip}/30", "dev", guest_if)
        link.in_vm("ip", "link", "set", guest_if, "up")
        link.in_vm("ip", "link", "set", "lo", "up")
        yield link
    finally:
        subprocess.run(["ip", "link", "del", link.host_if], check=False, capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", link.ns], check=False, capture_output=True, timeout=30)


@dataclass
class Stand:
    link: VmLink
    agent: StubAgent
    proxy: AgentProxy
    forwarder: subprocess.Popen[bytes]
    client: StubClient


@pytest_asyncio.fixture
async def stand(vm_link: VmLink, short_tmp: Path) -> AsyncIterator[Stand]:
    agent = StubAgent(short_tmp / "agent.sock")
    await agent.start()
    tls = AgentTls.from_settings(TlsSettings(), short_tmp / "state")
    apf = ApfConfig.from_mapping(
        {"pod-namespace": "default", "pod-name": "web", **tls.apf_tls_fields(INSTANCE)}
    )
    config = short_tmp / "apf.json"
    config.write_text(apf.to_json())
    notify = short_tmp / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify))
    sock.setblocking(False)
    argv = ["ip", "netns", "exec", vm_link.ns, sys.executable, "-m", "cloud_api_adaptor.vm.forwarder_cli"]
    argv += ["-config", str(config), "-listen", f"{vm_link.vm_ip}:{PORT}"]
    argv += ["-kata-agent-socket", str(agent.path), "-resume-window", "60s"]
    fwd = subprocess.Popen(argv, env={**os.environ, "NOTIFY_SOCKET": str(notify)})
    proxy: AgentProxy | None = None
    client: StubClient | None = None
    try:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(60):
            assert await loop.sock_recv(sock, 64) == b"READY=1"
        proxy = AgentChannel(tls, dial_timeout=30, resume_window=60).new_proxy(
            short_tmp / "sb" / "agent.ttrpc", INSTANCE
        )
        proxy._resume_keepalive, proxy._resume_dead_after = 0.5, 3.0
        await proxy.start(vm_link.vm_ip, PORT, timeout=30)
        client = await StubClient.connect_unix(proxy.socket_path)
        yield Stand(vm_link, agent, proxy, fwd, client)
    finally:
        if client is not None:
            client.close()
        if proxy is not None:
            await proxy.aclose()
        fwd.terminate()
        try:
            fwd.wait(timeout=10)
        except subprocess.TimeoutExpired:
            fwd.kill()
            fwd.wait()
        sock.close()
        await agent.aclose()


async def exercise(stand: Stand, caller: Caller, breakage: str) -> None:
    """Calls before, during and after a breakage; every one answered exactly once."""
    caller.call(10)
    await caller.settle()
    (agent_conn,) = stand.agent._conns
    resumes = stand.proxy.stats.resumes
    if breakage == "blackhole":
        stand.link.blackhole()
        try:
            for _ in range(int(BLACKHOLE / 0.5)):  # a keep-alive every half second, answered late
                caller.call(1)
                await asyncio.sleep(0.5)
        finally:
            stand.link.restore()
    elif breakage == "reset":
        caller.call(20)
        stand.link.reset()
        caller.call(20)
    else:
        caller.call(20)
        stand.forwarder.send_signal(signal.SIGHUP)
        caller.call(20)
    await caller.settle(timeout=60)
    caller.check_agent(stand.agent)
    assert stand.agent._conns == {agent_conn}
    await eventually(lambda: stand.proxy.stats.resumes > resumes, "the session was resumed")


@pytest.mark.asyncio
async def test_blackhole_reset_and_listener_restart_are_invisible_to_shim_and_agent(stand: Stand) -> None:
    caller = Caller(stand.client)
    for breakage in ("reset", "restart", "blackhole"):
        await exercise(stand, caller, breakage)
    assert stand.proxy.stats.resumes >= 3
