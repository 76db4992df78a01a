"""The webhook through the real API server: a MutatingWebhookConfiguration pointing at the webhook on
127.0.0.1 over HTTPS (its own CA, patched into the configuration by the webhook), and the table of pods
created through the API; what the server stores is what is asserted."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
import pytest_asyncio
import yaml
from lightkube import AsyncClient, KubeConfig
from lightkube.codecs import from_dict
from lightkube.core.exceptions import ApiError
from lightkube.models.admissionregistration_v1 import (
    MutatingWebhook,
    RuleWithOperations,
    WebhookClientConfig,
)
from lightkube.models.meta_v1 import LabelSelector, ObjectMeta
from lightkube.resources.admissionregistration_v1 import MutatingWebhookConfiguration
from lightkube.resources.core_v1 import Namespace, Pod, Secret
from lightkube.resources.node_v1 import RuntimeClass

from cloud_api_adaptor.options import load
from cloud_api_adaptor.webhook.mutation import ANNOTATION_VCPUS
from cloud_api_adaptor.webhook.server import MUTATE_PATH, WebhookServer
from cloud_api_adaptor.webhook.settings import WebhookSettings
from tests.k8s.cluster import ROOT, KubeCluster
from tests.k8s.conftest import kubeconfig_for
from tests.webhook.cases import CASES, VM, Case, container


def webhook_configuration(name: str, port: int, namespace: str) -> MutatingWebhookConfiguration:
    return MutatingWebhookConfiguration(
        metadata=ObjectMeta(name=name),
        webhooks=[
            MutatingWebhook(
                name="mwebhook.peerpods.io",
                admissionReviewVersions=["v1"],
                sideEffects="None",
                # Fail, so a webhook the API server cannot reach fails the test instead of hiding
                failurePolicy="Fail",
                reinvocationPolicy="IfNeeded",
                clientConfig=WebhookClientConfig(url=f"https://127.0.0.1:{port}{MUTATE_PATH}"),
                rules=[
                    RuleWithOperations(
                        apiGroups=[""], apiVersions=["v1"], operations=["CREATE"], resources=["pods"]
                    )
                ],
                # only this test's namespace: other tests never meet this webhook
                namespaceSelector=LabelSelector(matchLabels={"kubernetes.io/metadata.name": namespace}),
            )
        ],
    )


@pytest_asyncio.fixture
async def webhook(
    kube_client: AsyncClient, kube_namespace: str, tmp_path: Path
) -> AsyncIterator[tuple[WebhookServer, str]]:
    config_name = f"peer-pods-{kube_namespace}"
    env = {
        "WEBHOOK_BIND_ADDRESS": "127.0.0.1",
        "WEBHOOK_PORT": "0",
        "WEBHOOK_HEALTH_PORT": "0",
        "WEBHOOK_CERT_DIR": str(tmp_path / "no-cert-manager"),
        "POD_NAMESPACE": kube_namespace,
        "WEBHOOK_CONFIG_NAME": config_name,
        "WEBHOOK_CERT_HOSTS": "127.0.0.1",
    }
    server = WebhookServer(load(WebhookSettings, env), kube_client)
    await server.start()  # the configuration does not exist yet: created below, then patched
    try:
        await kube_client.create(webhook_configuration(config_name, server.port, kube_namespace))
        yield server, config_name
    finally:
        await server.close()
        try:
            await kube_client.delete(MutatingWebhookConfiguration, config_name)
        except ApiError as exc:
            if exc.status.code != 404:
                raise


async def _ensure_runtime_class(client: AsyncClient, name: str) -> None:
    try:
        await client.create(RuntimeClass(metadata=ObjectMeta(name=name), handler=name))
    except ApiError as exc:
        if exc.status.code != 409:
            raise


async def _wait_until_webhook_is_called(client: AsyncClient, namespace: str) -> None:
    """The API server picks configuration changes up asynchronously: dry-run a pod until it is mutated."""
    probe = Case(f"probe-{secrets.token_hex(3)}", [container("p", {"cpu": "1"})], {}).pod(namespace)

    async def mutated() -> bool:
        try:
            got = await client.create(cast(Pod, Pod.from_dict(probe)), dry_run=True)
        except ApiError:
            return False  # the old caBundle: "x509: certificate signed by unknown authority"
        return bool(got.metadata and (got.metadata.annotations or {}).get(ANNOTATION_VCPUS) == "1")

    end = time.monotonic() + 30.0
    while not await mutated():
        assert time.monotonic() < end, "the API server never called the webhook"
        await asyncio.sleep(0.1)


def _resources(pod: Pod) -> list[dict[str, Any]]:
    assert pod.spec is not None
    result = []
    for c in pod.spec.containers:
        r = c.resources
        result.append({k: v for k, v in (("requests", r.requests), ("limits", r.limits)) if v} if r else {})
    return result


@pytest.mark.asyncio
async def test_table_through_the_api_server(
    kube_client: AsyncClient, kube_namespace: str, webhook: tuple[WebhookServer, str]
) -> None:
    server, config_name = webhook
    await server.refresh_now()  # the configuration exists now: the webhook patches its CA into it
    stored = await kube_client.get(MutatingWebhookConfiguration, config_name)
    assert stored.webhooks and stored.webhooks[0].clientConfig.caBundle
    secret = await kube_client.get(Secret, "peer-pods-webhook-cert", namespace=kube_namespace)
    assert secret.data and set(secret.data) == {"ca.crt", "tls.crt", "tls.key"}
    await _ensure_runtime_class(kube_client, "kata-qemu")
    await _wait_until_webhook_is_called(kube_client, kube_namespace)

    for case in CASES:
        created = await kube_client.create(cast(Pod, Pod.from_dict(case.pod(kube_namespace))))
        assert created.metadata is not None
        expected = case.api if case.api is not None else case.expected
        assert (created.metadata.annotations or {}) == expected, case.name
        resources = _resources(created)
        if case.mutated:
            assert resources[0] == {"requests": {VM: "1"}, "limits": {VM: "1"}}, case.name
            assert all(r == {} for r in resources[1:]), case.name
            assert created.spec is not None
            assert all(not (c.resources and (c.resources.requests or c.resources.limits))
                       for c in created.spec.initContainers or ()), case.name  # fmt: skip
        else:
            assert all(VM not in (r.get("requests") or {}) for r in resources), case.name
            assert resources[0].get("requests", {}).get("cpu") == "1", case.name

    # and it is counted
    metrics_url = f"http://127.0.0.1:{server.health_port}/metrics"
    async with aiohttp.ClientSession() as session, session.get(metrics_url) as response:
        text = await response.text()
    assert 'caa_webhook_admissions_total{outcome="mutated"}' in text


@pytest.mark.asyncio
async def test_replicas_share_one_certificate(kube_client: AsyncClient, kube_namespace: str) -> None:
    """Two replicas starting together settle on one CA (the Secret), so either can serve the API server."""
    from cloud_api_adaptor.webhook import certs

    hosts = certs.service_hosts("peer-pods-webhook", kube_namespace)
    first, second = await asyncio.gather(
        certs.shared_chain(kube_client, "shared", kube_namespace, hosts),
        certs.shared_chain(kube_client, "shared", kube_namespace, hosts),
    )
    assert first.ca_pem == second.ca_pem
    again = await certs.shared_chain(kube_client, "shared", kube_namespace, hosts)
    assert again == first
    # a certificate that no longer names the Service (renamed) is replaced
    renamed = await certs.shared_chain(kube_client, "shared", kube_namespace, ("other.svc",))
    assert renamed.ca_pem != first.ca_pem


WEBHOOK_NS = "confidential-containers-system"


@pytest.mark.asyncio
async def test_deployed_configuration_and_rbac_suffice_for_the_own_certificate(
    kube_cluster: KubeCluster, kube_client: AsyncClient, tmp_path: Path
) -> None:
    """deploy/'s MutatingWebhookConfiguration (accepted by the API server, CEL matchCondition included)
    and RBAC: the webhook, as its own ServiceAccount, creates its Secret and patches the caBundle."""
    try:
        await kube_client.create(Namespace(metadata=ObjectMeta(name=WEBHOOK_NS)))
    except ApiError as exc:
        if exc.status.code != 409:
            raise
    docs = [d for d in yaml.safe_load_all((ROOT / "deploy/kustomize/base/webhook.yaml").read_text()) if d]
    applied: list[Any] = []
    try:
        for doc in docs:
            if doc["kind"] in {"Role", "RoleBinding"}:
                doc["metadata"]["namespace"] = WEBHOOK_NS
            elif doc["kind"] == "MutatingWebhookConfiguration":
                # intercept nothing while the test runs: no Service answers here
                doc["webhooks"][0]["namespaceSelector"] = {"matchLabels": {"no-such-label": "x"}}
            elif doc["kind"] not in {"ClusterRole", "ClusterRoleBinding"}:
                continue
            obj: Any = from_dict(doc)
            await kube_client.create(obj)
            applied.append(obj)
        config = KubeConfig.from_file(kubeconfig_for(kube_cluster, "webhook", tmp_path))
        client = AsyncClient(config, field_manager="peer-pods-webhook")
        env = {
            "WEBHOOK_BIND_ADDRESS": "127.0.0.1",
            "WEBHOOK_PORT": "0",
            "WEBHOOK_HEALTH_PORT": "-1",
            "WEBHOOK_CERT_DIR": str(tmp_path / "none"),
            "POD_NAMESPACE": WEBHOOK_NS,
        }
        server = WebhookServer(load(WebhookSettings, env), client)
        try:
            await server.start()
            await server.refresh_now()  # the second look finds everything in place
        finally:
            await server.close()
            await client.close()
        stored = await kube_client.get(MutatingWebhookConfiguration, "peer-pods-mutating-webhook")
        secret = await kube_client.get(Secret, "peer-pods-webhook-cert", namespace=WEBHOOK_NS)
        assert stored.webhooks and secret.data
        assert stored.webhooks[0].clientConfig.caBundle == secret.data["ca.crt"]
    finally:
        for obj in reversed(applied):
            await kube_client.delete(type(obj), obj.metadata.name, namespace=obj.metadata.namespace)
        try:
            await kube_client.delete(Secret, "peer-pods-webhook-cert", namespace=WEBHOOK_NS)
        except ApiError as exc:
            if exc.status.code != 404:
                raise
