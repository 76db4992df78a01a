"""Instance-type selection: an explicit type, else the best fit for the pod's GPUs, vCPUs and memory.

The catalogue is sorted by (gpus, memory, vcpus) and scanned for the first entry
meeting every constraint, so the answer is the smallest fitting type (a binary
search would need a predicate that is monotonic over that order, and it is not).
vCPUs and memory select a type only together; a GPU request selects among GPU
types.  The choice must be in the provider's allowlist.  Error texts are the
ones users of the Go adaptor know (docs/differences.md).
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
