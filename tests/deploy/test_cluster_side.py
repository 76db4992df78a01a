"""The controller and webhook objects: chart and kustomize agree, RBAC is least privilege, the webhook
configuration points at its Service and only sees peer pods, cert-manager mode wires the certificate."""

from __future__ import annotations

import copy
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .conftest import CHART, NAMESPACE, OVERLAYS, Obj, find, load_objects, minimal_values, validate_objects

pytestmark = pytest.mark.timeout(900)  # the first test builds the tools (minutes, once per machine)

Render = Callable[[dict[str, Any]], list[Obj]]
Build = Callable[[Path], list[Obj]]


def _pod(objects: list[Obj], name: str) -> dict[str, Any]:
    spec = copy.deepcopy(find(objects, "Deployment", name)["spec"]["template"]["spec"])
    spec["containers"][0].pop("image")
    return dict(spec)


def _rules(objects: list[Obj], kind: str, name: str) -> list[dict[str, Any]]:
    return list(find(objects, kind, name)["rules"])


@pytest.mark.parametrize("name", ["peerpod-controller", "peerpod-webhook"])
def test_chart_and_kustomize_render_the_same_pods_and_rbac(
    kustomize_build: Build, render: Render, name: str
) -> None:
    from_kustomize = kustomize_build(OVERLAYS / "aws")
    from_helm = render(minimal_values("aws"))
    assert _pod(from_kustomize, name) == _pod(from_helm, name)
    for kind in ("ClusterRole", "Role" if name == "peerpod-webhook" else "ClusterRole"):
        assert _rules(from_kustomize, kind, name) == _rules(from_helm, kind, name)
    lease = "peerpod-controller-leader-election"
    assert _rules(from_kustomize, "Role", lease) == _rules(from_helm, "Role", lease)
    for kind in ("Service", "MutatingWebhookConfiguration"):
        k, h = find(from_kustomize, kind), find(from_helm, kind)
        assert k.get("spec", k.get("webhooks")) == h.get("spec", h.get("webhooks"))


def test_controller_rbac_is_peerpods_pods_nodes_and_its_lease(render: Render) -> None:
    objects = render(minimal_values("aws"))
    granted = {
        (group, resource, verb)
        for rule in _rules(objects, "ClusterRole", "peerpod-controller")
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert {r for _, r, _ in granted} == {"peerpods", "peerpods/status", "pods", "nodes"}
    assert {v for _, r, v in granted if r in {"pods", "nodes"}} == {"get", "list", "watch"}
    assert not any(v in {"create", "update", "*"} for _, r, v in granted if r == "peerpods")
    [lease] = _rules(objects, "Role", "peerpod-controller-leader-election")
    assert lease["resources"] == ["leases"]
    role = find(objects, "Role", "peerpod-controller-leader-election")
    assert role["metadata"]["namespace"] == NAMESPACE
    pod = find(objects, "Deployment", "peerpod-controller")["spec"]["template"]["spec"]
    envfrom = pod["containers"][0]["envFrom"]
    assert {"configMapRef": {"name": "peer-pods-cm"}} in envfrom
    assert {"secretRef": {"name": "peer-pods-secret"}} in envfrom


def test_webhook_rbac_is_only_its_secret_and_its_configuration(render: Render) -> None:
    objects = render(minimal_values("aws"))
    named = [r for r in _rules(objects, "Role", "peerpod-webhook") if r.get("resourceNames")]
    assert named == [
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["peer-pods-webhook-cert"],
         "verbs": ["get", "update"]}
    ]  # fmt: skip
    [cluster] = _rules(objects, "ClusterRole", "peerpod-webhook")
    assert cluster["resourceNames"] == ["peer-pods-mutating-webhook"]
    assert cluster["verbs"] == ["get", "patch"]


def test_webhook_configuration_targets_the_service_and_only_peer_pods(kustomize_build: Build) -> None:
    objects = kustomize_build(OVERLAYS / "gcp")
    [hook] = find(objects, "MutatingWebhookConfiguration")["webhooks"]
    assert hook["clientConfig"]["service"] == {
        "name": "peer-pods-webhook",
        "namespace": NAMESPACE,
        "path": "/mutate-v1-pod",
        "port": 443,
    }
    assert hook["failurePolicy"] == "Ignore"
    assert hook["sideEffects"] == "None"
    assert hook["rules"] == [
        {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}
    ]
    assert "'kata-remote'" in hook["matchConditions"][0]["expression"]
    excluded = hook["namespaceSelector"]["matchExpressions"][0]["values"]
    assert set(excluded) == {"kube-system", NAMESPACE}
    service = find(objects, "Service", "peer-pods-webhook")
    pod = find(objects, "Deployment", "peerpod-webhook")["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert (
        find(objects, "Deployment", "peerpod-webhook")["spec"]["template"]["spec"]["containers"][0]["image"]
        == find(objects, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]["image"]
    )


def test_chart_runtime_class_and_failure_policy_are_configurable(render: Render) -> None:
    objects = render(
        minimal_values("aws", webhook={"runtimeClassName": "kata-remote-cvm", "failurePolicy": "Fail"})
    )
    [hook] = find(objects, "MutatingWebhookConfiguration")["webhooks"]
    assert hook["failurePolicy"] == "Fail"
    assert "'kata-remote-cvm'" in hook["matchConditions"][0]["expression"]
    env = find(objects, "Deployment", "peerpod-webhook")["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "TARGET_RUNTIMECLASS", "value": "kata-remote-cvm"} in env


def test_cert_manager_mode_mounts_its_secret_and_injects_the_ca(
    helm: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    values = minimal_values("aws", webhook={"certManager": {"enabled": True}})
    done = helm("template", values, "peerpods", str(CHART), "--namespace", NAMESPACE)
    assert done.returncode == 0, done.stderr
    objects = load_objects(done.stdout)  # cert-manager's kinds have no schema here: the rest is validated
    kinds = {o["kind"] for o in objects}
    assert {"Certificate", "Issuer"} <= kinds
    assert not [o for o in objects if o["kind"] == "Role" and o["metadata"]["name"] == "peerpod-webhook"]
    config = find(objects, "MutatingWebhookConfiguration")
    assert (
        config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
        == f"{NAMESPACE}/peer-pods-webhook"
    )
    pod = find(objects, "Deployment", "peerpod-webhook")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["cert"] == "/tmp/k8s-webhook-server/serving-certs"
    validate_objects([o for o in objects if o["kind"] not in {"Certificate", "Issuer"}])


def test_both_can_be_left_out(render: Render) -> None:
    objects = render(minimal_values("aws", controller={"enabled": False}, webhook={"enabled": False}))
    names = {o["metadata"]["name"] for o in objects}
    assert not {"peerpod-controller", "peerpod-webhook", "peer-pods-mutating-webhook"} & names
