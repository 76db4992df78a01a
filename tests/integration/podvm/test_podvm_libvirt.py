"""The project's pod VM image, booted for real: three pods through the daemon on the libvirt provider.

``make podvm``'s image (built here if the cache has none for these sources) is the base
volume of a private libvirtd's pool; ``cloud-api-adaptor serve`` runs in that libvirtd's
network namespace (the node, see ``stand.py``) with ``CLOUD_PROVIDER=libvirt``.  The test
plays Kata through the daemon's ttrpc socket: for three pods at once CreateVM (each with
its own pod network namespace), StartVM, then Health/Check and GetGuestDetails through
``agentSocketPath`` (relayed over mutual TLS to the image's forwarder and development
agent), a TCP round trip from a peer namespace on the node to each pod's IP inside its VM
(the VXLAN tunnel into the guest kernel; the image's development profile echoes on port 7
in the pod namespace), and StopVM.  Afterwards the pool holds only the base volume, no
domain is defined, no qemu runs and nothing of the stand is left on the machine.

The guest prints its boot phases on the serial console; the test reads every console
from the moment its domain runs and prints them.  Nothing is asserted about time.
Domains use KVM when it works here (``CAA_PODVM_ACCEL=tcg`` forces emulation), else TCG.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cloud_api_adaptor import kata_client as kata
from cloud_api_adaptor.podnetwork.testbed import echo_roundtrip
from podvm.build import BuildOptions, Image, build

from ..daemon_proc import DaemonProcess
from .stand import BASE_VOLUME, PodvmStand

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: builds the image, starts libvirtd"),
]

PODS = 3
SERVING = 1
ECHO_PORT = 7  # the development image's echo service in the pod namespace
PAYLOAD = os.urandom(64 * 1024)
#: bounds against hangs, never performance assertions (three guests under emulation on two cores)
START_BOUND = 900.0
BOOT_MARKER = "caa-podvm-boot:"


@pytest.fixture(scope="module")
def podvm_image() -> Image:
    """``make podvm``'s image: from the cache outside the clone, else built now (a minute or two)."""
    return build(BuildOptions())


@pytest.fixture
def stand(podvm_image: Image) -> Iterator[PodvmStand]:
    s = PodvmStand(podvm_image.path("qcow2"), PODS)
    try:
        yield s
    finally:
        s.close()


@dataclass
class Pod:
    index: int
    sandbox_id: str
    agent_socket: str
    started: float  # seconds StartVM took
    agent_version: str


def daemon_in_node(stand: PodvmStand, root: Path) -> DaemonProcess:
    env = {
        "LIBVIRT_URI": stand.libvirtd.uri,
        "LIBVIRT_POOL": stand.pool,
        "LIBVIRT_NET": stand.network,
        "LIBVIRT_VOL_NAME": BASE_VOLUME,
        "LIBVIRT_CPU": "1",
        "LIBVIRT_MEMORY": "768",
        # the tunnel's worker end: the node's address on the VMs' network (there is no default route)
        "HOST_INTERFACE": stand.bridge,
        "PROXY_TIMEOUT": f"{START_BOUND:.0f}s",
    }
    if stand.accel == "tcg":
        env["LIBVIRT_DOMAIN_TYPE"] = "qemu"  # the capabilities may offer a kvm that cannot run guests
    # "-firmware ''" (the Go flag): boot with the hypervisor's BIOS (an empty variable means the default)
    return DaemonProcess(
        root,
        env,
        provider="libvirt",
        wrapper=["ip", "netns", "exec", stand.node],
        args=["-firmware", ""],
    )


async def run_pod(daemon: DaemonProcess, stand: PodvmStand, index: int) -> Pod:
    """Kata's sequence up to the agent: CreateVM, StartVM, Health/Check, GetGuestDetails."""
    sid = uuid.uuid4().hex + uuid.uuid4().hex
    annotations = kata.kata_annotations(f"boot-{index}", "podvm", vcpus=1, memory_mib=768)
    agent_socket = await kata.create_vm(daemon.socket, sid, annotations, netns=stand.pod_path(index))
    began = time.monotonic()
    await kata.start_vm(daemon.socket, sid, timeout=START_BOUND)
    started = time.monotonic() - began
    agent = await kata.AgentClient.connect(agent_socket)
    try:
        assert await agent.check() == SERVING
        details = await agent.guest_details()
    finally:
        await agent.aclose()
    assert details.mem_block_size_bytes > 0
    return Pod(index, sid, agent_socket, started, details.agent_details.version)


