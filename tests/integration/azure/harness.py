"""One test's whole world: the stand, the fake Azure, daemons in the node namespace, pod VMs.

``AzureNode.close()`` undoes everything in reverse and is safe to call twice.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path

from cloud_api_adaptor.testing.faultproxy import FaultProxy

from ..cloudstand.podvm import PodVm
from ..cloudstand.relay import TcpRelay
from ..cloudstand.stand import NodeStand, netns_exec
from ..daemon_proc import DaemonProcess
from .cloud import AzureCloud


def orphan_scans(daemon: DaemonProcess) -> list[str]:
    text = daemon.log.read_text(errors="replace") if daemon.log.exists() else ""
    return re.findall(r"orphan scan: \d+ owned instances.*", text)


def new_sandbox_id() -> str:
    """64 hex characters, as Kata's sandbox ids."""
    return uuid.uuid4().hex + uuid.uuid4().hex


class AzureNode:
    def __init__(self) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="caa-az-", dir="/tmp"))
        self.stand = NodeStand.create()
        self._daemons: list[DaemonProcess] = []
        self._vms: list[PodVm] = []
        self._proxies: list[tuple[FaultProxy, TcpRelay]] = []
        self._closed = False
        self.node_name = f"node-{self.stand.tag}"
        self.cluster_id = f"cluster-{self.stand.tag}"
        try:
            self.cloud = AzureCloud()
            # the daemon's view of the same fake, on the root side of the stand's link
            self.node_url = self.cloud.fake.serve(str(self.stand.root_ip))
        except BaseException:
            self.close()
            raise

    def daemon(
        self, endpoint: str | None = None, start: bool = True, args: Sequence[str] = (), **env: str
    ) -> DaemonProcess:
        """A daemon in the node namespace using ``endpoint`` (default: the fake's node-facing listener)."""
        root = self.work / f"d{len(self._daemons)}"
        root.mkdir()
        base = self.cloud.daemon_env(
            endpoint or self.node_url, self.node_url, self.node_name, self.cluster_id
        )
        daemon = DaemonProcess(
            root, {**base, **env}, provider="azure", wrapper=netns_exec(self.stand.node_ns, []), args=args
        )
        self._daemons.append(daemon)
        if start:
            daemon.start(timeout=60)
        return daemon

    def fault_proxy(self) -> tuple[FaultProxy, str]:
        """A fault proxy in front of the fake, and the URL the node reaches it at (through a relay)."""
        fake = self.cloud.fake
        proxy = FaultProxy(
            self.cloud.url,
            server_context=fake.ca.server_context("proxy", (self.stand.root_ip,)),
            upstream_context=fake.client_context(),
        )
        proxy.start()
        relay = TcpRelay(str(self.stand.root_ip), ("127.0.0.1", int(proxy.url.rsplit(":", 1)[1])))
        try:
            relay.start()
        except BaseException:
            proxy.stop()
            raise
        self._proxies.append((proxy, relay))
        return proxy, relay.url.replace("http://", "https://")

    def pod_vm(self) -> PodVm:
        root = self.work / f"vm{len(self._vms)}"
        root.mkdir()
        vm = PodVm(self.stand, root)
        self._vms.append(vm)
        return vm

    def processes(self) -> list[int]:
        return self.stand.pids(self.stand.node_ns) + self.stand.pids(self.stand.vm_ns)

    def leftovers(self) -> list[str]:
        left = self.stand.leftovers()
        if self.work.exists():
            left.append(str(self.work))
        return left

    def logs(self) -> str:
        parts = []
        for d in self._daemons:
            if d.log.exists():
                parts.append(f"--- {d.log}\n{d.log.read_text(errors='replace')[-6000:]}")
        for vm in self._vms:
            parts.append(f"--- {vm.log}\n{vm.log_text()[-3000:]}")
        return "\n".join(parts)

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
        for proxy, relay in self._proxies:
            relay.stop()
            proxy.stop()
        if hasattr(self, "cloud"):
            self.cloud.close()
        self.stand.remove()
        shutil.rmtree(self.work, ignore_errors=True)
