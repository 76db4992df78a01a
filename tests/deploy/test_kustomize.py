"""The kustomize base and overlays, built by a real kustomize v5 and validated like the chart."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import CHART, NAMESPACE, OVERLAYS, Obj, find, kinds, minimal_values, required_keys

pytestmark = pytest.mark.timeout(900)  # the first test builds the tools (minutes, once per machine)

PROVIDERS = ("aws", "azure", "gcp", "ibmcloud", "ibmcloud-powervs", "libvirt")
Build = Callable[[Path], list[Obj]]


def _env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as kustomize reads them (comments and blank lines skipped)."""
    entries = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            entries[key] = value
    return entries


def test_every_provider_has_an_overlay() -> None:
    assert sorted(p.name for p in OVERLAYS.iterdir() if (p / "kustomization.yaml").exists()) == sorted(
        PROVIDERS
    )


@pytest.mark.parametrize("provider", PROVIDERS)
def test_overlay_builds_valid_objects_with_its_configmap_and_secret(
    kustomize_build: Build, provider: str
) -> None:
    objects = kustomize_build(OVERLAYS / provider)

    assert kinds(objects) == [
        "ClusterRole/cloud-api-adaptor",
        "ClusterRole/peerpod-controller",
        "ClusterRole/peerpod-webhook",
        "ClusterRoleBinding/cloud-api-adaptor",
        "ClusterRoleBinding/peerpod-controller",
        "ClusterRoleBinding/peerpod-webhook",
        "ConfigMap/peer-pods-cm",
        "CustomResourceDefinition/peerpods.confidentialcontainers.org",
        "DaemonSet/cloud-api-adaptor-daemonset",
        "Deployment/peerpod-controller",
        "Deployment/peerpod-webhook",
        "MutatingWebhookConfiguration/peer-pods-mutating-webhook",
        f"Namespace/{NAMESPACE}",
        "Role/cloud-api-adaptor",
        "Role/peerpod-controller-leader-election",
        "Role/peerpod-webhook",
        "RoleBinding/cloud-api-adaptor",
        "RoleBinding/peerpod-controller-leader-election",
        "RoleBinding/peerpod-webhook",
        "RuntimeClass/kata-remote",
        "Secret/peer-pods-secret",
        "Service/peer-pods-webhook",
        "ServiceAccount/cloud-api-adaptor",
        "ServiceAccount/peerpod-controller",
        "ServiceAccount/peerpod-webhook",
    ]
    cluster_scoped = {
        "Namespace",
        "RuntimeClass",
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "MutatingWebhookConfiguration",
    }
    for obj in objects:
        if obj["kind"] not in cluster_scoped:
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["kind"]
    data = find(objects, "ConfigMap")["data"]
    assert data["CLOUD_PROVIDER"] == provider
    # Required keys are there as placeholders to fill in; everything else is commented out.
    assert {k for k in data if k != "CLOUD_PROVIDER"} == set(required_keys()[provider])
    assert all(v == "" for k, v in data.items() if k != "CLOUD_PROVIDER")
    assert data == _env_file(OVERLAYS / provider / "peer-pods-cm.env")
    # Credentials are commented out too (an empty credential variable confuses SDK credential chains).
    assert not find(objects, "Secret").get("data")


def test_runtime_class_matches_the_charts(kustomize_build: Build) -> None:
    rc = find(kustomize_build(OVERLAYS / "aws"), "RuntimeClass", "kata-remote")
    assert rc["handler"] == "kata-remote"
    assert rc["overhead"]["podFixed"] == {"cpu": "250m", "memory": "120Mi"}


def _pod_spec(objects: list[Obj]) -> dict[str, Any]:
    spec = copy.deepcopy(find(objects, "DaemonSet")["spec"])
    for container in spec["template"]["spec"]["containers"]:
        container.pop("image")
    return dict(spec)


@pytest.mark.parametrize("provider", ["aws", "azure", "gcp", "ibmcloud"])
def test_overlay_daemonset_matches_the_charts(
    kustomize_build: Build, render: Callable[[dict[str, Any]], list[Obj]], provider: str
) -> None:
    from_kustomize = _pod_spec(kustomize_build(OVERLAYS / provider))
    from_helm = _pod_spec(render(minimal_values(provider)))
    assert from_kustomize == from_helm


def test_libvirt_overlay_mounts_the_optional_ssh_key(kustomize_build: Build) -> None:
    pod = find(kustomize_build(OVERLAYS / "libvirt"), "DaemonSet")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["ssh"]["secret"] == {
        "secretName": "ssh-key-secret",
        "defaultMode": 0o600,
        "optional": True,
    }
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["ssh"]["mountPath"] == "/root/.ssh"


def test_a_users_overlay_can_fill_in_values_without_editing_the_generated_files(
    kustomize_build: Build, tmp_path: Path
) -> None:
    mine = tmp_path / "my-aws"
    mine.mkdir()
    (mine / "kustomization.yaml").write_text(
        f"""
resources:
  - {os.path.relpath(OVERLAYS / "aws", mine)}
configMapGenerator:
  - name: peer-pods-cm
    namespace: {NAMESPACE}
    behavior: merge
    literals:
      - PODVM_AMI_ID=ami-0123456789abcdef0
images:
  - name: cloud-api-adaptor
    newName: registry.example/cloud-api-adaptor
    newTag: "1.0"
"""
    )

    objects = kustomize_build(mine)

    assert find(objects, "ConfigMap")["data"]["PODVM_AMI_ID"] == "ami-0123456789abcdef0"
    container = find(objects, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.example/cloud-api-adaptor:1.0"


def test_rbac_and_crd_match_the_charts(
    kustomize_build: Build, helm: Callable[..., Any], render: Callable[[dict[str, Any]], list[Obj]]
) -> None:
    from .test_chart import DAEMON_NAMESPACE_RULES, DAEMON_RULES, daemon_rules

    objects = kustomize_build(OVERLAYS / "gcp")
    assert daemon_rules(objects) == DAEMON_RULES
    assert daemon_rules(objects, "Role") == sorted(DAEMON_NAMESPACE_RULES)
    assert find(objects, "RoleBinding", "cloud-api-adaptor")["subjects"][0]["namespace"] == NAMESPACE
    binding = find(objects, "ClusterRoleBinding", "cloud-api-adaptor")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "cloud-api-adaptor", "namespace": NAMESPACE}
    ]
    crd = find(objects, "CustomResourceDefinition")
    done = helm("template", minimal_values("gcp"), "peerpods", str(CHART), "--include-crds")
    chart_crd = find([o for o in yaml.safe_load_all(done.stdout) if o], "CustomResourceDefinition")
    crd["metadata"].pop("labels", None)  # kustomize labels everything it builds
    assert crd == chart_crd
