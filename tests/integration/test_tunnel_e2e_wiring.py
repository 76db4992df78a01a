"""How the tunnel is wired (no root needed): where the worker's end is, VNIs, the forwarder's hook.

- a cloud provider's tunnel follows the host interface (HOST_INTERFACE or the default route's);
- the local provider in netns mode owns the endpoint (its subnet's last usable address, never
  handed to a VM), in loopback mode there is no tunnel and a namespace path is refused;
- VNIs are the lowest free among live records and CreateVMs in flight, reused after StopVM, and
  survive a restart because records do;
- the forwarder CLI builds the VM side in ``-pod-namespace``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from cloud_api_adaptor.apf import ApfConfig
from cloud_api_adaptor.errors import FailedPrecondition, PermanentProviderError
from cloud_api_adaptor.hypervisor.recovery import recover
from cloud_api_adaptor.hypervisor.sandboxes import SandboxManager
from cloud_api_adaptor.hypervisor.store import SandboxStore
from cloud_api_adaptor.kata_client import kata_annotations
from cloud_api_adaptor.localvm import addressing
from cloud_api_adaptor.localvm.config import GuestPrograms, LocalConfig
from cloud_api_adaptor.localvm.provider import LocalProvider
from cloud_api_adaptor.network import ProviderEndpointWorkerNode, UnavailablePodNetwork, build_pod_network
from cloud_api_adaptor.podnetwork import HostEndpoint, WorkerNode, WorkerNodeNetwork
from cloud_api_adaptor.provider import ProviderContext, TunnelEndpointProvider
from cloud_api_adaptor.settings import NetworkSettings, Settings
from cloud_api_adaptor.testing.fake_provider import FakeConfig, FakeProvider
from cloud_api_adaptor.testing.fakes import NullAgentChannel
from cloud_api_adaptor.vm import forwarder_cli

SUBNET = ipaddress.IPv4Network("198.18.0.0/16")


def local_provider(tmp: Path, mode: str, subnet: ipaddress.IPv4Network = SUBNET) -> LocalProvider:
    config = LocalConfig(
        mode="netns" if mode == "netns" else "loopback",
        programs=GuestPrograms.installed(sys.executable),
        subnet=subnet,
    )
    context = ProviderContext(node_name="n", cluster_id="c", state_dir=tmp, work_dir=tmp / "w")
    return LocalProvider(config, context)


def settings_with(**network: Any) -> Settings:
    return dataclasses.replace(Settings(), network=NetworkSettings(**network))


# ---- where the worker's end of the tunnel is -----------------------------------------------------


def test_a_cloud_provider_tunnels_from_the_host_interface() -> None:
    network = build_pod_network(settings_with(host_interface="ens5"), FakeProvider(FakeConfig()))
    assert isinstance(network, WorkerNodeNetwork)
    assert type(network.node) is WorkerNode
    assert network.node.settings.host_interface == "ens5"
    assert network.node.settings.dedicated is None  # the Go rule decides


@pytest.mark.asyncio
async def test_the_local_provider_in_netns_mode_owns_the_endpoint_and_host_interface_is_ignored(
    tmp_path: Path,
) -> None:
    provider = local_provider(tmp_path, "netns")
    assert isinstance(provider, TunnelEndpointProvider)
    assert provider.tunnel_endpoint() == ipaddress.IPv4Address("198.18.255.254")
    network = build_pod_network(
        settings_with(host_interface="eth0", vxlan_port=4790, vxlan_min_id=7000), provider
    )
    assert isinstance(network, WorkerNodeNetwork)
    assert isinstance(network.node, ProviderEndpointWorkerNode)
    assert (network.node.settings.host_interface, network.node.settings.dedicated) == ("", False)
    assert (network.node.settings.vxlan_port, network.node.settings.vxlan_min_id) == (4790, 7000)
    assert await network.node.host_endpoint() == HostEndpoint(
        "lo", ipaddress.IPv4Interface("198.18.255.254/32"), dedicated=False
    )


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("mode", "subnet", "reason"),
    [
        ("loopback", SUBNET, "loopback mode"),
        ("netns", ipaddress.IPv4Network("198.18.7.4/30"), "cannot carry"),
    ],
)
async def test_a_local_provider_without_an_endpoint_refuses_a_namespace(
    tmp_path: Path, mode: str, subnet: ipaddress.IPv4Network, reason: str
) -> None:
    provider = local_provider(tmp_path, mode, subnet)
    assert provider.tunnel_endpoint() is None
    network = build_pod_network(Settings(), provider)
    assert isinstance(network, UnavailablePodNetwork)
    with pytest.raises(FailedPrecondition, match=rf"failed to inspect netns /run/netns/x: .*{reason}"):
        await network.inspect("/run/netns/x", 555000)
    await network.setup("/run/netns/x", ["198.18.0.2"], {})  # no tunnel to set up or tear down
    await network.teardown("/run/netns/x", {})


def test_the_endpoint_is_the_subnets_last_usable_address_and_its_block_is_never_a_vms() -> None:
    subnet = ipaddress.IPv4Network("198.18.3.0/24")
    assert addressing.tunnel_endpoint(subnet) == ipaddress.IPv4Address("198.18.3.254")
    assert addressing.reserved_blocks(subnet) == {63}
    used = set(addressing.reserved_blocks(subnet))
    for _ in range(63):
        used.add(addressing.allocate_block(subnet, used).index)
    assert used == set(range(64))
    with pytest.raises(PermanentProviderError):
        addressing.allocate_block(subnet, used)
    one_block = ipaddress.IPv4Network("198.18.7.4/30")
    assert addressing.tunnel_endpoint(one_block) is None
    assert addressing.reserved_blocks(one_block) == set()
    assert addressing.allocate_block(one_block, addressing.reserved_blocks(one_block)).index == 0


# ---- VNIs ---------------------------------------------------------------------------------------


class SlowInspect:
    """Holds every inspect until released, so concurrent CreateVMs overlap."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.seen: list[int] = []

    async def inspect(self, netns_path: str, vni: int) -> dict[str, Any]:
        self.seen.append(vni)
        await self.release.wait()
        return {"vxlan-id": vni}

    async def setup(self, netns_path: str, vm_ips: Sequence[str], pod_network: Mapping[str, Any]) -> None:
        return None

    async def teardown(self, netns_path: str, pod_network: Mapping[str, Any]) -> None:
        return None


