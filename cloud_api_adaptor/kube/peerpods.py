"""PeerPod resources through a durable outbox: the sandbox record is the outbox.

Each record, as committed to disk, says what the cluster should show for its sandbox:
nothing yet (CREATED), a PeerPod with the record's instance id, state and addresses
(STARTING to STOPPING), or no PeerPod (STOPPED: its finalizer released, the object
deleted).  ``changed`` queues the record; one loop applies queued records to the API
server, idempotently (create-or-patch, 404 on release is done) and in any order of
arrival, and retries with backoff while the API server is away.  Nothing is lost on a
crash: after a restart every record is adopted, and so queued, again; a stopped record
is kept on disk (``can_forget``) until its release reached the API server.

The PeerPod is created before the cloud create: StartVM waits for it, but at most
``PEERPOD_CREATE_WAIT`` and not at all while the API server is known to be away, so
pods still start during an outage and the PeerPod follows when it is back.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import logging
import re
from dataclasses import dataclass
from typing import Any

from lightkube.generic_resource import create_namespaced_resource
from lightkube.types import PatchType

from cloud_api_adaptor.hypervisor.models import SandboxRecord, SandboxState
from cloud_api_adaptor.kube.api import KubeApi, KubeError

logger = logging.getLogger(__name__)

GROUP = "confidentialcontainers.org"
VERSION = "v1alpha1"
FINALIZER = "peer.pod/finalizer"
#: the node a PeerPod's sandbox runs on, so that a daemon watches only its own PeerPods
NODE_LABEL = "peerpods.confidentialcontainers.org/node"
MANAGED_BY = {"app.kubernetes.io/managed-by": "cloud-api-adaptor"}
BACKOFF = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)

PeerPod = create_namespaced_resource(GROUP, VERSION, "PeerPod", "peerpods")


def peerpod_name(record: SandboxRecord) -> str:
    """Deterministic (a retried create finds its object), unique per sandbox, a DNS subdomain."""
    suffix = hashlib.sha256(record.id.encode()).hexdigest()[:10]
    return f"{record.pod_name[: 253 - 21]}-resource-{suffix}"


def node_label(node_name: str) -> str:
    """``NODE_LABEL``'s value: the node name when it is a valid label value, else a digest of it.

    Node names are DNS subdomains of up to 253 characters; label values stop at 63.
    """
    if 0 < len(node_name) <= 63 and _LABEL_VALUE.fullmatch(node_name):
        return node_name
    return "sha256-" + hashlib.sha256(node_name.encode()).hexdigest()[:40]


_LABEL_VALUE = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")


def _timestamp(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Desired:
    """What the cluster should show for one sandbox; ``spec is None``: no PeerPod."""

    namespace: str
    name: str
    spec: dict[str, Any] | None
    status: dict[str, Any] | None
    owner: dict[str, Any] | None


def desired(record: SandboxRecord, cloud_provider: str, node_name: str) -> Desired | None:
    """None: nothing to do (CREATED has no PeerPod yet)."""
    namespace, name = record.pod_namespace, peerpod_name(record)
    if record.state is SandboxState.CREATED:
        return None
    if record.state is SandboxState.STOPPED:
        return Desired(namespace, name, None, None, None)
    spec = {
        "cloudProvider": cloud_provider,
        "instanceID": record.instance_id,
        "nodeName": node_name,
        "podName": record.pod_name,
        "podUID": record.pod_uid,
        "sandboxID": record.id,
        "instanceName": record.instance_name,
        "instanceType": record.instance_type,
        "idempotencyToken": record.token,
    }
    status = {
        "cleand": False,
        "state": record.state.value,
        "instanceIPs": list(record.instance_ips),
        "lastError": record.last_error[:1024],
        "createdAt": _timestamp(record.created_at),
        "lastTransitionTime": _timestamp(record.updated_at),
    }
    owner: dict[str, Any] | None = None
    if record.pod_uid:
        owner = {"apiVersion": "v1", "kind": "Pod", "name": record.pod_name, "uid": record.pod_uid}
        owner["controller"] = True
    return Desired(namespace, name, spec, status, owner)


class PeerPodOutbox:
    """Applies sandbox records to PeerPod objects; see the module docstring."""

    def __init__(self, api: KubeApi, cloud_provider: str, node_name: str, create_wait: float) -> None:
        self._api = api
        self._cloud_provider = cloud_provider
        self._node_name = node_name
        self._labels = {**MANAGED_BY, NODE_LABEL: node_label(node_name)}
        self._create_wait = create_wait
        #: sandbox id -> the newest record not yet applied
        self._pending: dict[str, SandboxRecord] = {}
        #: sandbox id -> what the API server last confirmed
        self._applied: dict[str, Desired] = {}
        self._wake = asyncio.Event()
        self._progress = asyncio.Condition()
        #: the last pass reached the API server (StartVM waits for its PeerPod only then)
        self.healthy = True

    # ---- the hooks' side (never blocks on the API server) ---------------------------------

    def changed(self, record: SandboxRecord) -> None:
        want = desired(record, self._cloud_provider, self._node_name)
        if want is None or self._applied.get(record.id) == want:
            self._pending.pop(record.id, None)
            return
        self._pending[record.id] = record
        self._wake.set()

    def can_forget(self, record: SandboxRecord) -> bool:
        if record.id in self._pending:
            return False
        self._applied.pop(record.id, None)
        return True

    def pending(self) -> int:
        return len(self._pending)

    async def wait_applied(self, record: SandboxRecord) -> bool:
        """Wait (boundedly) until ``record`` reached the API server; False on timeout or outage."""
        if not self.healthy or self._create_wait <= 0:
            return False
        try:
            async with asyncio.timeout(self._create_wait), self._progress:
                await self._progress.wait_for(lambda: record.id not in self._pending or not self.healthy)
        except TimeoutError:
            return False
        return record.id not in self._pending

    # ---- the loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Apply pending records for ever; after a failed pass back off and try again."""
        failures = 0
        while True:
            await self._wake.wait()
            self._wake.clear()
            failed = await self._apply_pending()
            async with self._progress:
                self.healthy = not failed
                self._progress.notify_all()
            if failed:
                delay = BACKOFF[min(failures, len(BACKOFF) - 1)]
                failures += 1
                await asyncio.sleep(delay)
                self._wake.set()
            else:
                failures = 0

    async def _apply_pending(self) -> bool:
        failed = False
        for sandbox_id, record in list(self._pending.items()):
            want = desired(record, self._cloud_provider, self._node_name)
            try:
                if want is not None:
                    await self._apply(want)
            except KubeError as exc:
                logger.warning("PeerPod for sandbox %s not updated yet: %s", sandbox_id, exc)
                failed = True
                if exc.temporary:
                    break  # the API server is away: the rest would fail the same way
                continue
            if self._pending.get(sandbox_id) is record:
                del self._pending[sandbox_id]
                if want is not None:
                    self._applied[sandbox_id] = want
            async with self._progress:
                self._progress.notify_all()
        return failed

    async def _apply(self, want: Desired) -> None:
        api, ns, name = self._api, want.namespace, want.name
        what = f"PeerPod {ns}/{name}"
        current: Any = await api.get_or_none(what, lambda: api.client.get(PeerPod, name, namespace=ns))
        if want.spec is None:
            if current is not None:
                await self._release(current, what)
            return
        if current is None:
            metadata: dict[str, Any] = {"name": name, "namespace": ns, "finalizers": [FINALIZER]}
            metadata["labels"] = self._labels
            if want.owner is not None:
                metadata["ownerReferences"] = [want.owner]
            body: Any = PeerPod.from_dict(
                {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": "PeerPod",
                    "metadata": metadata,
                    "spec": want.spec,
                }
            )
            try:
                current = await api.call(what, lambda: api.client.create(body))
            except KubeError as exc:
                if exc.status != 409:
                    raise
                current = await api.call(what, lambda: api.client.get(PeerPod, name, namespace=ns))
            logger.info("created %s", what)
        labels = dict(current.metadata.labels or {}) if current.metadata else {}
        if dict(current.get("spec") or {}) != want.spec or labels.get(NODE_LABEL) != self._labels[NODE_LABEL]:
            patch = {"metadata": {"labels": self._labels}, "spec": want.spec}
            await api.call(
                what,
                lambda: api.client.patch(PeerPod, name, patch, namespace=ns, patch_type=PatchType.MERGE),
            )
        if dict(current.get("status") or {}) != want.status:
            status_patch = {"status": want.status}
            await api.call(
                f"{what} status",
                lambda: api.client.patch(
                    PeerPod.Status, name, status_patch, namespace=ns, patch_type=PatchType.MERGE
                ),
            )

    async def _release(self, current: Any, what: str) -> None:
        """The VM is deleted: drop our finalizer, then the object (both idempotent)."""
        api = self._api
        metadata = current.metadata
        ns, name = metadata.namespace, metadata.name
        finalizers = list(metadata.finalizers or ())
        if FINALIZER in finalizers:
            index = finalizers.index(FINALIZER)
            patch = [
                {"op": "test", "path": f"/metadata/finalizers/{index}", "value": FINALIZER},
                {"op": "remove", "path": f"/metadata/finalizers/{index}"},
            ]
            try:
                await api.call(
                    what,
                    lambda: api.client.patch(PeerPod, name, patch, namespace=ns, patch_type=PatchType.JSON),
                )
            except KubeError as exc:
                if exc.status not in (404, 422):  # gone, or changed meanwhile: the next pass sees it
                    raise
                if exc.status == 422:
                    raise KubeError(f"{what}: finalizers changed meanwhile", temporary=True) from exc
        try:
            await api.call(what, lambda: api.client.delete(PeerPod, name, namespace=ns))
        except KubeError as exc:
            if exc.status != 404:
                raise
        logger.info("released %s", what)
