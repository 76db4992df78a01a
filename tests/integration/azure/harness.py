"""One test's whole world: the stand, the fake Azure, daemons in the node namespace, pod VMs.

``AzureNode.close()`` undoes everything in reverse and is safe to call twice.
ARM is HTTPS only (azure-core sends bearer tokens over nothing else), so the
fault proxy speaks TLS on both sides with the fake's test CA, and its certificate
also names the stand's root-side address the node reaches it at.
"""

from __future__ import annotations

from cloud_api_adaptor.testing.faultproxy import FaultProxy

from ..cloudstand.node import CloudNode, new_sandbox_id, orphan_scans
from .cloud import AzureCloud

__all__ = ["AzureNode", "new_sandbox_id", "orphan_scans"]


class AzureNode(CloudNode):
    provider = "azure"

    def __init__(self) -> None:
        # short: the agent socket path under it must stay below 108 bytes
        super().__init__("caa-az-")
        try:
            self.cloud = AzureCloud()
            self.upstream_url = self.cloud.url
            # the daemon's view of the same fake, on the root side of the stand's link
            self.node_url = self.default_endpoint = self.cloud.fake.serve(str(self.stand.root_ip))
        except BaseException:
            self.close()
            raise

    def daemon_env(self, endpoint: str) -> dict[str, str]:
        # the token endpoint is always the fake's own listener: only ARM calls go through a proxy
        return self.cloud.daemon_env(endpoint, self.node_url, self.node_name, self.cluster_id)

    def fault_proxy(self) -> tuple[FaultProxy, str]:
        """A TLS fault proxy in front of the fake, and the https URL the node reaches it at."""
        fake = self.cloud.fake
        proxy = FaultProxy(
            self.upstream_url,
            server_context=fake.ca.server_context("proxy", (self.stand.root_ip,)),
            upstream_context=fake.client_context(),
        )
        proxy.start()
        self._proxies.append(proxy)
        return proxy, self.relay_to(proxy.url).replace("http://", "https://", 1)

    def close_cloud(self) -> None:
        if hasattr(self, "cloud"):
            self.cloud.close()
