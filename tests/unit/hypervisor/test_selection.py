import pytest

from cloud_api_adaptor.errors import InvalidInput
from cloud_api_adaptor.hypervisor.requests import PodRequest
from cloud_api_adaptor.hypervisor.selection import select_instance_type
from cloud_api_adaptor.provider import InstanceTypeInfo as T

CATALOGUE = [
    T("big", 8, 32768),
    T("small", 2, 4096),
    T("wide", 16, 8192),
    T("medium", 4, 8192),
    T("gpu1", 8, 65536, 1),
    T("gpu2", 16, 131072, 2),
]
NAMES = [t.name for t in CATALOGUE]


def pod(**kw: int | str) -> PodRequest:
    return PodRequest("p", "ns", **kw)  # type: ignore[arg-type]


def test_explicit_machine_type_wins() -> None:
    assert (
        select_instance_type(pod(instance_type="big", vcpus=1, memory_mib=1), CATALOGUE, NAMES, "small")
        == "big"
    )


def test_best_fit_is_the_smallest_meeting_every_constraint() -> None:
    assert select_instance_type(pod(vcpus=3, memory_mib=6000), CATALOGUE, NAMES, "small") == "medium"
    # Binary search over a non-monotonic predicate can pick "wide"; we must pick the smallest fit.
    assert select_instance_type(pod(vcpus=9, memory_mib=1024), CATALOGUE, NAMES, "small") == "wide"
    assert select_instance_type(pod(vcpus=1, memory_mib=1), CATALOGUE, NAMES, "small") == "small"


def test_one_of_vcpus_or_memory_alone_uses_the_default_like_go() -> None:
    assert select_instance_type(pod(vcpus=8), CATALOGUE, NAMES, "small") == "small"


def test_gpu_requests_pick_gpu_types() -> None:
    assert select_instance_type(pod(gpus=1, vcpus=1, memory_mib=1), CATALOGUE, NAMES, "small") == "gpu1"
    assert select_instance_type(pod(gpus=2), CATALOGUE, NAMES, "small") == "gpu2"


def test_no_fit_uses_the_go_error_texts() -> None:
    with pytest.raises(InvalidInput) as err:
        select_instance_type(pod(vcpus=64, memory_mib=1), CATALOGUE, NAMES, "small")
    assert str(err.value) == (
        "failed to get instance type based on vCPU and memory annotations: "
        "no instance type found for the given vcpus (64) and memory (1)"
    )
    with pytest.raises(InvalidInput, match=r"no instance type found for the given GPUs \(4\), vCPUs \(0\)"):
        select_instance_type(pod(gpus=4), CATALOGUE, NAMES, "small")


def test_allowlist_errors_use_the_go_texts() -> None:
    with pytest.raises(InvalidInput) as err:
        select_instance_type(pod(instance_type="huge"), CATALOGUE, NAMES, "small")
    assert str(err.value) == (
        'failed to verify instance type: requested instance type ("huge") is not part of '
        "supported instance types list"
    )
    with pytest.raises(
        InvalidInput, match=r'is not default \("small"\) and supported instance types list is empty'
    ):
        select_instance_type(pod(instance_type="huge"), [], [], "small")
    assert select_instance_type(pod(), [], [], "small") == "small"