def manager(tmp: Path, network: SlowInspect, min_id: int = 555000) -> tuple[SandboxManager, SandboxStore]:
    settings = dataclasses.replace(
        settings_with(vxlan_min_id=min_id), state_dir=tmp / "state", pods_dir=tmp / "pods"
    )
    store = SandboxStore(settings.state_dir)
    store.prepare()
    return SandboxManager(settings, FakeProvider(FakeConfig()), store, NullAgentChannel(), network), store


def vnis(m: SandboxManager) -> dict[str, int | None]:
    return {r.id: r.vni for r in m.records() if r.is_live()}


@pytest.mark.asyncio
async def test_concurrent_create_vms_get_different_vnis_and_a_stopped_pods_vni_is_reused(
    tmp_path: Path,
) -> None:
    network = SlowInspect()
    m, store = manager(tmp_path, network, min_id=7000)
    try:
        creates = [
            asyncio.ensure_future(m.create_vm(f"sb{i}", kata_annotations(f"p{i}"), f"/run/netns/p{i}"))
            for i in range(3)
        ]
        while len(network.seen) < 3:  # every CreateVM is inside inspect at once
            await asyncio.sleep(0)
        network.release.set()
        await asyncio.gather(*creates)
        assert vnis(m) == {"sb0": 7000, "sb1": 7001, "sb2": 7002}
        await m.stop_vm("sb1")
        await m.create_vm("sb3", kata_annotations("p3"), "/run/netns/p3")
        assert vnis(m)["sb3"] == 7001
        await m.create_vm("sb4", kata_annotations("p4"), "")  # no namespace: no tunnel, no VNI
        assert vnis(m)["sb4"] is None
    finally:
        await m.aclose()
        store.close()


@pytest.mark.asyncio
async def test_vnis_survive_a_restart_because_records_do(tmp_path: Path) -> None:
    network = SlowInspect()
    network.release.set()
    # namespace paths that exist: recovery stops a sandbox whose pod namespace is gone (abandoned)
    netns = tmp_path / "netns"
    netns.mkdir()
    for pod in ("p0", "p1", "p2"):
        (netns / pod).touch()
    first, store = manager(tmp_path, network)
    await first.create_vm("sb0", kata_annotations("p0"), str(netns / "p0"))
    await first.create_vm("sb1", kata_annotations("p1"), str(netns / "p1"))
    await first.aclose()
    store.close()

    second, store = manager(tmp_path, network)  # a new daemon on the same state directory
    try:
        await recover(second, store.load_all())
        assert vnis(second) == {"sb0": 555000, "sb1": 555001}
        await second.create_vm("sb2", kata_annotations("p2"), str(netns / "p2"))
        assert vnis(second)["sb2"] == 555002
    finally:
        await second.aclose()
        store.close()


# ---- the forwarder's hook -----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_the_forwarder_builds_the_vm_side_in_its_pod_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[ApfConfig, str]] = []

    async def record(apf: ApfConfig, pod_namespace: str) -> None:
        calls.append((apf, pod_namespace))

    monkeypatch.setattr("cloud_api_adaptor.podnetwork.forwarder_network_setup", record)
    args = forwarder_cli.build_parser().parse_args(["-pod-namespace", "/run/netns/elsewhere"])
    hook = forwarder_cli.build_network_setup(forwarder_cli.settings_from_args(args, {}))
    assert hook is not None
    apf = ApfConfig(pod_name="p", pod_network={"vxlan-id": 555000})
    await hook(apf)
    assert calls == [(apf, "/run/netns/elsewhere")]
