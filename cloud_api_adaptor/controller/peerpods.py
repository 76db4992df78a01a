"""One pass over the PeerPods: each whose VM must go has it deleted, then its finalizer released.

A PeerPod's VM must go when the PeerPod is being deleted (its pod was deleted
and the garbage collector cascades, or someone deleted it) while the daemon has
not released it, when its pod or its node no longer exists (the daemon that
would have cleaned up is gone with its node), or when a newer PeerPod has the
same owner pod (the pod got a new sandbox, so the older one's VM is dead weight:
the Go controller's rule, ``superseded``).  The VM is deleted by its recorded
instance id; a PeerPod without one (the daemon created it, then crashed before
the cloud create returned) has its VM found by the owner tags the daemon stamps
(cluster and sandbox).  Deletes are idempotent, so racing a daemon that is
stopping the same VM is harmless.  Then ``status.cleand`` is set, the finalizer
removed, and a PeerPod not yet being deleted is deleted.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.core_v1 import Node, Pod
from lightkube.types import PatchType

from cloud_api_adaptor.errors import AdaptorError
from cloud_api_adaptor.kube.api import KubeApi, KubeError
from cloud_api_adaptor.provider import TAG_CLUSTER, TAG_SANDBOX, Provider

logger = logging.getLogger(__name__)

FINALIZER = "peer.pod/finalizer"
PeerPod = create_namespaced_resource("confidentialcontainers.org", "v1alpha1", "PeerPod", "peerpods")


@dataclass(frozen=True)
class Verdict:
    """Why a PeerPod's VM must go (empty: it stays)."""

    reason: str = ""


def verdict(peerpod: Any, pods: Mapping[tuple[str, str], str], nodes: set[str]) -> Verdict:
    """Pure: the reason to delete ``peerpod``'s VM, given live pods ((ns, name) -> uid) and node names."""
    metadata = peerpod.metadata
    finalizers = list(metadata.finalizers or ())
    if metadata.deletionTimestamp is not None and FINALIZER not in finalizers:
        return Verdict()  # released: the API server finishes the delete
    if metadata.deletionTimestamp is not None:
        return Verdict("deleting")
    spec = dict(peerpod.spec or {})
    pod_name = spec.get("podName") or _owner_pod(metadata)
    if pod_name:
        uid = pods.get((metadata.namespace, pod_name))
        want = spec.get("podUID") or _owner_uid(metadata)
        if uid is None or (want and uid != want):
            return Verdict("pod-gone")
    node = spec.get("nodeName", "")
    if node and node not in nodes:
        return Verdict("node-gone")
    return Verdict()


def verdicts(
    peerpods: list[Any], pods: Mapping[tuple[str, str], str], nodes: set[str]
) -> list[tuple[Any, Verdict]]:
    """Pure: each PeerPod with its verdict, ``superseded`` included (it needs all of them)."""
    older = superseded(peerpods)
    judged = []
    for peerpod in peerpods:
        why = verdict(peerpod, pods, nodes)
        if not why.reason and (peerpod.metadata.namespace, peerpod.metadata.name) in older:
            why = Verdict("superseded")
        judged.append((peerpod, why))
    return judged


def superseded(peerpods: list[Any]) -> set[tuple[str, str]]:
    """Pure: (namespace, name) of every PeerPod with a strictly newer one of the same owner pod UID.

    A pod has one sandbox at a time; the kubelet makes a new one only for a pod whose
    sandbox is dead.  Creation times have one-second resolution: PeerPods created in the
    same second are never judged against each other.  PeerPods being deleted take no part.
    """
    newest: dict[str, Any] = {}
    by_owner: dict[str, list[tuple[Any, tuple[str, str]]]] = {}
    for peerpod in peerpods:
        metadata = peerpod.metadata
        if metadata is None or metadata.deletionTimestamp is not None or metadata.creationTimestamp is None:
            continue
        owner = dict(peerpod.spec or {}).get("podUID") or _owner_uid(metadata)
        if not owner:
            continue
        created = metadata.creationTimestamp
        by_owner.setdefault(owner, []).append((created, (metadata.namespace, metadata.name)))
        if owner not in newest or created > newest[owner]:
            newest[owner] = created
    return {key for owner, items in by_owner.items() for created, key in items if created < newest[owner]}


def _owner_pod(metadata: Any) -> str:
    for ref in metadata.ownerReferences or ():
        if ref.kind == "Pod":
            return str(ref.name)
    return ""


def _owner_uid(metadata: Any) -> str:
    for ref in metadata.ownerReferences or ():
        if ref.kind == "Pod":
            return str(ref.uid)
    return ""


