"""``cloud-api-adaptor controller --check``: what ``doctor`` is for the daemon, for the controller.

Answers the questions an operator has when VMs are not being cleaned up: can
it reach the API server, may it do everything it needs (asked with
SelfSubjectAccessReview, so a missing RBAC rule is named, not guessed), does
the provider configuration work, who holds the Lease, and how many PeerPods
are waiting for their VM to be deleted.
"""

from __future__ import annotations

from collections.abc import Sequence

import httpx2
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.models.authorization_v1 import ResourceAttributes, SelfSubjectAccessReviewSpec
from lightkube.resources.authorization_v1 import SelfSubjectAccessReview
from lightkube.resources.coordination_v1 import Lease

from cloud_api_adaptor.controller.peerpods import PeerPodReconciler, verdicts
from cloud_api_adaptor.controller.settings import ControllerSettings
from cloud_api_adaptor.errors import AdaptorError
from cloud_api_adaptor.kube.api import KubeApi
from cloud_api_adaptor.provider import CheckResult, Provider

PP_GROUP = "confidentialcontainers.org"


def needed(settings: ControllerSettings) -> list[tuple[str, str, str, str, str]]:
    """(verb, group, resource, subresource, namespace) the controller uses; namespace "" = cluster-wide."""
    rules = [(verb, PP_GROUP, "peerpods", "", "") for verb in ("list", "get", "patch", "delete")] + [
        ("patch", PP_GROUP, "peerpods", "status", ""),
        ("list", "", "pods", "", ""),
        ("list", "", "nodes", "", ""),
    ]
    if settings.watch:
        rules += [("watch", PP_GROUP, "peerpods", "", ""), ("watch", "", "nodes", "", "")]
    if settings.leader_elect:
        rules += [
            (v, "coordination.k8s.io", "leases", "", settings.namespace) for v in ("get", "create", "update")
        ]
    return rules


async def _allowed(client: AsyncClient, verb: str, group: str, resource: str, sub: str, ns: str) -> bool:
    review = SelfSubjectAccessReview(
        spec=SelfSubjectAccessReviewSpec(
            resourceAttributes=ResourceAttributes(
                verb=verb, group=group, resource=resource, subresource=sub or None, namespace=ns or None
            )
        )
    )
    answer = await client.create(review)
    return bool(answer.status and answer.status.allowed)


async def check(settings: ControllerSettings, client: AsyncClient, provider: Provider) -> list[CheckResult]:
    results: list[CheckResult] = []
    try:
        denied = [
            f"{verb} {resource}{'/' + sub if sub else ''}{' in ' + ns if ns else ''}"
            for verb, group, resource, sub, ns in needed(settings)
            if not await _allowed(client, verb, group, resource, sub, ns)
        ]
    except (ApiError, httpx2.HTTPError) as exc:
        return [CheckResult("kubernetes api", False, str(exc))]
    results.append(CheckResult("kubernetes api", True, "reachable"))
    results.append(
        CheckResult("rbac", not denied, "denied: " + ", ".join(denied) if denied else "all allowed")
    )
    try:
        results += list(await provider.verify())
    except AdaptorError as exc:
        results.append(CheckResult("provider", False, str(exc)))
    if settings.leader_elect:
        try:
            lease = await client.get(Lease, settings.lease_name, namespace=settings.namespace)
            holder = (lease.spec.holderIdentity if lease.spec else None) or "(released)"
            results.append(CheckResult("leader", True, holder))
        except ApiError as exc:
            results.append(
                CheckResult(
                    "leader", exc.status.code == 404, "no Lease yet" if exc.status.code == 404 else str(exc)
                )
            )
    if not denied:
        reconciler = PeerPodReconciler(
            KubeApi(client), provider, provider_name=settings.provider, cluster_id=settings.cluster_id
        )
        peerpods = await reconciler.list_peerpods()  # before the pods: see PeerPodReconciler.reconcile_all
        pods, nodes = await reconciler.live_state()
        waiting = [p for p, why in verdicts(peerpods, pods, nodes) if why.reason]
        results.append(CheckResult("peerpods awaiting cleanup", True, str(len(waiting))))
    return results


def format_table(results: Sequence[CheckResult]) -> str:
    width = max([len(r.name) for r in results] + [5])
    lines = [f"{'check'.ljust(width)}  result  detail"]
    lines += [f"{r.name.ljust(width)}  {'ok' if r.ok else 'FAIL':6}  {r.detail}" for r in results]
    return "\n".join(lines)
