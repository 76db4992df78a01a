"""One test's whole world: the stand, its moto listener, a VPC, daemons in the node namespace, pod VMs.

``AwsNode.close()`` undoes everything in reverse and is safe to call twice; a
test that asserts "nothing left" calls it itself and then checks ``leftovers()``.
"""

from __future__ import annotations

import contextlib
from typing import Any

from moto.server import ThreadedMotoServer

from ..cloudstand.node import CloudNode, new_sandbox_id, orphan_scans
from .cloud import Vpc, ec2_client, serve_moto

__all__ = ["AwsNode", "new_sandbox_id", "orphan_scans"]


class AwsNode(CloudNode):
    provider = "aws"

    def __init__(self, hub_url: str) -> None:
        super().__init__("caa-")
        self.hub_url = self.upstream_url = hub_url  # moto on 127.0.0.1: the test's view, the proxy's upstream
        self._moto: ThreadedMotoServer | None = None
        try:
            self._moto, self.moto_url = serve_moto(str(self.stand.root_ip))
            self.default_endpoint = self.moto_url
            self.ec2: Any = ec2_client(hub_url)
            self.vpc = Vpc.create(self.ec2)
        except BaseException:
            self.close()
            raise

    def daemon_env(self, endpoint: str) -> dict[str, str]:
        return self.vpc.daemon_env(endpoint, self.node_name, self.cluster_id)

    def close_cloud(self) -> None:
        if self._moto is not None:
            self._moto.stop()
        if hasattr(self, "vpc"):
            with contextlib.suppress(Exception):
                self.vpc.terminate_all()  # the safety net; tests assert on what they left before this
