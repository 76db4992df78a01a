"""The part of a daemon-level cloud test's world that every cloud shares.

A ``CloudNode`` owns a ``NodeStand`` (node and VM namespaces), a work directory,
the daemons it starts in the node namespace, the pod VMs the test plays, and the
fault proxies and relays between the node and the cloud's fake on loopback.  A
cloud's harness subclasses it and adds only its fake: where the node reaches it
(``default_endpoint``), where a fault proxy forwards to (``upstream_url``), the
daemon's environment (``daemon_env``) and how the fake is closed (``close_cloud``).
``close()`` undoes everything in reverse and is safe to call twice; a test that
asserts "nothing left" calls it itself and then checks ``leftovers()``.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path

from cloud_api_adaptor import kata_client as kata
from cloud_api_adaptor.testing.faultproxy import FaultProxy

from ..daemon_proc import DaemonProcess
from .podvm import PodVm
from .relay import TcpRelay
from .stand import NodeStand, netns_exec


def orphan_scans(daemon: DaemonProcess) -> list[str]:
    """The daemon's orphan-scan summary lines so far (one per scan)."""
    text = daemon.log.read_text(errors="replace") if daemon.log.exists() else ""
    return re.findall(r"orphan scan: \d+ owned instances.*", text)


#: grpc.health.v1 ServingStatus SERVING
SERVING = 1


async def assert_agent_serves(agent_path: str) -> None:
    """The shim's view: the sandbox's agent socket reaches an agent that answers SERVING."""
    agent = await kata.AgentClient.connect(agent_path)
    try:
        assert await agent.check() == SERVING
    finally:
        await agent.aclose()


def new_sandbox_id() -> str:
    """64 hex characters, as Kata's sandbox ids."""
    return uuid.uuid4().hex + uuid.uuid4().hex


class CloudNode:
    """A stand, its daemons and pod VMs, and the links to one cloud's fake."""

    #: the provider entry point the daemons run
    provider = ""
    #: where a daemon reaches the cloud by default (set by the subclass once its fake serves)
    default_endpoint = ""
    #: where a fault proxy forwards to (the fake on loopback)
    upstream_url = ""

    def __init__(self, prefix: str) -> None:
        self.work = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
        self._daemons: list[DaemonProcess] = []
        self._vms: list[PodVm] = []
        self._relays: list[TcpRelay] = []
        self._proxies: list[FaultProxy] = []
        self._closed = False
        try:
            self.stand = NodeStand.create()
        except BaseException:
            shutil.rmtree(self.work, ignore_errors=True)
            raise
        self.node_name = f"node-{self.stand.tag}"
        self.cluster_id = f"cluster-{self.stand.tag}"

    # -- what a cloud adds -----------------------------------------------------------------------------------

    def daemon_env(self, endpoint: str) -> dict[str, str]:
        """The daemon's environment for reaching the cloud at ``endpoint``."""
        raise NotImplementedError

    def close_cloud(self) -> None:
        """Stop the cloud's fake (called by ``close()`` after daemons and proxies stop)."""

    # -- parts -----------------------------------------------------------------------------------------------

    def relay_to(self, url: str) -> str:
        """A relay from the stand's root-side address to ``url`` on loopback; its URL."""
        relay = TcpRelay(str(self.stand.root_ip), ("127.0.0.1", int(url.rsplit(":", 1)[1])))
        relay.start()
        self._relays.append(relay)
        return relay.url

    def fault_proxy(self) -> tuple[FaultProxy, str]:
        """A fault proxy in front of the fake, and the URL the node reaches it at (through a relay)."""
        proxy = FaultProxy(self.upstream_url)
        proxy.start()
        self._proxies.append(proxy)
        return proxy, self.relay_to(proxy.url)

    def daemon(
        self, endpoint: str | None = None, start: bool = True, args: Sequence[str] = (), **env: str
    ) -> DaemonProcess:
        """A daemon in the node namespace using ``endpoint`` (default: the fake's node-facing address)."""
        root = self.work / f"d{len(self._daemons)}"
        root.mkdir()
        base = self.daemon_env(endpoint or self.default_endpoint)
        daemon = DaemonProcess(
            root,
            {**base, **env},
            provider=self.provider,
            wrapper=netns_exec(self.stand.node_ns, []),
            args=args,
        )
        self._daemons.append(daemon)
        if start:
            daemon.start(timeout=60)
        return daemon

    def pod_vm(self) -> PodVm:
        root = self.work / f"vm{len(self._vms)}"
        root.mkdir()
        vm = PodVm(self.stand, root)
        self._vms.append(vm)
        return vm

    # -- outcomes --------------------------------------------------------------------------------------------

    def processes(self) -> list[int]:
        """Processes left in the stand's namespaces."""
        return self.stand.pids(self.stand.node_ns) + self.stand.pids(self.stand.vm_ns)

    def leftovers(self) -> list[str]:
        left = self.stand.leftovers()
        if self.work.exists():
            left.append(str(self.work))
        return left

    def logs(self) -> str:
        """Every daemon's and VM's log tail, for assertion messages."""
        logs = [d.log for d in self._daemons if d.log.exists()]
        parts = [f"--- {log}\n{log.read_text(errors='replace')[-6000:]}" for log in logs]
        parts += [f"--- {vm.log}\n{vm.log_text()[-3000:]}" for vm in self._vms]
        return "\n".join(parts)

    # -- teardown --------------------------------------------------------------------------------------------

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for vm in self._vms:
            with contextlib.suppress(Exception):
                vm.shutdown()
        for d in self._daemons:
            with contextlib.suppress(Exception):
                d.stop()
        for relay in self._relays:
            relay.stop()
        for proxy in self._proxies:
            proxy.stop()
        try:
            self.close_cloud()
        finally:
            self.stand.remove()
            shutil.rmtree(self.work, ignore_errors=True)
