"""Instance-type selection (caa-behaviour §6.2), with a true best fit.

The Go version binary-searches a predicate that is not monotonic over the
(gpus, memory, vcpus) order, so it can miss the smallest fitting type.  We scan
the sorted catalogue and take the first entry meeting every constraint, which is
the smallest by (gpus, memory, vcpus).  Error texts match the Go version's.
"""

from __future__ import annotations

from collections.abc import Sequence

from cloud_api_adaptor.errors import InvalidInput
from cloud_api_adaptor.hypervisor.requests import ANN_MACHINE_TYPE, PodRequest
from cloud_api_adaptor.provider import InstanceTypeInfo


def sort_catalogue(catalogue: Sequence[InstanceTypeInfo]) -> list[InstanceTypeInfo]:
    """Ascending by GPUs, then memory, then vCPUs, then name (stable and total)."""
    return sorted(catalogue, key=lambda t: (t.gpus, t.memory_mib, t.vcpus, t.name))


def select_instance_type(
    pod: PodRequest,
    catalogue: Sequence[InstanceTypeInfo],
    allowed: Sequence[str],
    default: str,
) -> str:
    """The instance type to create for ``pod``; raises ``InvalidInput`` with the Go texts."""
    ordered = sort_catalogue(catalogue)
    chosen = pod.instance_type
    if not chosen and pod.gpus > 0 and ordered:
        fit = next(
            (
                t
                for t in ordered
                if t.gpus >= pod.gpus and t.vcpus >= pod.vcpus and t.memory_mib >= pod.memory_mib
            ),
            None,
        )
        if fit is None:
            raise InvalidInput(
                ANN_MACHINE_TYPE,
                "failed to get instance type based on GPU, vCPU, and memory annotations: "
                f"no instance type found for the given GPUs ({pod.gpus}), vCPUs ({pod.vcpus}), "
                f"and memory ({pod.memory_mib})",
            )
        chosen = fit.name
    elif not chosen and pod.vcpus != 0 and pod.memory_mib != 0 and ordered:
        fit = next(
            (t for t in ordered if t.gpus == 0 and t.vcpus >= pod.vcpus and t.memory_mib >= pod.memory_mib),
            None,
        )
        if fit is None:
            raise InvalidInput(
                ANN_MACHINE_TYPE,
                "failed to get instance type based on vCPU and memory annotations: "
                f"no instance type found for the given vcpus ({pod.vcpus}) and memory ({pod.memory_mib})",
            )
        chosen = fit.name
    return verify_instance_type(chosen, allowed, default)


def verify_instance_type(chosen: str, allowed: Sequence[str], default: str) -> str:
    """The allowlist check (Go ``VerifyCloudInstanceType``)."""
    if not chosen:
        return default
    if not allowed:
        if chosen != default:
            raise InvalidInput(
                ANN_MACHINE_TYPE,
                f'failed to verify instance type: requested instance type ("{chosen}") is not default '
                f'("{default}") and supported instance types list is empty',
            )
        return chosen
    if chosen not in allowed:
        raise InvalidInput(
            ANN_MACHINE_TYPE,
            f'failed to verify instance type: requested instance type ("{chosen}") is not part of '
            "supported instance types list",
        )
    return chosen
