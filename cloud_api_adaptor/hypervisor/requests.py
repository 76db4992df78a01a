"""Validation of what Kata sends in CreateVM: the sandbox id and the annotations.

Pure functions; every error is ``InvalidInput`` naming the field or annotation.
A number that does not parse is refused, never read as 0: a pod would otherwise
get a VM of the default size without anyone noticing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from cloud_api_adaptor.errors import InvalidInput

ANN_SANDBOX_NAME = "io.kubernetes.cri.sandbox-name"
ANN_SANDBOX_NAMESPACE = "io.kubernetes.cri.sandbox-namespace"
ANN_SANDBOX_UID = "io.kubernetes.cri.sandbox-uid"
_HV = "io.katacontainers.config.hypervisor."
ANN_MACHINE_TYPE = _HV + "machine_type"
ANN_IMAGE = _HV + "image"
ANN_VCPUS = _HV + "default_vcpus"
ANN_MEMORY = _HV + "default_memory"
ANN_GPUS = _HV + "default_gpus"
ANN_GPU_MODEL = _HV + "default_gpu_model"
ANN_INITDATA = _HV + "cc_init_data"

#: The nine annotations Kata's runtime sends with every CreateVM (empty when unset).
KATA_ANNOTATIONS = (
    ANN_SANDBOX_NAME,
    ANN_SANDBOX_NAMESPACE,
    ANN_MACHINE_TYPE,
    ANN_IMAGE,
    ANN_VCPUS,
    ANN_MEMORY,
    ANN_INITDATA,
    ANN_GPUS,
    ANN_GPU_MODEL,
)

MAX_VCPUS = 1024
MAX_MEMORY_MIB = 16 * 1024 * 1024  # 16 TiB
MAX_GPUS = 64
MAX_UNIX_PATH = 107
AGENT_SOCKET_NAME = "agent.ttrpc"

_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_NAME_CHARS = re.compile(r"[^a-z0-9-]")


@dataclass(frozen=True)
class PodRequest:
    """The parts of a CreateVM request the lifecycle uses, validated."""

    pod_name: str
    pod_namespace: str
    pod_uid: str = ""
    instance_type: str = ""
    image: str = ""
    vcpus: int = 0
    memory_mib: int = 0
    gpus: int = 0
    initdata_toml: str = ""


def validate_sandbox_id(sandbox_id: str, field: str = "id") -> str:
    """1-128 of ``[A-Za-z0-9._-]``, not ``.`` or ``..``."""
    if not sandbox_id:
        raise InvalidInput(field, "empty sandbox id")
    if not _ID.match(sandbox_id) or sandbox_id in {".", ".."}:
        raise InvalidInput(
            field, f"invalid sandbox id {sandbox_id[:140]!r}: use 1-128 characters of [A-Za-z0-9._-]"
        )
    return sandbox_id


def agent_socket_path(pods_dir: str, sandbox_id: str) -> str:
    """``<PODS_DIR>/<id>/agent.ttrpc``, refused when it cannot be a unix socket path."""
    path = f"{pods_dir.rstrip('/')}/{sandbox_id}/{AGENT_SOCKET_NAME}"
    if len(path.encode()) > MAX_UNIX_PATH:
        raise InvalidInput(
            "id", f"agent socket path {path!r} is longer than {MAX_UNIX_PATH} bytes (sandbox id too long)"
        )
    return path


def _pod_name(raw: str) -> str:
    # CRI-O form k8s_<pod>_<ns>_<uid>_0: the second field is the pod name.
    parts = raw.split("_")
    if len(parts) > 1 and parts[0] == "k8s":
        return parts[1]
    return raw


def _count(annotations: Mapping[str, str], key: str, maximum: int) -> int:
    raw = annotations.get(key, "").strip()
    if raw == "":
        return 0
    if not raw.isdigit():
        raise InvalidInput(key, f"annotation {key}: {raw!r} is not a non-negative integer")
    value = int(raw)
    if value > maximum:
        raise InvalidInput(key, f"annotation {key}: {value} is above the maximum {maximum}")
    return value


def parse_annotations(annotations: Mapping[str, str]) -> PodRequest:
    """Validate the CreateVM annotations: pod name and namespace required, sizes non-negative integers."""
    name = _pod_name(annotations.get(ANN_SANDBOX_NAME, "").strip())
    if not name:
        raise InvalidInput(ANN_SANDBOX_NAME, f"pod name {ANN_SANDBOX_NAME} is missing in annotations")
    namespace = annotations.get(ANN_SANDBOX_NAMESPACE, "").strip()
    if not namespace:
        raise InvalidInput(
            ANN_SANDBOX_NAMESPACE, f"namespace name {ANN_SANDBOX_NAMESPACE} is missing in annotations"
        )
    return PodRequest(
        pod_name=name,
        pod_namespace=namespace,
        pod_uid=annotations.get(ANN_SANDBOX_UID, "").strip(),
        instance_type=annotations.get(ANN_MACHINE_TYPE, "").strip(),
        image=annotations.get(ANN_IMAGE, "").strip(),
        vcpus=_count(annotations, ANN_VCPUS, MAX_VCPUS),
        memory_mib=_count(annotations, ANN_MEMORY, MAX_MEMORY_MIB),
        gpus=_count(annotations, ANN_GPUS, MAX_GPUS),
        initdata_toml=annotations.get(ANN_INITDATA, ""),
    )


def instance_name(pod_name: str, sandbox_id: str, max_length: int = 63) -> str:
    """``podvm-<pod>-<first 8 of id>``, lower-cased, ``[a-z0-9-]`` only, at most ``max_length``."""
    pod = _NAME_CHARS.sub("-", pod_name.lower())
    sid = _NAME_CHARS.sub("-", sandbox_id.lower())[:8]
    room = max(0, max_length - len("podvm-") - len(sid) - 1)
    return f"podvm-{pod[:room]}-{sid}"
