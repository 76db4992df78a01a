"""The Helm chart, rendered and linted by a real helm v3, validated against the Kubernetes schemas."""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from .conftest import (
    CHART,
    NAMESPACE,
    REPO,
    HelmFailed,
    Obj,
    find,
    kinds,
    load_objects,
    minimal_values,
    required_keys,
    validate_objects,
)

pytestmark = pytest.mark.timeout(900)  # the first test builds helm (minutes, once per machine)

PROVIDERS = ("aws", "azure", "gcp", "ibmcloud", "ibmcloud-powervs", "libvirt")
Render = Callable[[dict[str, Any]], list[Obj]]


def _secret_values(mode: str) -> dict[str, Any]:
    if mode == "create":
        return {"secrets": {"mode": "create"}}
    return {"secrets": {"mode": "reference", "existingSecretName": "my-cloud-credentials"}}


def _container(objects: list[Obj], name: str = "cloud-api-adaptor-con") -> Obj:
    ds = find(objects, "DaemonSet", "cloud-api-adaptor-daemonset")
    (container,) = [c for c in ds["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return dict(container)


@pytest.mark.parametrize("mode", ["create", "reference"])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_chart_lints_and_renders_valid_objects_for_every_provider_and_secret_mode(
    helm: Callable[..., subprocess.CompletedProcess[str]], render: Render, provider: str, mode: str
) -> None:
    values = minimal_values(provider, **_secret_values(mode))
    lint = helm("lint", values, str(CHART), "--strict", "--namespace", NAMESPACE)
    assert lint.returncode == 0, lint.stdout + lint.stderr

    objects = render(values)

    expected = [
        "ClusterRole/cloud-api-adaptor",
        "ClusterRoleBinding/cloud-api-adaptor",
        "ConfigMap/peer-pods-cm",
        "DaemonSet/cloud-api-adaptor-daemonset",
        "Role/cloud-api-adaptor",
        "RoleBinding/cloud-api-adaptor",
        "RuntimeClass/kata-remote",
        "ServiceAccount/cloud-api-adaptor",
        # the cluster controller and the admission webhook (tests/deploy/test_cluster_side.py)
        "ClusterRole/peerpod-controller",
        "ClusterRoleBinding/peerpod-controller",
        "Deployment/peerpod-controller",
        "Role/peerpod-controller-leader-election",
        "RoleBinding/peerpod-controller-leader-election",
        "ServiceAccount/peerpod-controller",
        "ClusterRole/peerpod-webhook",
        "ClusterRoleBinding/peerpod-webhook",
        "Deployment/peerpod-webhook",
        "MutatingWebhookConfiguration/peer-pods-mutating-webhook",
        "Role/peerpod-webhook",
        "RoleBinding/peerpod-webhook",
        "Service/peer-pods-webhook",
        "ServiceAccount/peerpod-webhook",
    ]
    if mode == "create":
        expected.append("Secret/peer-pods-secret")
    assert kinds(objects) == sorted(expected)
    cm = find(objects, "ConfigMap", "peer-pods-cm")
    assert cm["data"]["CLOUD_PROVIDER"] == provider
    for key in required_keys()[provider]:
        assert cm["data"][key] == f"test-{key.lower()}"
    env_from = _container(objects)["envFrom"]
    secret_name = "peer-pods-secret" if mode == "create" else "my-cloud-credentials"
    assert env_from == [{"configMapRef": {"name": "peer-pods-cm"}}, {"secretRef": {"name": secret_name}}]
    for obj in objects:
        if obj["kind"] not in {
            "RuntimeClass",
            "ClusterRole",
            "ClusterRoleBinding",
            "MutatingWebhookConfiguration",
        }:
            assert obj["metadata"]["namespace"] == NAMESPACE


def test_daemonset_has_the_essentials(render: Render) -> None:
    objects = render(minimal_values("aws"))
    ds = find(objects, "DaemonSet", "cloud-api-adaptor-daemonset")
    pod = ds["spec"]["template"]["spec"]
    container = _container(objects)

    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod["serviceAccountName"] == "cloud-api-adaptor"
    assert ds["spec"]["updateStrategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    assert pod["terminationGracePeriodSeconds"] >= 120

    security = container["securityContext"]
    assert security.get("privileged", False) is False
    assert sorted(security["capabilities"]["add"]) == ["NET_ADMIN", "SYS_ADMIN"]

    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    host_paths = {
        volumes[m["name"]]["hostPath"]["path"]: m for m in mounts.values() if "hostPath" in volumes[m["name"]]
    }
    assert host_paths["/run/peerpod"]["mountPath"] == "/run/peerpod"
    assert host_paths["/run/netns"]["mountPropagation"] == "HostToContainer"
    assert host_paths["/run/xtables.lock"]["mountPath"] == "/run/xtables.lock"
    assert volumes[host_paths["/run/xtables.lock"]["name"]]["hostPath"]["type"] == "FileOrCreate"
    assert host_paths["/lib/modules"]["readOnly"] is True
    state = host_paths["/var/lib/cloud-api-adaptor"]
    assert volumes[state["name"]]["hostPath"]["type"] == "DirectoryOrCreate"
    env = {e["name"]: e for e in container["env"]}
    assert env["STATE_DIR"]["value"] == state["mountPath"]  # the daemon writes where the hostPath is

    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["POD_UID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.uid"}}

    probe = container["startupProbe"]["httpGet"]
    assert (probe["host"], probe["port"], probe["path"]) == ("127.0.0.1", 8000, "/startup")
    assert env["PROBE_PORT"]["value"] == "8000"

    resources = container["resources"]
    assert set(resources["requests"]) == {"cpu", "memory"}
    assert set(resources["limits"]) >= {"memory"}
    assert "command" not in container  # the image's entrypoint: cloud-api-adaptor serve


def test_runtime_class_kata_remote_with_overhead_and_toggle(render: Render) -> None:
    rc = find(render(minimal_values("gcp")), "RuntimeClass", "kata-remote")
    assert rc["handler"] == "kata-remote"
    assert rc["overhead"]["podFixed"] == {"cpu": "250m", "memory": "120Mi"}

    objects = render(minimal_values("gcp", runtimeClass={"create": False}))
    assert not [o for o in objects if o["kind"] == "RuntimeClass"]


def daemon_rules(objects: list[Obj], kind: str = "ClusterRole") -> list[tuple[str, str, tuple[str, ...]]]:
    role = find(objects, kind, "cloud-api-adaptor")
    return sorted(
        (group, resource, tuple(sorted(rule["verbs"])))
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    )


#: the daemon's whole Kubernetes footprint (docs/kubernetes.md): nothing else, no wildcards
DAEMON_RULES = [
    ("", "events", ("create",)),
    ("", "nodes/status", ("patch",)),
    ("confidentialcontainers.org", "peerpods", ("create", "delete", "get", "list", "patch", "watch")),
    ("confidentialcontainers.org", "peerpods/status", ("patch",)),
]
#: in its own namespace: is this shutdown an uninstall (its DaemonSet gone)?
DAEMON_NAMESPACE_RULES = [("", "pods", ("get",)), ("apps", "daemonsets", ("get",))]


def test_rbac_is_least_privilege_and_the_token_is_mounted(render: Render) -> None:
    objects = render(minimal_values("azure"))
    assert daemon_rules(objects) == DAEMON_RULES
    binding = find(objects, "ClusterRoleBinding", "cloud-api-adaptor")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "cloud-api-adaptor", "namespace": NAMESPACE}
    ]
    assert find(objects, "ServiceAccount", "cloud-api-adaptor")["automountServiceAccountToken"] is True
    ds = find(objects, "DaemonSet")
    assert ds["spec"]["template"]["spec"]["automountServiceAccountToken"] is True

    # without the API: no token, no role (KUBERNETES_API=auto then stays off)
    objects = render(
        minimal_values(
            "azure",
            serviceAccount={"automountToken": False},
            rbac={"create": False},
            controller={"enabled": False},
            webhook={"enabled": False},
        )
    )
    assert not [
        o for o in objects if o["kind"] in {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
    ]
    assert find(objects, "ServiceAccount", "cloud-api-adaptor")["automountServiceAccountToken"] is False


def test_the_chart_ships_the_peerpod_crd_of_the_kustomize_base(helm: Any) -> None:
    done = helm(
        "template", minimal_values("gcp"), "peerpods", str(CHART), "--namespace", NAMESPACE, "--include-crds"
    )
    assert done.returncode == 0, done.stderr
    objects = load_objects(done.stdout)
    validate_objects(objects)
    crd = find(objects, "CustomResourceDefinition", "peerpods.confidentialcontainers.org")
    base = yaml.safe_load((REPO / "deploy/kustomize/base/peerpod-crd.yaml").read_text())
    assert crd == base
    [version] = crd["spec"]["versions"]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    spec_fields = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    assert {"cloudProvider", "instanceID"} <= set(spec_fields)  # the Go CRD's fields
    assert "cleand" in version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]


