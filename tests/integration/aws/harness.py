"""One test's whole world: the stand, its moto listener, a VPC, daemons in the node namespace, pod VMs.

``AwsNode.close()`` undoes everything in reverse and is safe to call twice; a
test that asserts "nothing left" calls it itself and then checks ``leftovers()``.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from moto.server import ThreadedMotoServer

from cloud_api_adaptor.testing.faultproxy import FaultProxy

from ..cloudstand.podvm import PodVm
from ..cloudstand.relay import TcpRelay
from ..cloudstand.stand import NodeStand, netns_exec
from ..daemon_proc import DaemonProcess
from .cloud import Vpc, ec2_client, serve_moto

logger = logging.getLogger(__name__)


def orphan_scans(daemon: DaemonProcess) -> list[str]:
    """The daemon's orphan-scan summary lines so far (one per scan)."""
    text = daemon.log.read_text(errors="replace") if daemon.log.exists() else ""
    return re.findall(r"orphan scan: \d+ owned instances.*", text)


def new_sandbox_id() -> str:
    """64 hex characters, as Kata's sandbox ids."""
    return uuid.uuid4().hex + uuid.uuid4().hex


class AwsNode:
    def __init__(self, hub_url: str) -> None:
        self.hub_url = hub_url  # moto on 127.0.0.1: the test's view, the fault proxy's upstream
        self.work = Path(tempfile.mkdtemp(prefix="caa-", dir="/tmp"))
        self.stand = NodeStand.create()
        self._moto: ThreadedMotoServer | None = None
        self._daemons: list[DaemonProcess] = []
        self._vms: list[PodVm] = []
        self._proxies: list[tuple[FaultProxy, TcpRelay]] = []
        self._closed = False
        self.node_name = f"node-{self.stand.tag}"
        self.cluster_id = f"cluster-{self.stand.tag}"
        try:
            self._moto, self.moto_url = serve_moto(str(self.stand.root_ip))
            self.ec2: Any = ec2_client(hub_url)
            self.vpc = Vpc.create(self.ec2)
        except BaseException:
            self.close()
            raise

    # -- parts -----------------------------------------------------------------------------------------------

    def daemon(
        self, endpoint: str | None = None, start: bool = True, args: Sequence[str] = (), **env: str
    ) -> DaemonProcess:
        """A daemon in the node namespace using ``endpoint`` (default: moto's node-facing listener)."""
        root = self.work / f"d{len(self._daemons)}"
        root.mkdir()
        base = self.vpc.daemon_env(endpoint or self.moto_url, self.node_name, self.cluster_id)
        daemon = DaemonProcess(
            root, {**base, **env}, provider="aws", wrapper=netns_exec(self.stand.node_ns, []), args=args
        )
        self._daemons.append(daemon)
        if start:
            daemon.start(timeout=60)
        return daemon

    def fault_proxy(self) -> tuple[FaultProxy, str]:
        """A fault proxy in front of moto, and the URL the node reaches it at (through a relay)."""
        proxy = FaultProxy(self.hub_url)
        proxy.start()
        relay = TcpRelay(str(self.stand.root_ip), ("127.0.0.1", int(proxy.url.rsplit(":", 1)[1])))
        try:
            relay.start()
        except BaseException:
            proxy.stop()
            raise
        self._proxies.append((proxy, relay))
        return proxy, relay.url

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
        parts = []
        for d in self._daemons:
            if d.log.exists():
                parts.append(f"--- {d.log}\n{d.log.read_text(errors='replace')[-6000:]}")
        for vm in self._vms:
            parts.append(f"--- {vm.log}\n{vm.log_text()[-3000:]}")
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
        for proxy, relay in self._proxies:
            relay.stop()
            proxy.stop()
        if self._moto is not None:
            self._moto.stop()
        with contextlib.suppress(Exception):
            self.vpc.terminate_all()  # the safety net; tests assert on what they left before this
        self.stand.remove()
        shutil.rmtree(self.work, ignore_errors=True)
