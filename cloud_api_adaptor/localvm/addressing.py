"""Address allocation for local VMs, sans-I/O: sets of used addresses in, a free one out.

netns mode numbers each VM's veth pair from one /30 block of ``LOCAL_VM_SUBNET``
(host side ``.1``, VM side ``.2`` of the block), except the last block, whose
last usable address is the node's tunnel endpoint; loopback mode gives each VM its
own 127.x.y.z so every forwarder can listen on the same port.  The caller passes
what is in use (the VM records, plus what the kernel already holds), so two live
VMs never share an address; the chosen block is persisted in the VM's record.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Collection, Iterator
from dataclasses import dataclass

from cloud_api_adaptor.errors import PermanentProviderError
from cloud_api_adaptor.localvm.config import BLOCK_PREFIX

#: loopback mode hands out addresses from here (Linux routes all of 127/8 to lo)
LOOPBACK_POOL = ipaddress.IPv4Network("127.64.0.0/10")
_BLOCK_SIZE = 1 << (32 - BLOCK_PREFIX)


@dataclass(frozen=True)
class VethBlock:
    """The addresses of one VM's veth pair."""

    index: int
    host: ipaddress.IPv4Address
    vm: ipaddress.IPv4Address
    prefixlen: int = BLOCK_PREFIX


def block_count(subnet: ipaddress.IPv4Network) -> int:
    return subnet.num_addresses // _BLOCK_SIZE


def block(subnet: ipaddress.IPv4Network, index: int) -> VethBlock:
    """Block ``index`` of ``subnet``."""
    if not 0 <= index < block_count(subnet):
        raise ValueError(f"block {index} is outside {subnet}")
    base = subnet.network_address + index * _BLOCK_SIZE
    return VethBlock(index=index, host=base + 1, vm=base + 2)


def block_of(subnet: ipaddress.IPv4Network, address: ipaddress.IPv4Address) -> int | None:
    """Index of the block holding ``address``, or None outside ``subnet``."""
    if address not in subnet:
        return None
    return (int(address) - int(subnet.network_address)) // _BLOCK_SIZE


def tunnel_endpoint(subnet: ipaddress.IPv4Network) -> ipaddress.IPv4Address | None:
    """The node's end of every pod network tunnel: the subnet's last usable address.

    It belongs to no VM's veth pair (its block is never allocated) and is
    assigned to the node's ``lo``, so every VM reaches it through its default
    route and no pod tunnel depends on one VM's link.  A single-block subnet
    keeps its one block for a VM and has no endpoint (no tunnels).
    """
    if block_count(subnet) < 2:
        return None
    return subnet.broadcast_address - 1


def reserved_blocks(subnet: ipaddress.IPv4Network) -> set[int]:
    """Blocks never handed to a VM (the one holding the tunnel endpoint)."""
    endpoint = tunnel_endpoint(subnet)
    index = block_of(subnet, endpoint) if endpoint is not None else None
    return {index} if index is not None else set()


def allocate_block(subnet: ipaddress.IPv4Network, used: Collection[int]) -> VethBlock:
    """The lowest block not in ``used``; exhaustion is permanent until VMs are deleted."""
    taken = set(used)
    for index in range(block_count(subnet)):
        if index not in taken:
            return block(subnet, index)
    raise PermanentProviderError(
        f"LOCAL_VM_SUBNET {subnet} has no free /{BLOCK_PREFIX} block ({len(taken)} in use); "
        "delete VMs or widen it"
    )


def loopback_candidates(
    seed: str, used: Collection[ipaddress.IPv4Address], pool: ipaddress.IPv4Network = LOOPBACK_POOL
) -> Iterator[ipaddress.IPv4Address]:
    """Free loopback addresses, starting at a point derived from ``seed``.

    Seeding with the work directory spreads two daemons on one machine apart, so
    they rarely even probe the same address; the caller still checks that the
    forwarder port is free on the address it picks.  Addresses ending in .0 or
    .255 are skipped (they work on lo, but read like network/broadcast).
    """
    taken = set(used)
    size = pool.num_addresses
    start = int.from_bytes(hashlib.sha256(seed.encode()).digest()[:4], "big") % size
    for offset in range(size):
        address = pool.network_address + (start + offset) % size
        if int(address) & 0xFF in (0, 0xFF) or address in taken:
            continue
        yield address