def test_config_values_land_in_the_configmap_as_strings_and_empty_ones_are_left_out(render: Render) -> None:
    values = minimal_values("aws")
    values["providerConfigs"]["aws"].update({"PODVM_INSTANCE_TYPES": "", "ROOT_VOLUME_SIZE": 40})
    values["config"] = {
        "TLS_SKIP_VERIFY": True,
        "VXLAN_PORT": 4790,
        "LOG_LEVEL": "",
        "PODVM_INSTANCE_TYPE": "a",
    }
    values["providerConfigs"]["aws"]["PODVM_INSTANCE_TYPE"] = "m6a.large"

    data = find(render(values), "ConfigMap")["data"]

    assert data["ROOT_VOLUME_SIZE"] == "40"
    assert data["TLS_SKIP_VERIFY"] == "true"
    assert data["VXLAN_PORT"] == "4790"
    assert data["PODVM_INSTANCE_TYPE"] == "m6a.large"  # the provider section wins over config
    assert "LOG_LEVEL" not in data
    assert "PODVM_INSTANCE_TYPES" not in data


def test_create_mode_secret_carries_only_the_credentials_that_are_set(render: Render) -> None:
    values = minimal_values("azure")
    values["providerSecrets"] = {"azure": {"AZURE_CLIENT_ID": "id-1", "AZURE_CLIENT_SECRET": ""}}

    secret = find(render(values), "Secret", "peer-pods-secret")

    assert {k: base64.b64decode(v).decode() for k, v in secret["data"].items()} == {"AZURE_CLIENT_ID": "id-1"}


