"""NOTRACK rules for the tunnel's UDP flow, with iptables (Go's layout) and nftables, in a test namespace."""

from __future__ import annotations

import ipaddress
import secrets
import subprocess
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from cloud_api_adaptor.podnetwork import add_named_netns, delete_named_netns, run_in_netns
from cloud_api_adaptor.podnetwork.notrack import IptablesNotrack, NftablesNotrack, NotrackBackend

pytestmark = pytest.mark.root

PEER = ipaddress.IPv4Address("192.0.2.2")
OTHER = ipaddress.IPv4Address("192.0.2.3")


@pytest_asyncio.fixture
async def netns() -> AsyncIterator[str]:
    name = f"caa{secrets.token_hex(3)}-nt"
    try:
        yield await add_named_netns(name)
    finally:
        await delete_named_netns(name)


@pytest.fixture(params=["iptables", "nftables"])
def backend(request: pytest.FixtureRequest) -> NotrackBackend:
    return IptablesNotrack() if request.param == "iptables" else NftablesNotrack()


def run(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


@pytest.mark.asyncio
async def test_rules_are_added_once_per_direction_and_removed_entirely(
    netns: str, backend: NotrackBackend
) -> None:
    for _ in range(3):
        await run_in_netns(netns, lambda: backend.ensure(555000, PEER, 4789))
    rules = await run_in_netns(netns, backend.rules)
    ours = [r for r in rules if "vni:555000" in r]
    assert len(ours) == 2
    assert any("192.0.2.2" in r and "4789" in r for r in ours)

    await run_in_netns(netns, lambda: backend.remove(555000))
    await run_in_netns(netns, lambda: backend.remove(555000))
    assert await run_in_netns(netns, backend.rules) == []


@pytest.mark.asyncio
async def test_pods_keep_their_own_rules_and_a_changed_peer_replaces_the_old_one(
    netns: str, backend: NotrackBackend
) -> None:
    await run_in_netns(netns, lambda: backend.ensure(555000, PEER, 4789))
    await run_in_netns(netns, lambda: backend.ensure(555001, PEER, 4789))
    await run_in_netns(netns, lambda: backend.ensure(555001, OTHER, 4790))
    rules = await run_in_netns(netns, backend.rules)
    second = [r for r in rules if "vni:555001" in r]
    assert len(second) == 2 and all("192.0.2.3" in r and "4790" in r for r in second)

    await run_in_netns(netns, lambda: backend.remove(555000))
    rules = await run_in_netns(netns, backend.rules)
    assert not any("vni:555000" in r for r in rules) and len([r for r in rules if "vni:555001" in r]) == 2
    await run_in_netns(netns, lambda: backend.remove(555001))
    assert await run_in_netns(netns, backend.rules) == []


@pytest.mark.asyncio
async def test_iptables_uses_the_go_chains_and_comment(netns: str) -> None:
    backend = IptablesNotrack()
    await run_in_netns(netns, lambda: backend.ensure(555000, PEER, 4789))
    saved = await run_in_netns(netns, lambda: run(["iptables-save", "-t", "raw"]))
    assert "-A OUTPUT -j peerpod-OUTPUT" in saved and "-A PREROUTING -j peerpod-PREROUTING" in saved
    assert (
        '-A peerpod-OUTPUT -d 192.0.2.2/32 -p udp -m comment --comment "peerpod [vni:555000]" '
        "-m udp --dport 4789 -j NOTRACK"
    ) in saved
    assert '-A peerpod-PREROUTING -s 192.0.2.2/32 -p udp -m comment --comment "peerpod [vni:555000]"' in saved


@pytest.mark.asyncio
async def test_iptables_cleans_up_rules_a_go_adaptor_left(netns: str) -> None:
    def go_layout() -> None:  # as the Go adaptor adds them, in its argument order
        for chain, base, flag in (
            ("peerpod-OUTPUT", "OUTPUT", "-d"),
            ("peerpod-PREROUTING", "PREROUTING", "-s"),
        ):
            run(["iptables", "-t", "raw", "-N", chain])
            run(["iptables", "-t", "raw", "-A", base, "-j", chain])
            comment = ["-m", "comment", "--comment", "peerpod [vni:555004]"]
            match = [flag, "192.0.2.2", "-p", "udp", "-m", "udp", "--dport", "4789", "-j", "NOTRACK"]
            run(["iptables", "-t", "raw", "-A", chain, *comment, *match])

    await run_in_netns(netns, go_layout)
    backend = IptablesNotrack()
    await run_in_netns(netns, lambda: backend.ensure(555004, PEER, 4789))
    assert len([r for r in await run_in_netns(netns, backend.rules) if "vni:555004" in r]) == 2
    await run_in_netns(netns, lambda: backend.remove(555004))
    assert await run_in_netns(netns, backend.rules) == []
    assert "peerpod" not in await run_in_netns(netns, lambda: run(["iptables-save", "-t", "raw"]))


@pytest.mark.asyncio
async def test_rules_stay_inside_the_namespace(netns: str, backend: NotrackBackend) -> None:
    name = f"caa{secrets.token_hex(3)}-nt2"
    other = await add_named_netns(name)
    try:
        await run_in_netns(netns, lambda: backend.ensure(555000, PEER, 4789))
        assert await run_in_netns(other, backend.rules) == []
        await run_in_netns(netns, lambda: backend.remove(555000))
    finally:
        await delete_named_netns(name)
