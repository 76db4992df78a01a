"""Node capacity: ``kata.peerpods.io/vm`` = PEERPODS_LIMIT_PER_NODE in the node's status.

The scheduler then places at most that many peer pods (the webhook gives each one
``kata.peerpods.io/vm: 1``) on the node.  Each daemon advertises at start and names
itself (its pod UID) in the annotation ``kata.peerpods.io/caa-owner`` in the same
patch; ``withdraw`` removes the capacity only while the annotation still names the
caller (a JSON patch ``test``, so atomic), so an old pod shutting down during a rolling
update or a hand-over can never remove what its successor advertised.  The daemon
itself never withdraws on shutdown: a restart or hand-over must keep the node
schedulable.  The kubelet derives ``allocatable`` from ``capacity``.
"""

from __future__ import annotations

import logging

from lightkube.resources.core_v1 import Node
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
