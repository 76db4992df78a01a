"""The orphan scan: this node's instances with no sandbox go, nobody else's are touched.

The instances are launched in moto behind the daemon's back, tagged as the
daemon tags its own (``cloud_api_adaptor.provider`` tag keys; the daemon's values
come from NODE_NAME and CLUSTER_ID).
"""

from __future__ import annotations

import pytest

from cloud_api_adaptor.provider import TAG_NODE
from cloud_api_adaptor.testing.eventually import eventually

from .cloud import owner_tags
from .harness import AwsNode, orphan_scans

pytestmark = pytest.mark.root

GONE = {"shutting-down", "terminated"}


@pytest.mark.asyncio
async def test_an_orphan_of_this_node_is_deleted_and_other_nodes_instances_are_untouched(
    aws_node: AwsNode,
) -> None:
    vpc, node, cluster = aws_node.vpc, aws_node.node_name, aws_node.cluster_id
    orphan = vpc.run_tagged(owner_tags(node, cluster, "a-sandbox-this-node-no-longer-has"))
    others = {
        "another node": vpc.run_tagged(owner_tags("node-elsewhere", cluster, "theirs")),
        "another cluster": vpc.run_tagged(owner_tags(node, "cluster-elsewhere", "theirs")),
        "no cluster tag": vpc.run_tagged({TAG_NODE: node}),
        "no owner tags": vpc.run_tagged({"Name": "hand-made"}),
    }
    daemon = aws_node.daemon(ORPHAN_SCAN_INTERVAL="1s", ORPHAN_GRACE_PERIOD="0s")

    await eventually(lambda: vpc.state(orphan) in GONE, "the orphan's deletion")
    seen = len(orphan_scans(daemon))
    await eventually(lambda: len(orphan_scans(daemon)) > seen, "one more scan")
    for what, instance_id in others.items():
        assert vpc.state(instance_id) == "running", what
    assert "1 orphans deleted" in "\n".join(orphan_scans(daemon)), aws_node.logs()


@pytest.mark.asyncio
async def test_an_orphan_younger_than_the_grace_period_is_kept(aws_node: AwsNode) -> None:
    vpc = aws_node.vpc
    young = vpc.run_tagged(owner_tags(aws_node.node_name, aws_node.cluster_id, "just-launched"))
    daemon = aws_node.daemon(ORPHAN_SCAN_INTERVAL="1s", ORPHAN_GRACE_PERIOD="1h")
    await eventually(lambda: len(orphan_scans(daemon)) >= 2, "two orphan scans")
    assert vpc.state(young) == "running"
    assert all("1 too young" in line for line in orphan_scans(daemon)), orphan_scans(daemon)
