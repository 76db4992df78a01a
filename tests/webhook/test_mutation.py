"""The mutation as a pure function: the table of pods, the init-container rule, unreadable pods."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from cloud_api_adaptor.webhook.mutation import (
    ANNOTATION_VCPUS,
    MutationConfig,
    mutate_pod,
    review,
    vm_annotations,
)
from cloud_api_adaptor.webhook.quantity import QuantityError, ceil_mib, parse_quantity
from tests.webhook.cases import CASES, VM, Case, container
from tests.webhook.jsonpatch import apply_patch

CONFIG = MutationConfig()


def admission(pod: dict[str, Any], *, operation: str = "CREATE") -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "0df28fbd-5f5f-11e8-bc74-36e6bb280816",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "operation": operation,
            "object": pod,
        },
    }


def answered_pod(
    pod: dict[str, Any], config: MutationConfig = CONFIG
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The AdmissionReview response and the pod after applying its patch."""
    response = review(admission(pod), config)["response"]
    assert response["allowed"] is True
    assert response["uid"] == "0df28fbd-5f5f-11e8-bc74-36e6bb280816"
    if "patch" not in response:
        return response, pod
    assert response["patchType"] == "JSONPatch"
    return response, apply_patch(pod, json.loads(base64.b64decode(response["patch"])))


def test_the_table_has_at_least_twelve_pods() -> None:
    assert len(CASES) >= 12


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_table(case: Case) -> None:
    pod = case.pod()
    response, mutated = answered_pod(pod)
    assert "warnings" not in response
    assert mutated["metadata"].get("annotations", {}) == case.expected
    if not case.mutated:
        assert mutated == pod
        return
    containers = mutated["spec"]["containers"]
    assert containers[0]["resources"] == {"requests": {VM: "1"}, "limits": {VM: "1"}}
    assert all(c["resources"] == {} for c in containers[1:])
    assert all(c["resources"] == {} for c in mutated["spec"].get("initContainers", []))
    # nothing else moved
    for before, after in zip(pod["spec"]["containers"], containers, strict=True):
        assert {k: v for k, v in before.items() if k != "resources"} == {
            k: v for k, v in after.items() if k != "resources"
        }


def test_init_containers_as_max_when_configured() -> None:
    case = Case(
        "init-max",
        [container("app", {"cpu": "1", "memory": "1Gi"})],
        {},
        init=[container("a", {"cpu": "3", "memory": "256Mi"}), container("b", {"cpu": "1", "memory": "2Gi"})],
    )
    assert vm_annotations(case.pod(), "sum") == {
        ANNOTATION_VCPUS: "5",
        "io.katacontainers.config.hypervisor.default_memory": str(1024 + 256 + 2048),
    }
    assert vm_annotations(case.pod(), "max") == {
        ANNOTATION_VCPUS: "3",
        "io.katacontainers.config.hypervisor.default_memory": "2048",
    }


def test_limit_below_request_takes_the_request() -> None:
    pod = Case("x", [container("app", {"cpu": "2"}, {"cpu": "1"})], {}).pod()
    assert vm_annotations(pod) == {ANNOTATION_VCPUS: "2"}


def test_configured_runtime_class_and_extended_resource() -> None:
    config = MutationConfig(runtime_class="kata-remote-cvm", extended_resource="example.org/vm")
    pod = Case("x", [container("app", {"cpu": "1"})], {}, runtime_class="kata-remote-cvm").pod()
    _, mutated = answered_pod(pod, config)
    assert mutated["spec"]["containers"][0]["resources"]["requests"] == {"example.org/vm": "1"}
    untouched = Case("y", [container("app", {"cpu": "1"})], {}).pod()
    assert answered_pod(untouched, config)[1] == untouched


@pytest.mark.parametrize(
    "breakage",
    [
        lambda pod: pod["spec"]["containers"][0].update(resources={"requests": {"cpu": "lots"}}),
        lambda pod: pod["spec"].update(containers="app"),
        lambda pod: pod["spec"].update(containers=[]),
        lambda pod: pod["spec"]["containers"][0].update(resources=["cpu"]),
        lambda pod: pod["metadata"].update(annotations="a=b"),
    ],
    ids=[
        "bad-quantity",
        "containers-not-a-list",
        "no-containers",
        "resources-not-an-object",
        "bad-annotations",
    ],
)
def test_unreadable_pod_is_admitted_unchanged_with_a_warning(breakage: Any) -> None:
    pod = Case("broken", [container("app", {"cpu": "1"})], {}).pod()
    breakage(pod)
    response, mutated = answered_pod(pod)
    assert mutated == pod
    assert "patch" not in response
    assert response["warnings"] and "left the pod unchanged" in response["warnings"][0]


def test_non_create_and_non_pod_requests_pass() -> None:
    pod = Case("x", [container("app", {"cpu": "1"})], {}).pod()
    assert "patch" not in review(admission(pod, operation="UPDATE"), CONFIG)["response"]
    request = admission(pod)
    request["request"]["kind"] = {"group": "apps", "version": "v1", "kind": "Deployment"}
    assert "patch" not in review(request, CONFIG)["response"]


def test_pod_without_annotations_or_metadata_gets_them() -> None:
    pod = Case("x", [container("app", {"cpu": "1"})], {}).pod()
    del pod["metadata"]
    mutated = apply_patch(pod, mutate_pod(pod, CONFIG).patch)
    assert mutated["metadata"]["annotations"] == {ANNOTATION_VCPUS: "1"}


@pytest.mark.parametrize(
    ("text", "value"),
    [("250m", 0.25), ("1.5Gi", 1.5 * 2**30), ("2e3", 2000), ("100", 100), ("1k", 1000), ("+.5", 0.5), (3, 3)],
)
def test_quantities(text: Any, value: float) -> None:
    assert float(parse_quantity(text)) == value


@pytest.mark.parametrize("text", ["", "1.2.3", "5 MiB", "1Ki2", True, None, "m"])
def test_bad_quantities(text: Any) -> None:
    with pytest.raises(QuantityError):
        parse_quantity(text)


def test_memory_rounds_bytes_then_mib_up() -> None:
    assert ceil_mib(parse_quantity("1Mi")) == 1
    assert ceil_mib(parse_quantity("1048577")) == 2
    assert ceil_mib(parse_quantity("1500m")) == 1
