"""Which of this node's PeerPods the cluster is deleting: the pod object is gone.

A PeerPod is owned by its pod (``ownerReferences``), so when the pod object is
deleted the garbage collector deletes the PeerPod too; our finalizer holds it,
with ``deletionTimestamp`` set, until the daemon has deleted the VM.  Normally
the kubelet stops the pod sandbox first and the shim's StopVM does all that.
When that path is broken (the shim died, the StopVM found no daemon), the
deleting PeerPod is the cluster's word that the pod is gone: the daemon's
abandoned-sandbox housekeeping (``hypervisor.abandonment``) stops the sandbox
after its grace period (a pod terminating gracefully under foreground deletion
keeps its VM meanwhile).

One list-then-watch of the PeerPods labelled with this node (``NODE_LABEL``):
no per-sandbox polling, and the daemon needs no access to pods.
"""

from __future__ import annotations

import logging
from typing import Any

from lightkube import ALL_NS

from cloud_api_adaptor.hypervisor.models import SandboxRecord
from cloud_api_adaptor.kube.api import KubeApi
from cloud_api_adaptor.kube.peerpods import NODE_LABEL, PeerPod, node_label

logger = logging.getLogger(__name__)


def _sandbox_and_deleting(obj: Any) -> tuple[str, bool]:
    spec = obj.get("spec") or {}
    metadata = obj.metadata
    deleting = metadata is not None and metadata.deletionTimestamp is not None
    return str(spec.get("sandboxID") or ""), deleting


class PeerPodDeletions:
    """The sandbox ids whose PeerPod is being deleted, kept current by a watch."""

    def __init__(self, api: KubeApi, node_name: str) -> None:
        self._api = api
        self._labels = {NODE_LABEL: node_label(node_name)}
        self._deleting: set[str] = set()
        #: a list has completed at least once: before that nothing is known
        self.synced = False

    def deleting(self, record: SandboxRecord) -> bool:
        return record.id in self._deleting

    async def run(self) -> None:
        """List, then follow changes for ever (restarted with backoff by the supervisor)."""
        await self._api.list_then_watch(
            PeerPod, self._on_list, self._on_event, namespace=ALL_NS, labels=self._labels
        )

    async def _on_list(self, items: list[Any]) -> None:
        deleting = set()
        for obj in items:
            sandbox_id, being_deleted = _sandbox_and_deleting(obj)
            if sandbox_id and being_deleted:
                deleting.add(sandbox_id)
        self._deleting = deleting
        self.synced = True

    async def _on_event(self, kind: str, obj: Any) -> None:
        sandbox_id, being_deleted = _sandbox_and_deleting(obj)
        if not sandbox_id:
            return
        if kind != "DELETED" and being_deleted:
            if sandbox_id not in self._deleting:
                logger.info("the PeerPod of sandbox %s is being deleted (its pod is gone)", sandbox_id)
            self._deleting.add(sandbox_id)
        else:
            self._deleting.discard(sandbox_id)