async def echo_through_tunnel(stand: PodvmStand, pod_ip: str) -> bytes:
    """The payload sent from the peer to the pod's echo service and back.

    The echo service starts after the forwarder is ready (StartVM may return first):
    a refused connection (the tunnel answered, nothing listens yet) is tried again.
    """
    deadline = time.monotonic() + START_BOUND
    while True:
        try:
            return await echo_roundtrip(stand.peer_path, pod_ip, ECHO_PORT, PAYLOAD, timeout=60)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


def boot_report(stand: PodvmStand, pods: list[Pod]) -> str:
    """The guests' boot phases (from their consoles) and the host's view, one block per VM."""
    assert stand.consoles is not None
    accel = stand.accel + (f" ({stand.kvm_problem})" if stand.kvm_problem else "")
    lines = [f"pod VM boot phases, {PODS} VMs at once under {accel}; seconds:"]
    for console in sorted(stand.consoles.consoles.values(), key=lambda c: c.name):
        report = console.find(BOOT_MARKER)
        if report is None:
            lines.append(
                f"  {console.name}: no boot report on the console {console.pty} "
                f"({console.received} bytes, {len(console.lines)} lines, opened {console.reopened + 1} times)"
            )
            continue
        phases = dict(p.split("=", 1) for p in report.text.split(BOOT_MARKER, 1)[1].split())
        on_host = report.at - console.running_at
        guest = float(phases.get("forwarder", "0").replace("-", "0"))
        lines.append(
            f"  {console.name}: domain running -> boot report on the console {on_host:.1f} s "
            f"(firmware + boot loader ~{on_host - guest:.1f} s, then in the guest since the kernel "
            "started:)"
        )
        lines.append("    " + " ".join(f"{k}={v}" for k, v in phases.items()))
    lines += [f"  StartVM of pod {p.index}: {p.started:.1f} s" for p in pods]
    return "\n".join(lines)


@pytest.mark.asyncio
@pytest.mark.timeout(2400)
async def test_three_pods_boot_the_image_pass_katas_sequence_tunnel_into_the_guest_and_leave_nothing(
    stand: PodvmStand, short_tmp: Path
) -> None:
    # the VMs' network is isolated, the node has no way out
    net = stand.network_xml()
    assert net.find("forward") is None, "the libvirt network must not forward off the machine"
    assert not any(r.startswith("default") for r in stand.routes(stand.node)), stand.routes(stand.node)

    daemon = daemon_in_node(stand, short_tmp)
    daemon.start(timeout=60)
    try:
        pods = await asyncio.gather(*(run_pod(daemon, stand, i) for i in range(PODS)))
        print("\n" + boot_report(stand, pods))
        assert {p.agent_version.split()[0] for p in pods} == {"caa-devagent"}
        assert len(stand.domains()) == PODS

        # the pod network: peer on the node -> each pod's IP, answered in its VM's pod namespace
        for index in range(PODS):
            pod_ip = str(stand.pod_address(index)[0].ip)
            assert await echo_through_tunnel(stand, pod_ip) == PAYLOAD, f"pod {index} at {pod_ip}"

        await asyncio.gather(*(kata.stop_vm(daemon.socket, p.sandbox_id) for p in pods))
        assert stand.domains() == []
        assert stand.volumes() == {BASE_VOLUME}
        assert stand.qemu_pids() == []
        assert all(not Path(p.agent_socket).exists() for p in pods)
    except BaseException:
        print(daemon.log.read_text(errors="replace")[-8000:] if daemon.log.exists() else "no daemon log")
        raise
    finally:
        assert daemon.stop() == 0
    assert list(daemon.pods_dir.iterdir()) == []
    stand.close()
    assert stand.leftovers() == []