def test_a_missing_required_key_fails_the_install_naming_it(render: Render) -> None:
    values = minimal_values("azure")
    del values["providerConfigs"]["azure"]["AZURE_IMAGE_ID"]

    with pytest.raises(HelmFailed, match=r"providerConfigs\.azure\.AZURE_IMAGE_ID is required"):
        render(values)


def test_an_unset_or_unknown_provider_fails_listing_the_known_ones(render: Render) -> None:
    known = "aws, azure, gcp, ibmcloud, ibmcloud-powervs, libvirt"
    with pytest.raises(HelmFailed, match=f"set provider to one of: {known}"):
        render({})
    with pytest.raises(HelmFailed, match='unknown provider "vsphere"'):
        render({"provider": "vsphere"})


def test_an_out_of_tree_provider_works_with_its_own_section(render: Render) -> None:
    objects = render({"provider": "myprov", "providerConfigs": {"myprov": {"MY_KEY": "v"}}})
    assert find(objects, "ConfigMap")["data"] == {"CLOUD_PROVIDER": "myprov", "MY_KEY": "v"}


def test_existing_configmap_is_used_unchanged(render: Render) -> None:
    # No required keys given: an existing peer-pods-cm holds the configuration.
    objects = render({"provider": "ibmcloud", "configMap": {"create": False}})

    assert not [o for o in objects if o["kind"] == "ConfigMap"]
    assert {"configMapRef": {"name": "peer-pods-cm"}} in _container(objects)["envFrom"]


def test_reference_mode_needs_the_existing_secret_name(render: Render) -> None:
    with pytest.raises(HelmFailed, match="existingSecretName is required"):
        render(minimal_values("aws", secrets={"mode": "reference"}))
    with pytest.raises(HelmFailed, match=r"secrets\.mode must be create or reference"):
        render(minimal_values("aws", secrets={"mode": "vault"}))


