"""VNI allocation: lowest free from VXLAN_MIN_ID, unique among live sandboxes, reused after release."""

from __future__ import annotations

import pytest

from cloud_api_adaptor.errors import FailedPrecondition, InvalidInput
from cloud_api_adaptor.podnetwork.vni import MAX_VNI, allocate_vni


def test_the_first_pod_gets_the_minimum() -> None:
    assert allocate_vni(set()) == 555000
    assert allocate_vni([], minimum=7) == 7


def test_the_lowest_free_vni_fills_gaps() -> None:
    assert allocate_vni({555000, 555001, 555003}) == 555002
    assert allocate_vni({555001, 555002}) == 555000


def test_vnis_below_the_minimum_are_ignored() -> None:
    assert allocate_vni({100, 101, 555000}, minimum=555000) == 555001


def test_allocations_stay_unique_and_a_released_vni_is_reused() -> None:
    live: set[int] = set()
    for _ in range(20):
        live.add(allocate_vni(live, minimum=1000))
    assert live == set(range(1000, 1020))
    live.discard(1005)
    assert allocate_vni(live, minimum=1000) == 1005


def test_a_full_space_is_a_failed_precondition() -> None:
    with pytest.raises(FailedPrecondition):
        allocate_vni({MAX_VNI - 1, MAX_VNI}, minimum=MAX_VNI - 1)
    assert allocate_vni({MAX_VNI - 1}, minimum=MAX_VNI - 1) == MAX_VNI


@pytest.mark.parametrize("minimum", [-1, 1 << 24])
def test_a_minimum_outside_24_bits_names_the_setting(minimum: int) -> None:
    with pytest.raises(InvalidInput) as err:
        allocate_vni(set(), minimum=minimum)
    assert err.value.field == "VXLAN_MIN_ID"
