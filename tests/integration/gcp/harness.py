"""One test's whole world: the stand, the fake GCP, daemons in the node namespace, pod VMs.

``GcpNode.close()`` undoes everything in reverse and is safe to call twice.
"""

from __future__ import annotations

from ..cloudstand.node import CloudNode, new_sandbox_id, orphan_scans
from .cloud import GcpCloud

__all__ = ["GcpNode", "new_sandbox_id", "orphan_scans"]


class GcpNode(CloudNode):
    provider = "gcp"

    def __init__(self) -> None:
        super().__init__("caa-gcp-")
        try:
            self.cloud = GcpCloud()
            self.upstream_url = self.cloud.url
            # the daemon's view of the same fake, on the root side of the stand's link
            self.node_url = self.default_endpoint = self.cloud.fake.serve(str(self.stand.root_ip))
        except BaseException:
            self.close()
            raise

    def daemon_env(self, endpoint: str) -> dict[str, str]:
        return self.cloud.daemon_env(endpoint, self.node_name, self.cluster_id)

    def close_cloud(self) -> None:
        if hasattr(self, "cloud"):
            self.cloud.close()