@pytest.mark.parametrize("mode", ["create", "reference"])
def test_ssh_key_and_tls_certificates_are_mounted_in_both_secret_modes(render: Render, mode: str) -> None:
    if mode == "create":
        secrets = {
            "mode": "create",
            "sshKey": {"privateKey": "PRIVATE", "publicKey": "PUBLIC"},
            "tlsCerts": {"caCert": "CA", "clientCert": "CERT", "clientKey": "KEY"},
        }
        ssh_name, tls_name = "ssh-key-secret", "certs-for-tls"
    else:
        secrets = {
            "mode": "reference",
            "existingSecretName": "creds",
            "existingSshKeySecretName": "my-ssh",
            "existingTlsSecretName": "my-tls",
        }
        ssh_name, tls_name = "my-ssh", "my-tls"

    objects = render(minimal_values("libvirt", secrets=secrets))

    pod = find(objects, "DaemonSet")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m for m in _container(objects)["volumeMounts"]}
    assert volumes["ssh"]["secret"]["secretName"] == ssh_name
    assert volumes["ssh"]["secret"]["defaultMode"] == 0o600
    assert mounts["ssh"]["mountPath"] == "/root/.ssh"
    assert volumes["certs-for-tls"]["secret"]["secretName"] == tls_name
    assert mounts["certs-for-tls"]["mountPath"] == "/etc/certificates"
    env = {e["name"]: e.get("value") for e in _container(objects)["env"]}
    assert env["CACERT_FILE"] == "/etc/certificates/ca.crt"
    assert env["CERT_FILE"] == "/etc/certificates/client.crt"
    assert env["CERT_KEY"] == "/etc/certificates/client.key"
    if mode == "create":
        tls = find(objects, "Secret", "certs-for-tls")
        assert sorted(tls["data"]) == ["ca.crt", "client.crt", "client.key"]
        ssh = find(objects, "Secret", "ssh-key-secret")
        assert base64.b64decode(ssh["data"]["id_rsa"]) == b"PRIVATE"
    else:
        assert not [o for o in objects if o["kind"] == "Secret"]


def test_without_certificates_the_daemon_generates_its_own(render: Render) -> None:
    objects = render(minimal_values("aws"))
    env = {e["name"] for e in _container(objects)["env"]}
    assert not env & {"CACERT_FILE", "CERT_FILE", "CERT_KEY"}
    assert "certs-for-tls" not in {
        v["name"] for v in find(objects, "DaemonSet")["spec"]["template"]["spec"]["volumes"]
    }


def test_image_workload_identity_and_extra_args_are_configurable(render: Render) -> None:
    values = minimal_values(
        "azure",
        image={"repository": "registry.example/caa", "tag": "1.2.3", "pullPolicy": "Always"},
        serviceAccount={"annotations": {"azure.workload.identity/client-id": "abc"}, "automountToken": False},
        daemonset={"podLabels": {"azure.workload.identity/use": "true"}},
        extraArgs=["-disable-tls"],
    )

    objects = render(values)

    container = _container(objects)
    assert container["image"] == "registry.example/caa:1.2.3"
    assert container["args"] == ["-disable-tls"]
    sa = find(objects, "ServiceAccount", "cloud-api-adaptor")
    assert sa["metadata"]["annotations"] == {"azure.workload.identity/client-id": "abc"}
    labels = find(objects, "DaemonSet")["spec"]["template"]["metadata"]["labels"]
    assert labels["azure.workload.identity/use"] == "true"
    assert labels["app"] == "cloud-api-adaptor"


def test_the_fd_keeper_shares_only_its_socket_directory_with_the_daemon(render: Render) -> None:
    objects = render(minimal_values("aws"))
    daemon, keeper = _container(objects), _container(objects, "fd-keeper")
    pod = find(objects, "DaemonSet", "cloud-api-adaptor-daemonset")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    (mount,) = keeper["volumeMounts"]
    assert "emptyDir" in volumes[mount["name"]]  # per pod: a rolling update's new pod has its own keeper
    assert mount in daemon["volumeMounts"]
    socket = {e["name"]: e.get("value") for e in daemon["env"]}["FD_KEEPER_SOCKET"]
    assert socket.startswith(mount["mountPath"] + "/")
    assert keeper["command"] == ["caa-fd-keeper", "--socket", socket]
    assert keeper["image"] == daemon["image"]
    assert keeper["securityContext"]["capabilities"] == {"drop": ["ALL"]}

    values = minimal_values("aws")
    values["fdKeeper"] = {"enabled": False}
    objects = render(values)
    ds = find(objects, "DaemonSet", "cloud-api-adaptor-daemonset")
    assert [c["name"] for c in ds["spec"]["template"]["spec"]["containers"]] == ["cloud-api-adaptor-con"]
    assert "FD_KEEPER_SOCKET" not in {e["name"] for e in _container(objects)["env"]}
