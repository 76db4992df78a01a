"""CreateVM's decisions as pure functions: no store, no CA, no event loop, no cloud.

``plan_sandbox`` turns a CreateVM request into the ``SandboxRecord`` the daemon
will persist: it validates the sandbox id and the annotations, selects the
instance type (a true best fit), names the instance, picks the image, renders
the cloud-config (apf.json, initdata) and checks it against the provider's
userdata limit.  Every refusal is ``InvalidInput`` naming the field.

The sandbox manager runs the same three steps with its I/O in between (the
duplicate-request check after ``validate_request``, the pod network inspection
before ``render_record``); ``cloud-api-adaptor plan`` runs them back to back, so
its answer is exactly what Kata would get.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cloud_api_adaptor.apf import ApfConfig
from cloud_api_adaptor.errors import ConfigError, InvalidInput
from cloud_api_adaptor.hypervisor import requests as rq
from cloud_api_adaptor.hypervisor.models import SandboxRecord
from cloud_api_adaptor.hypervisor.selection import select_instance_type
from cloud_api_adaptor.initdata import decode_initdata, encode_initdata, parse_initdata
from cloud_api_adaptor.provider import CreateRequest, InstanceSpec, InstanceTypeInfo, Provider
from cloud_api_adaptor.settings import Settings
from cloud_api_adaptor.userdata import build_userdata


@dataclass(frozen=True)
class PlanTarget:
    """Everything a plan depends on besides the request: this node's settings and the provider's facts."""

    pods_dir: str
    max_name_length: int = 63
    userdata_limit: int | None = None
    instance_types: tuple[str, ...] = ()
    default_instance_type: str = ""
    default_image: str = ""
    catalogue: tuple[InstanceTypeInfo, ...] = ()
    #: the node's default initdata (INITDATA, gzip+base64) for pods without the annotation
    initdata: str = ""
    enable_scratch_space: bool = False

    @classmethod
    def of(cls, settings: Settings, provider: Provider, catalogue: Sequence[InstanceTypeInfo]) -> PlanTarget:
        return cls(
            pods_dir=str(settings.pods_dir),
            max_name_length=provider.max_name_length,
            userdata_limit=provider.userdata_limit,
            instance_types=tuple(provider.instance_types),
            default_instance_type=provider.default_instance_type,
            default_image=provider.default_image,
            catalogue=tuple(catalogue),
            initdata=settings.initdata,
            enable_scratch_space=settings.enable_scratch_space,
        )


@dataclass(frozen=True)
class ValidRequest:
    """A CreateVM request whose id and annotations passed validation."""

    sandbox_id: str
    agent_socket_path: str
    pod: rq.PodRequest
    netns_path: str
    #: identifies the request, so a repeated CreateVM is recognised as the same one
    digest: str


@dataclass(frozen=True)
class InstanceChoice:
    """What to create: the instance type, the instance's name and the image."""

    instance_type: str
    instance_name: str
    image: str


def request_digest(sandbox_id: str, annotations: Mapping[str, str], netns_path: str) -> str:
    blob = json.dumps([sandbox_id, sorted(annotations.items()), netns_path]).encode()
    return hashlib.sha256(blob).hexdigest()


def validate_request(
    sandbox_id: str, annotations: Mapping[str, str], netns_path: str, pods_dir: str
) -> ValidRequest:
    """The sandbox id, its agent socket path and the annotations; ``InvalidInput`` names the field."""
    rq.validate_sandbox_id(sandbox_id)
    socket_path = rq.agent_socket_path(pods_dir, sandbox_id)
    pod = rq.parse_annotations(annotations)
    return ValidRequest(
        sandbox_id, socket_path, pod, netns_path, request_digest(sandbox_id, annotations, netns_path)
    )


def choose_instance(request: ValidRequest, target: PlanTarget) -> InstanceChoice:
    """Instance type (best fit, then the allowlist), instance name and image."""
    pod = request.pod
    instance_type = select_instance_type(
        pod, target.catalogue, target.instance_types, target.default_instance_type
    )
    name = rq.instance_name(pod.pod_name, request.sandbox_id, target.max_name_length)
    return InstanceChoice(instance_type, name, pod.image or target.default_image)


