"""One daemon-level IBM test's world: a stand, the IBM fakes on loopback, relays, daemons and pod VMs.

The fakes (IAM, VPC or PowerVS, Global Tagging and Search) serve on 127.0.0.1;
the daemon in the stand's node namespace reaches them through a ``TcpRelay`` on
the stand's root-side address, directly or through a fault proxy.  Each fake
hands out addresses from the stand's VM subnet (198.51.100.4 upwards), so the
test can boot a ``PodVm`` with the address and user data the fake holds.
``IbmNode.close()`` undoes everything and is safe to call twice.
"""

from __future__ import annotations

from typing import Protocol

from ..cloudstand.node import CloudNode, new_sandbox_id, orphan_scans
from ..cloudstand.stand import VM_SUBNET

__all__ = ["FAKE_SUBNET", "IbmNode", "World", "new_sandbox_id", "orphan_scans"]

#: where the fakes hand out pod VM addresses: the stand's VM subnet, from .4
FAKE_SUBNET = str(VM_SUBNET)


class World(Protocol):
    @property
    def url(self) -> str: ...

    def env(self, endpoint: str) -> dict[str, str]: ...

    def close(self) -> None: ...


class IbmNode(CloudNode):
    def __init__(self, world: World, provider: str) -> None:
        super().__init__("caa-ibm-")
        self.world = world
        self.provider = provider
        self.upstream_url = world.url
        try:
            self.direct_url = self.default_endpoint = self.relay_to(world.url)
        except BaseException:
            self.close()
            raise

    def daemon_env(self, endpoint: str) -> dict[str, str]:
        return {
            **self.world.env(endpoint),
            "NODE_NAME": self.node_name,
            "CLUSTER_ID": self.cluster_id,
            "LOG_LEVEL": "info",
        }
