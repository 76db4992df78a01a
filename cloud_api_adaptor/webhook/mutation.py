"""The pod mutation, as a pure function: an AdmissionReview in, a JSON patch out.

For a pod of the peer-pods RuntimeClass the Go webhook's rules apply
(caa-behaviour.md §10.3): the containers' and init containers' requests and
limits are summed per resource; the vCPU and memory annotations take the limit
when there is a request and the limit is at least the request, else the
request, and nothing when there is no request; vCPUs round up to an integer,
memory up to whole MiB; the GPU annotation is the GPU request.  Then every
``resources`` is cleared and container 0 requests and limits one
``kata.peerpods.io/vm``, so the scheduler counts VMs, not the node's CPUs.

``init_containers="max"`` is an opt-in deviation: Kubernetes itself sizes a
pod by max(sum of containers, largest init container), since init containers
run one at a time; the Go webhook sums them, which oversizes the VM.

A pod that cannot be read is admitted unchanged with a warning, never
rejected: a webhook bug must not stop pods from starting.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

from cloud_api_adaptor.webhook.quantity import (
    QuantityError,
    ceil_mib,
    ceil_value,
    format_quantity,
    parse_quantity,
)

ANNOTATION_VCPUS = "io.katacontainers.config.hypervisor.default_vcpus"
ANNOTATION_MEMORY = "io.katacontainers.config.hypervisor.default_memory"
ANNOTATION_GPUS = "io.katacontainers.config.hypervisor.default_gpus"
GPU_RESOURCE = "nvidia.com/gpu"
DEFAULT_RUNTIME_CLASS = "kata-remote"
DEFAULT_EXTENDED_RESOURCE = "kata.peerpods.io/vm"
InitContainerRule = Literal["sum", "max"]

Patch = list[dict[str, Any]]


@dataclass(frozen=True)
class MutationConfig:
    runtime_class: str = DEFAULT_RUNTIME_CLASS
    extended_resource: str = DEFAULT_EXTENDED_RESOURCE
    init_containers: InitContainerRule = "sum"


@dataclass(frozen=True)
class Mutation:
    """What the webhook answers for one pod: the patch (empty: unchanged) and warnings for the user."""

    patch: Patch
    warnings: tuple[str, ...] = ()
    annotations: Mapping[str, str] | None = None


class UnreadablePod(ValueError):
    """The pod is not shaped as the API defines it; it is admitted unchanged."""


def _pointer(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def _containers(spec: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    value = spec.get(key) or []
    if not isinstance(value, list) or not all(isinstance(c, Mapping) for c in value):
        raise UnreadablePod(f"spec.{key} is not a list of containers")
    return value


def _amounts(containers: Sequence[Mapping[str, Any]], kind: str, resource: str, where: str) -> list[Fraction]:
    result = []
    for index, container in enumerate(containers):
        resources = container.get("resources") or {}
        if not isinstance(resources, Mapping):
            raise UnreadablePod(f"spec.{where}[{index}].resources is not an object")
        values = resources.get(kind) or {}
        if not isinstance(values, Mapping):
            raise UnreadablePod(f"spec.{where}[{index}].resources.{kind} is not an object")
        if resource in values:
            try:
                result.append(parse_quantity(values[resource]))
            except QuantityError as exc:
                raise UnreadablePod(f"spec.{where}[{index}].resources.{kind}[{resource}]: {exc}") from None
    return result


def _total(
    containers: Sequence[Mapping[str, Any]],
    init: Sequence[Mapping[str, Any]],
    kind: str,
    resource: str,
    rule: InitContainerRule,
) -> Fraction:
    main = sum(_amounts(containers, kind, resource, "containers"), Fraction(0))
    inits = _amounts(init, kind, resource, "initContainers")
    if rule == "max":
        return max([main, *inits])
    return main + sum(inits, Fraction(0))


def _preferred(request: Fraction, limit: Fraction) -> Fraction | None:
    """The limit when there is a request and the limit covers it; else the request; None without one."""
    if request != 0 and limit >= request:
        return limit
    if request > 0:
        return request
    return None


def vm_annotations(pod: Mapping[str, Any], rule: InitContainerRule = "sum") -> dict[str, str]:
    """The VM-size annotations the pod's resources ask for (raises ``UnreadablePod``)."""
    spec = pod.get("spec")
    if not isinstance(spec, Mapping):
        raise UnreadablePod("the pod has no spec")
    containers = _containers(spec, "containers")
    init = _containers(spec, "initContainers")

    def total(kind: str, resource: str) -> Fraction:
        return _total(containers, init, kind, resource, rule)

    annotations: dict[str, str] = {}
    cpu = _preferred(total("requests", "cpu"), total("limits", "cpu"))
    if cpu is not None:
        annotations[ANNOTATION_VCPUS] = str(ceil_value(cpu))
    memory = _preferred(total("requests", "memory"), total("limits", "memory"))
    if memory is not None:
        annotations[ANNOTATION_MEMORY] = str(ceil_mib(memory))
    gpus = total("requests", GPU_RESOURCE)
    if gpus > 0:
        annotations[ANNOTATION_GPUS] = format_quantity(gpus)
    return annotations


