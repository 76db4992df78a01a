"""One daemon-level IBM test's world: a stand, the IBM fakes on loopback, relays, daemons and pod VMs.

The fakes (IAM, VPC or PowerVS, Global Tagging and Search) serve on 127.0.0.1;
the daemon in the stand's node namespace reaches them through a ``TcpRelay`` on
the stand's root-side address, directly or through a fault proxy.  Each fake
hands out addresses from the stand's VM subnet (198.51.100.4 upwards), so the
test can boot a ``PodVm`` with the address and user data the fake holds.
``IbmNode.close()`` undoes everything and is safe to call twice.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from cloud_api_adaptor.testing.faultproxy import FaultProxy

from ..cloudstand.podvm import PodVm
from ..cloudstand.relay import TcpRelay
from ..cloudstand.stand import VM_SUBNET, NodeStand, netns_exec
from ..daemon_proc import DaemonProcess

#: where the fakes hand out pod VM addresses: the stand's VM subnet, from .4
FAKE_SUBNET = str(VM_SUBNET)


class World(Protocol):
    @property
    def url(self) -> str: ...

    def env(self, endpoint: str) -> dict[str, str]: ...

    def close(self) -> None: ...


def new_sandbox_id() -> str:
    return uuid.uuid4().hex + uuid.uuid4().hex


def orphan_scans(daemon: DaemonProcess) -> list[str]:
    text = daemon.log.read_text(errors="replace") if daemon.log.exists() else ""
    return re.findall(r"orphan scan: \d+ owned instances.*", text)


class IbmNode:
    def __init__(self, world: World, provider: str) -> None:
        self.world = world
        self.provider = provider
        self.work = Path(tempfile.mkdtemp(prefix="caa-ibm-", dir="/tmp"))
        self._daemons: list[DaemonProcess] = []
        self._vms: list[PodVm] = []
        self._relays: list[TcpRelay] = []
        self._proxies: list[FaultProxy] = []
        self._closed = False
        self.stand = NodeStand.create()
        self.node_name = f"node-{self.stand.tag}"
        self.cluster_id = f"cluster-{self.stand.tag}"
        try:
            self.direct_url = self._relay_to(world.url)
        except BaseException:
            self.close()
            raise

    def _relay_to(self, url: str) -> str:
        relay = TcpRelay(str(self.stand.root_ip), ("127.0.0.1", int(url.rsplit(":", 1)[1])))
        relay.start()
        self._relays.append(relay)
        return relay.url

    def fault_proxy(self) -> tuple[FaultProxy, str]:
        """A fault proxy in front of the fakes, and the URL the node reaches it at."""
        proxy = FaultProxy(self.world.url)
        proxy.start()
        self._proxies.append(proxy)
        return proxy, self._relay_to(proxy.url)

    def daemon(
        self, endpoint: str | None = None, start: bool = True, args: Sequence[str] = (), **env: str
    ) -> DaemonProcess:
        root = self.work / f"d{len(self._daemons)}"
        root.mkdir()
        base = {
            **self.world.env(endpoint or self.direct_url),
            "NODE_NAME": self.node_name,
            "CLUSTER_ID": self.cluster_id,
            "LOG_LEVEL": "info",
        }
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

    def processes(self) -> list[int]:
        return self.stand.pids(self.stand.node_ns) + self.stand.pids(self.stand.vm_ns)

    def leftovers(self) -> list[str]:
        left = self.stand.leftovers()
        if self.work.exists():
            left.append(str(self.work))
        return left

    def logs(self) -> str:
        parts = [
            f"--- {d.log}\n{d.log.read_text(errors='replace')[-6000:]}"
            for d in self._daemons
            if d.log.exists()
        ]
        parts += [f"--- {vm.log}\n{vm.log_text()[-3000:]}" for vm in self._vms]
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
        for relay in self._relays:
            relay.stop()
        for proxy in self._proxies:
            proxy.stop()
        self.stand.remove()
        shutil.rmtree(self.work, ignore_errors=True)
