"""The webhook's table of pods, shared by the pure test and the test through the real API server.

``api`` is what the API server stores when it differs from the pure answer: the
server defaults a container's missing requests to its limits before admission,
so a "limits only" pod reaches the webhook with requests equal to its limits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cloud_api_adaptor.webhook.mutation import ANNOTATION_GPUS, ANNOTATION_MEMORY, ANNOTATION_VCPUS

VM = "kata.peerpods.io/vm"


def container(
    name: str, requests: dict[str, str] | None = None, limits: dict[str, str] | None = None
) -> dict[str, Any]:
    resources: dict[str, Any] = {}
    if requests:
        resources["requests"] = requests
    if limits:
        resources["limits"] = limits
    result: dict[str, Any] = {"name": name, "image": "registry.example/app:1"}
    if resources:
        result["resources"] = resources
    return result


@dataclass(frozen=True)
class Case:
    name: str
    containers: list[dict[str, Any]]
    expected: dict[str, str]
    init: list[dict[str, Any]] = field(default_factory=list)
    runtime_class: str | None = "kata-remote"
    annotations: dict[str, str] = field(default_factory=dict)
    #: the stored annotations through the API server, when they differ from ``expected``
    api: dict[str, str] | None = None

    @property
    def mutated(self) -> bool:
        return self.runtime_class == "kata-remote"

    def pod(self, namespace: str = "default") -> dict[str, Any]:
        metadata: dict[str, Any] = {"name": self.name, "namespace": namespace}
        if self.annotations:
            metadata["annotations"] = dict(self.annotations)
        spec: dict[str, Any] = {"containers": self.containers}
        if self.init:
            spec["initContainers"] = self.init
        if self.runtime_class:
            spec["runtimeClassName"] = self.runtime_class
        return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def sized(vcpus: str | None = None, memory: str | None = None, gpus: str | None = None) -> dict[str, str]:
    result = {}
    if vcpus is not None:
        result[ANNOTATION_VCPUS] = vcpus
    if memory is not None:
        result[ANNOTATION_MEMORY] = memory
    if gpus is not None:
        result[ANNOTATION_GPUS] = gpus
    return result


CASES = [
    Case(
        "single-requests-and-limits",
        [container("app", {"cpu": "1", "memory": "1Gi"}, {"cpu": "2", "memory": "2Gi"})],
        sized("2", "2048"),
    ),
    Case("requests-only", [container("app", {"cpu": "500m", "memory": "100Mi"})], sized("1", "100")),
    Case(
        "limits-only",
        [container("app", limits={"cpu": "2", "memory": "1Gi"})],
        sized(),
        api=sized("2", "1024"),
    ),
    Case(
        "multiple-containers",
        [
            container("a", {"cpu": "250m", "memory": "256Mi"}, {"cpu": "1", "memory": "512Mi"}),
            container("b", {"cpu": "250m", "memory": "256Mi"}, {"cpu": "1", "memory": "512Mi"}),
            container("c"),
        ],
        sized("2", "1024"),
    ),
    Case(
        "init-containers-summed",
        [container("app", {"cpu": "1", "memory": "1Gi"})],
        sized("2", "1536"),
        init=[container("setup", {"cpu": "1", "memory": "512Mi"})],
    ),
    Case("millicores-round-up", [container("app", {"cpu": "1200m", "memory": "64Mi"})], sized("2", "64")),
    Case(
        "millicores-summed-then-rounded",
        [container("a", {"cpu": "300m"}), container("b", {"cpu": "300m"}), container("c", {"cpu": "300m"})],
        sized("1"),
    ),
    Case("decimal-memory-to-mib", [container("app", {"memory": "1000M"})], sized(memory="954")),
    Case(
        "gpus",
        [container("train", {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "2"}, {"nvidia.com/gpu": "2"})],
        sized("4", "16384", "2"),
    ),
    Case("no-resources", [container("a"), container("b")], sized()),
    Case(
        "mixed-cpu-request-memory-limit",
        [container("app", {"cpu": "1"}, {"memory": "512Mi"})],
        sized("1"),
        api=sized("1", "512"),
    ),
    Case(
        "existing-annotations-kept-size-overwritten",
        [container("app", {"cpu": "3"})],
        {"team": "a", ANNOTATION_VCPUS: "3"},
        annotations={"team": "a", ANNOTATION_VCPUS: "8"},
    ),
    Case(
        "other-runtime-class-untouched",
        [container("app", {"cpu": "1", "memory": "1Gi"}, {"cpu": "2", "memory": "2Gi"})],
        {},
        runtime_class="kata-qemu",
    ),
    Case("no-runtime-class-untouched", [container("app", {"cpu": "1"})], {}, runtime_class=None),
]
