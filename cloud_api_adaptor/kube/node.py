"""Node capacity: ``kata.peerpods.io/vm`` = PEERPODS_LIMIT_PER_NODE in the node's status.

The scheduler then places at most that many peer pods (the webhook gives each one
``kata.peerpods.io/vm: 1``) on the node.  Each daemon advertises at start and names
itself (its pod UID) in the annotation ``kata.peerpods.io/caa-owner`` in the same
patch; ``withdraw`` removes the capacity only while the annotation still names the
caller (a JSON patch ``test``, so atomic), so an old pod shutting down during a rolling
update or a hand-over can never remove what its successor advertised.  The daemon
withdraws only on uninstall: at its final shutdown, when the DaemonSet that owns its pod
is gone or being deleted (``uninstalling``); a restart, a deleted pod or a hand-over keep
the node schedulable.  The kubelet derives ``allocatable`` from ``capacity``.
"""

from __future__ import annotations

import logging

from lightkube.resources.apps_v1 import DaemonSet
from lightkube.resources.core_v1 import Node, Pod
from lightkube.types import PatchType

from cloud_api_adaptor.kube.api import KubeApi, KubeError

logger = logging.getLogger(__name__)

RESOURCE = "kata.peerpods.io/vm"
OWNER_ANNOTATION = "kata.peerpods.io/caa-owner"
_RESOURCE_PATH = "/status/capacity/" + RESOURCE.replace("~", "~0").replace("/", "~1")
_OWNER_PATH = "/metadata/annotations/" + OWNER_ANNOTATION.replace("~", "~0").replace("/", "~1")


async def advertise(api: KubeApi, node_name: str, limit: int, owner: str) -> None:
    """Set the node's capacity and claim it for ``owner`` (idempotent)."""
    patch = {
        "metadata": {"annotations": {OWNER_ANNOTATION: owner}},
        "status": {"capacity": {RESOURCE: str(limit)}},
    }
    await api.call(
        f"advertising {RESOURCE} on node {node_name}",
        lambda: api.client.patch(Node.Status, node_name, patch, patch_type=PatchType.MERGE),
    )
    logger.info("node %s advertises %s=%d (owner %s)", node_name, RESOURCE, limit, owner)


async def withdraw(api: KubeApi, node_name: str, owner: str) -> bool:
    """Remove the capacity if ``owner`` still owns it; False when someone else does (or none is set)."""
    patch = [
        {"op": "test", "path": _OWNER_PATH, "value": owner},
        {"op": "remove", "path": _RESOURCE_PATH},
        {"op": "remove", "path": _OWNER_PATH},
    ]
    try:
        await api.call(
            f"withdrawing {RESOURCE} from node {node_name}",
            lambda: api.client.patch(Node.Status, node_name, patch, patch_type=PatchType.JSON),
        )
    except KubeError as exc:
        if exc.status == 422:  # the test failed: another daemon owns it now, or nothing is advertised
            return False
        raise
    return True


async def uninstalling(api: KubeApi, namespace: str, pod_name: str) -> bool:
    """True when the DaemonSet that owns this pod is gone, being deleted, or replaced by a new one.

    Background deletion (kubectl's and helm's default) removes the DaemonSet before its
    pods get SIGTERM; foreground deletion marks it first.  A pod without a DaemonSet
    owner (run by hand) is never an uninstall.
    """
    pod = await api.get_or_none(
        f"reading pod {namespace}/{pod_name}", lambda: api.client.get(Pod, pod_name, namespace=namespace)
    )
    if pod is None or pod.metadata is None:
        return False
    owners = [o for o in pod.metadata.ownerReferences or () if o.kind == "DaemonSet" and o.controller]
    if not owners:
        return False
    owner = owners[0]
    daemonset = await api.get_or_none(
        f"reading DaemonSet {namespace}/{owner.name}",
        lambda: api.client.get(DaemonSet, owner.name, namespace=namespace),
    )
    if daemonset is None or daemonset.metadata is None:
        return True
    return daemonset.metadata.uid != owner.uid or daemonset.metadata.deletionTimestamp is not None
