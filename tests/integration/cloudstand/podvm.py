"""The test plays the cloud's pod VM: what an instance booting the podvm image would do.

Given the private IP the cloud (an emulator or a fake) assigned and the userdata
the daemon sent, it puts the IP on the vm
namespace's interface, writes the UserData as a cidata ``user-data`` file, runs
the real ``process-user-data provision-files`` (which writes
``run/peerpod/apf.json`` with the TLS material under the VM root), then starts
the development agent and the real ``agent-protocol-forwarder`` on
``<ip>:15150``, both inside the vm namespace, as the podvm's units would.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from cloud_api_adaptor.testing.eventually import eventually

from .stand import NodeStand, netns_exec

BIN = Path(sys.executable).parent
FORWARDER_PORT = 15150


class PodVm:
    def __init__(self, stand: NodeStand, root: Path) -> None:
        self.stand = stand
        self.root = root  # the VM's filesystem root
        self.procs: list[subprocess.Popen[bytes]] = []
        self.log = root / "vm.log"
        self.ip: ipaddress.IPv4Address | None = None

    @property
    def agent_socket(self) -> Path:
        return self.root / "agent.sock"

    @property
    def apf_json(self) -> Path:
        return self.root / "run" / "peerpod" / "apf.json"

    async def boot(self, ip: str, userdata: str) -> None:
        """Boot as the instance with ``ip`` and ``userdata``: address, provisioning, agent, forwarder."""
        self.ip = ipaddress.IPv4Address(ip)
        self.stand.add_vm_address(self.ip)
        await self.provision(userdata)
        self.start_agent()
        await eventually(self.agent_socket.exists, "the development agent's socket", timeout=30)
        self.start_forwarder()

    async def provision(self, userdata: str) -> None:
        cidata = self.root / "cidata"
        cidata.mkdir(parents=True, exist_ok=True)
        (cidata / "user-data").write_text(userdata)
        argv = [
            str(BIN / "process-user-data"),
            "provision-files",
            "--root",
            str(self.root),
            "--cidata-dir",
            str(cidata),
            "-t",
            "30s",
        ]
        proc = await asyncio.create_subprocess_exec(
            *netns_exec(self.stand.vm_ns, argv),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            raise AssertionError(f"process-user-data failed ({proc.returncode}):\n{out.decode()}")

    async def boot_shared(self) -> None:
        """One VM for every instance (benchmarks): TLS off, listening on every address it owns."""
        self.apf_json.parent.mkdir(parents=True, exist_ok=True)
        self.apf_json.write_text(json.dumps({"pod-namespace": "bench", "pod-name": "bench"}))
        self.start_agent()
        await eventually(self.agent_socket.exists, "the development agent's socket", timeout=30)
        self.start_forwarder(listen=f"0.0.0.0:{FORWARDER_PORT}", extra=["-disable-tls"])

    def _spawn(self, argv: list[str]) -> None:
        with self.log.open("ab") as log:
            self.procs.append(
                subprocess.Popen(netns_exec(self.stand.vm_ns, argv), stdout=log, stderr=subprocess.STDOUT)
            )

    def start_agent(self) -> None:
        self._spawn(
            [sys.executable, "-m", "cloud_api_adaptor.vm.devagent", "--socket", str(self.agent_socket)]
        )

    def start_forwarder(self, listen: str = "", extra: Sequence[str] = ()) -> None:
        """The forwarder on ``listen`` (default: the instance's IP, as the pod VM's unit does)."""
        if not listen:
            assert self.ip is not None
            listen = f"{self.ip}:{FORWARDER_PORT}"
        self._spawn(
            [
                str(BIN / "agent-protocol-forwarder"),
                "-config",
                str(self.apf_json),
                "-listen",
                listen,
                "-kata-agent-socket",
                str(self.agent_socket),
                *extra,
            ]
        )

    def running(self) -> bool:
        return any(p.poll() is None for p in self.procs)

    def shutdown(self) -> None:
        """Power off: stop the forwarder and the agent (SIGTERM, then SIGKILL)."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(10)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""