def render_record(
    request: ValidRequest,
    choice: InstanceChoice,
    target: PlanTarget,
    *,
    tls_fields: Mapping[str, Any],
    pod_network: Mapping[str, Any] | None = None,
    vni: int | None = None,
    now: float = 0.0,
) -> SandboxRecord:
    """The record CreateVM persists, with the rendered cloud-config checked against the provider's limit."""
    pod = request.pod
    userdata = render_userdata(target, pod, pod_network, tls_fields)
    size = len(userdata.encode())
    if target.userdata_limit is not None and size > target.userdata_limit:
        raise InvalidInput(
            "userdata",
            f"userdata is {size} bytes, above the provider's limit of {target.userdata_limit} bytes",
        )
    return SandboxRecord(
        id=request.sandbox_id,
        pod_name=pod.pod_name,
        pod_namespace=pod.pod_namespace,
        pod_uid=pod.pod_uid,
        request_digest=request.digest,
        agent_socket_path=request.agent_socket_path,
        instance_name=choice.instance_name,
        instance_type=choice.instance_type,
        image=choice.image,
        vcpus=pod.vcpus,
        memory_mib=pod.memory_mib,
        gpus=pod.gpus,
        userdata=userdata,
        netns_path=request.netns_path,
        pod_network=dict(pod_network) if pod_network is not None else None,
        vni=vni,
        created_at=now,
    )


def plan_sandbox(
    sandbox_id: str,
    annotations: Mapping[str, str],
    target: PlanTarget,
    *,
    tls_fields: Callable[[str], Mapping[str, Any]],
    netns_path: str = "",
    pod_network: Mapping[str, Any] | None = None,
    vni: int | None = None,
    now: float = 0.0,
) -> SandboxRecord:
    """Every CreateVM decision for one request, back to back.

    ``tls_fields`` gives the apf.json TLS fields for an instance name (the VM's
    server certificate names it).
    """
    request = validate_request(sandbox_id, annotations, netns_path, target.pods_dir)
    choice = choose_instance(request, target)
    return render_record(
        request,
        choice,
        target,
        tls_fields=tls_fields(choice.instance_name),
        pod_network=pod_network,
        vni=vni,
        now=now,
    )


def instance_spec(request: ValidRequest, choice: InstanceChoice) -> InstanceSpec:
    """The instance a request asks for, after instance-type selection (what ``check_spec`` sees)."""
    pod = request.pod
    return InstanceSpec(choice.instance_type, pod.vcpus, pod.memory_mib, pod.gpus, choice.image)


def record_spec(record: SandboxRecord) -> InstanceSpec:
    """The instance a planned record asks for."""
    return InstanceSpec(
        instance_type=record.instance_type,
        vcpus=record.vcpus,
        memory_mib=record.memory_mib,
        gpus=record.gpus,
        image=record.image,
    )


def create_request(record: SandboxRecord, tags: Mapping[str, str], *, deadline: float) -> CreateRequest:
    """What StartVM asks the provider for: the planned instance, under the attempt's idempotency token."""
    return CreateRequest(
        name=record.instance_name,
        sandbox_id=record.id,
        token=record.token,
        spec=record_spec(record),
        userdata=record.userdata,
        tags=dict(tags),
        deadline=deadline,
    )


# --------------------------------------------------------------------------- cloud-config


def validate_global_initdata(encoded: str) -> None:
    """INITDATA (gzip+base64 TOML) must parse; checked once at start-up."""
    if encoded:
        try:
            parse_initdata(decode_initdata(encoded, field="INITDATA"), field="INITDATA")
        except InvalidInput as exc:
            raise ConfigError("INITDATA", f"failed to parse global initdata: {exc}") from exc


def sandbox_initdata(target: PlanTarget, pod: rq.PodRequest) -> str:
    """The pod's initdata (annotation, validated) else the node default; gzip+base64."""
    if pod.initdata_toml.strip():
        parse_initdata(pod.initdata_toml.encode(), field=rq.ANN_INITDATA)
        return encode_initdata(pod.initdata_toml)
    return target.initdata


def render_userdata(
    target: PlanTarget,
    pod: rq.PodRequest,
    pod_network: Mapping[str, Any] | None,
    tls_fields: Mapping[str, Any],
) -> str:
    """The cloud-config for one pod VM: apf.json (pod, network, TLS) and initdata."""
    apf = ApfConfig.from_mapping(
        {
            "pod-network": dict(pod_network) if pod_network is not None else None,
            "pod-namespace": pod.pod_namespace,
            "pod-name": pod.pod_name,
            **tls_fields,
        }
    )
    return build_userdata(
        apf_json=apf.to_json(),
        initdata=sandbox_initdata(target, pod),
        auth_json=None,
        scratch_space=target.enable_scratch_space,
    )
