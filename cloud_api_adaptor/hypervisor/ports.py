"""What the sandbox lifecycle needs from the agent channel and the pod network.

Small protocols so the lifecycle can be tested with the real implementations
or with in-memory ones, and so ``hypervisor`` does not depend on how the proxy
or the tunnel work.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from cloud_api_adaptor.hypervisor.models import SandboxRecord


class AgentProxyPort(Protocol):
    """One sandbox's agent socket, relayed to the pod VM's forwarder."""

    async def start(self, host: str, port: int, timeout: float) -> None:
        """Listen, then return once the forwarder accepts (``DeadlineExceeded`` otherwise)."""

    async def restore(self, host: str, port: int) -> None:
        """Listen again after a restart; connections dial the forwarder on demand."""

    async def aclose(self) -> None:
        """Stop listening and remove the socket; idempotent."""


class AgentChannelPort(Protocol):
    """Builds agent proxies and the TLS material the pod VM needs."""

    def apf_tls_fields(self, instance_name: str) -> Mapping[str, Any]:
        """The apf.json TLS fields for a new pod VM."""

    def new_proxy(self, socket_path: Path, instance_name: str) -> AgentProxyPort:
        """A proxy for one sandbox (not yet listening)."""


class PodNetworkPort(Protocol):
    """The worker side of the pod network tunnel."""

    async def inspect(self, netns_path: str, vni: int) -> dict[str, Any]:
        """Read the pod namespace; returns the apf.json ``pod-network`` object."""

    async def setup(self, netns_path: str, vm_ips: Sequence[str], pod_network: Mapping[str, Any]) -> None:
        """Create the tunnel; idempotent."""

    async def teardown(self, netns_path: str, pod_network: Mapping[str, Any]) -> None:
        """Remove the tunnel; idempotent, missing pieces are fine."""


class NoPodNetwork:
    """Used when the node has no tunnel support configured: refuses a namespace path."""

    async def inspect(self, netns_path: str, vni: int) -> dict[str, Any]:
        from cloud_api_adaptor.errors import FailedPrecondition

        raise FailedPrecondition(f"failed to inspect netns {netns_path}: pod network tunnel is not available")

    async def setup(self, netns_path: str, vm_ips: Sequence[str], pod_network: Mapping[str, Any]) -> None:
        return None

    async def teardown(self, netns_path: str, pod_network: Mapping[str, Any]) -> None:
        return None


class LazyPodNetwork:
    """Builds the real pod network on first use.

    The tunnel code pulls in pyroute2 (about 160 modules, 10+ MiB); a node
    whose pods never ask for a network namespace never pays for it, and the
    daemon starts faster.
    """

    def __init__(self, build: Callable[[], PodNetworkPort]) -> None:
        self._build = build
        self._network: PodNetworkPort | None = None

    def _get(self) -> PodNetworkPort:
        if self._network is None:
            self._network = self._build()
        return self._network

    async def inspect(self, netns_path: str, vni: int) -> dict[str, Any]:
        return await self._get().inspect(netns_path, vni)

    async def setup(self, netns_path: str, vm_ips: Sequence[str], pod_network: Mapping[str, Any]) -> None:
        await self._get().setup(netns_path, vm_ips, pod_network)

    async def teardown(self, netns_path: str, pod_network: Mapping[str, Any]) -> None:
        await self._get().teardown(netns_path, pod_network)


class SandboxHooks(Protocol):
    """What the lifecycle tells the cluster (cloud_api_adaptor.kube implements it).

    Every method returns promptly whatever the API server does: the lifecycle never
    depends on the cluster, only informs it.  ``changed`` sees every committed record
    (the record is the durable outbox: its state says what the cluster should show).
    """

    def changed(self, record: SandboxRecord) -> None:
        """A record was committed (or adopted after a restart)."""

    async def before_create(self, record: SandboxRecord) -> None:
        """StartVM is about to create the instance; may wait, boundedly, for the cluster to know."""

    def started(self, record: SandboxRecord, seconds: float) -> None:
        """StartVM succeeded after ``seconds``."""

    def start_failed(self, record: SandboxRecord, error: BaseException, seconds: float) -> None:
        """StartVM failed with ``error`` after ``seconds`` (its instance already undone)."""

    def can_forget(self, record: SandboxRecord) -> bool:
        """A stopped record may be dropped: the cluster has seen the stop."""


class NoHooks:
    """No cluster: ``KUBERNETES_API=off``, the demo, most tests."""

    def changed(self, record: SandboxRecord) -> None:
        return None

    async def before_create(self, record: SandboxRecord) -> None:
        return None

    def started(self, record: SandboxRecord, seconds: float) -> None:
        return None

    def start_failed(self, record: SandboxRecord, error: BaseException, seconds: float) -> None:
        return None

    def can_forget(self, record: SandboxRecord) -> bool:
        return True