class PeerPodReconciler:
    """Every API call goes through ``KubeApi``: paced by its rate limit, temporary failures retried."""

    def __init__(self, api: KubeApi, provider: Provider, *, provider_name: str, cluster_id: str) -> None:
        self._api = api
        self._client = api.client
        self._provider = provider
        self._provider_name = provider_name
        self._cluster_id = cluster_id or "default"

    async def _list(self, what: str, resource: type[Any], namespaced: bool = True) -> list[Any]:
        async def fetch() -> list[Any]:
            if namespaced:
                return [o async for o in self._client.list(resource, namespace="*")]
            return [o async for o in self._client.list(resource)]

        return await self._api.call(what, fetch)

    async def live_state(self) -> tuple[dict[tuple[str, str], str], set[str]]:
        pods: dict[tuple[str, str], str] = {}
        for pod in await self._list("listing pods", Pod):
            if pod.metadata and pod.metadata.name:
                pods[(pod.metadata.namespace or "", pod.metadata.name)] = pod.metadata.uid or ""
        nodes = {
            n.metadata.name for n in await self._list("listing nodes", Node, namespaced=False) if n.metadata
        }
        return pods, nodes

    async def list_peerpods(self) -> list[Any]:
        return await self._list("listing PeerPods", PeerPod)

    async def reconcile_all(self) -> dict[str, int]:
        """One pass; returns counts by outcome (kept, cleaned-<reason>, failed, skipped)."""
        # PeerPods first: a pod exists before its PeerPod, so a pod created during the pass is in the
        # pod list taken after; listing pods first would see its new PeerPod as orphaned and delete a
        # VM that is just starting.
        peerpods = await self.list_peerpods()
        pods, nodes = await self.live_state()
        outcomes: dict[str, int] = {}
        for peerpod, why in verdicts(peerpods, pods, nodes):
            outcome = await self.reconcile(peerpod, why)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        return outcomes

    async def reconcile(self, peerpod: Any, why: Verdict) -> str:
        if not why.reason:
            return "kept"
        spec = dict(peerpod.spec or {})
        name, namespace = peerpod.metadata.name, peerpod.metadata.namespace
        provider = spec.get("cloudProvider") or self._provider_name
        if provider != self._provider_name:
            logger.warning("controller: PeerPod %s/%s belongs to provider %s, not %s; left alone",
                           namespace, name, provider, self._provider_name)  # fmt: skip
            return "skipped"
        try:
            deleted = await self._delete_vm(spec)
        except AdaptorError as exc:
            logger.warning(
                "controller: PeerPod %s/%s (%s): VM delete failed: %s", namespace, name, why.reason, exc
            )
            return "failed"
        logger.info("controller: PeerPod %s/%s (%s): deleted VM %s", namespace, name, why.reason,
                    ", ".join(deleted) or "(none found)")  # fmt: skip
        try:
            await self._release(peerpod, delete=peerpod.metadata.deletionTimestamp is None)
        except KubeError as exc:
            logger.warning("controller: PeerPod %s/%s: release failed: %s", namespace, name, exc)
            return "failed"
        return f"cleaned-{why.reason}"

    async def _delete_vm(self, spec: Mapping[str, Any]) -> list[str]:
        instance_id = spec.get("instanceID") or ""
        if instance_id:
            await self._provider.delete_instance(instance_id)
            return [instance_id]
        sandbox = spec.get("sandboxID") or ""
        if not sandbox:
            return []
        found = await self._provider.list_instances({TAG_CLUSTER: self._cluster_id, TAG_SANDBOX: sandbox})
        for instance in found:
            await self._provider.delete_instance(instance.id)
        return [i.id for i in found]

    async def _release(self, peerpod: Any, *, delete: bool) -> None:
        """``status.cleand``, then the finalizer off, then (if nobody deleted it yet) the PeerPod gone."""
        name, namespace = peerpod.metadata.name, peerpod.metadata.namespace
        where = f"PeerPod {namespace}/{name}"
        try:
            await self._api.call(
                f"marking {where} cleaned",
                lambda: self._client.patch(
                    PeerPod.Status, name, {"status": {"cleand": True}}, namespace=namespace,
                    patch_type=PatchType.MERGE,
                ),
            )  # fmt: skip
        except KubeError as exc:
            if exc.status == 404:
                return
            logger.debug("controller: %s status not set: %s", where, exc)
        finalizers = list(peerpod.metadata.finalizers or ())
        if FINALIZER in finalizers:
            index = finalizers.index(FINALIZER)
            patch = [
                {"op": "test", "path": f"/metadata/finalizers/{index}", "value": FINALIZER},
                {"op": "remove", "path": f"/metadata/finalizers/{index}"},
            ]
            released = await self._api.get_or_none(
                f"releasing {where}",
                lambda: self._client.patch(
                    PeerPod, name, patch, namespace=namespace, patch_type=PatchType.JSON
                ),
            )
            if released is None:
                return
        if delete:
            await self._api.get_or_none(
                f"deleting {where}", lambda: self._client.delete(PeerPod, name, namespace=namespace)
            )