def mutate_pod(pod: Mapping[str, Any], config: MutationConfig) -> Mutation:
    """The JSON patch (RFC 6902, against ``pod`` as sent) that makes ``pod`` a peer pod."""
    spec = pod.get("spec")
    if not isinstance(spec, Mapping) or spec.get("runtimeClassName") != config.runtime_class:
        return Mutation([])
    try:
        annotations = vm_annotations(pod, config.init_containers)
        containers = _containers(spec, "containers")
        init = _containers(spec, "initContainers")
        if not containers:
            raise UnreadablePod("the pod has no containers")
        metadata = pod.get("metadata") or {}
        if not isinstance(metadata, Mapping):
            raise UnreadablePod("metadata is not an object")
        existing = metadata.get("annotations")
        if existing is not None and not isinstance(existing, Mapping):
            raise UnreadablePod("metadata.annotations is not an object")
    except UnreadablePod as exc:
        return Mutation([], (f"peer-pods webhook left the pod unchanged: {exc}",))
    patch: Patch = []
    if not isinstance(metadata.get("annotations"), Mapping):
        if "metadata" not in pod:
            patch.append({"op": "add", "path": "/metadata", "value": {}})
        if annotations:
            patch.append({"op": "add", "path": "/metadata/annotations", "value": dict(annotations)})
    else:
        for key, value in annotations.items():
            patch.append({"op": "add", "path": f"/metadata/annotations/{_pointer(key)}", "value": value})
    vm = {config.extended_resource: "1"}
    for index in range(len(containers)):
        wanted: dict[str, Any] = {"requests": dict(vm), "limits": dict(vm)} if index == 0 else {}
        patch.append({"op": "add", "path": f"/spec/containers/{index}/resources", "value": wanted})
    for index in range(len(init)):
        patch.append({"op": "add", "path": f"/spec/initContainers/{index}/resources", "value": {}})
    return Mutation(patch, annotations=annotations)


def review(admission_review: Mapping[str, Any], config: MutationConfig) -> dict[str, Any]:
    """The AdmissionReview answer for ``admission_review`` (``admission.k8s.io/v1``).

    Always ``allowed``: the webhook only mutates.  Anything it cannot read is
    admitted unchanged, with a warning the API server passes on to the client.
    """
    request = admission_review.get("request")
    if not isinstance(request, Mapping):
        raise UnreadablePod("the AdmissionReview has no request")
    response: dict[str, Any] = {"uid": request.get("uid", ""), "allowed": True}
    pod = request.get("object")
    mutation = Mutation([])
    if request.get("operation", "CREATE") == "CREATE" and _is_pod(request):
        if isinstance(pod, Mapping):
            mutation = mutate_pod(pod, config)
        else:
            mutation = Mutation([], ("peer-pods webhook left the pod unchanged: no object in the request",))
    if mutation.patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(mutation.patch).encode()).decode()
    if mutation.warnings:
        response["warnings"] = list(mutation.warnings)
    return {
        "apiVersion": admission_review.get("apiVersion", "admission.k8s.io/v1"),
        "kind": "AdmissionReview",
        "response": response,
    }


def _is_pod(request: Mapping[str, Any]) -> bool:
    kind = request.get("kind")
    if not isinstance(kind, Mapping):
        return True  # the configuration only routes pods here
    return bool(kind.get("kind", "Pod") == "Pod" and kind.get("group", "") == "")
