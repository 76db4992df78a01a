"""Address allocation: /30 blocks for netns VMs, unique 127.x addresses for loopback VMs."""

from __future__ import annotations

import itertools
from ipaddress import IPv4Address, IPv4Network

import pytest

from cloud_api_adaptor.errors import PermanentProviderError
from cloud_api_adaptor.localvm.addressing import (
    LOOPBACK_POOL,
    allocate_block,
    block,
    block_count,
    block_of,
    loopback_candidates,
)

SUBNET = IPv4Network("198.18.0.0/16")


def test_a_block_is_a_slash_30_with_host_dot_1_and_vm_dot_2() -> None:
    first = block(SUBNET, 0)
    assert (first.host, first.vm, first.prefixlen) == (
        IPv4Address("198.18.0.1"),
        IPv4Address("198.18.0.2"),
        30,
    )
    third = block(SUBNET, 2)
    assert (third.host, third.vm) == (IPv4Address("198.18.0.9"), IPv4Address("198.18.0.10"))
    assert block_count(SUBNET) == 16384
    with pytest.raises(ValueError):
        block(SUBNET, 16384)


def test_block_of_maps_every_address_of_a_block_back_to_it() -> None:
    assert [block_of(SUBNET, IPv4Address(f"198.18.0.{i}")) for i in range(8)] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert block_of(SUBNET, IPv4Address("198.19.0.1")) is None


def test_allocation_takes_the_lowest_free_block() -> None:
    assert allocate_block(SUBNET, set()).index == 0
    assert allocate_block(SUBNET, {0, 1, 3}).index == 2


def test_live_vms_never_share_a_block() -> None:
    used: set[int] = set()
    for _ in range(50):
        used.add(allocate_block(SUBNET, used).index)
    assert len(used) == 50


def test_an_exhausted_subnet_is_a_permanent_error_naming_the_key() -> None:
    small = IPv4Network("198.18.0.0/29")
    with pytest.raises(PermanentProviderError, match="LOCAL_VM_SUBNET"):
        allocate_block(small, {0, 1})


def test_loopback_candidates_are_in_the_pool_skip_used_and_network_like_addresses() -> None:
    first = list(itertools.islice(loopback_candidates("/state/a", set()), 600))
    assert all(a in LOOPBACK_POOL and int(a) & 0xFF not in (0, 255) for a in first)
    assert len(set(first)) == len(first)
    taken = set(first[:3])
    assert next(loopback_candidates("/state/a", taken)) == first[3]


def test_loopback_candidates_depend_on_the_seed_so_two_daemons_spread_apart() -> None:
    a = next(loopback_candidates("/var/lib/one", set()))
    b = next(loopback_candidates("/var/lib/two", set()))
    assert a != b
    assert next(loopback_candidates("/var/lib/one", set())) == a
