"""Fifty pod lifecycles in a row through the daemon's lifecycle code, each with a real tunnel.

A local VM takes about two seconds to boot, so this loop (the lighter one;
``test_tunnel_e2e`` runs the real daemon and local VMs) runs the daemon's own
``SandboxManager`` in-process with the pod network adapter the daemon builds
(``build_pod_network`` for a provider that owns the tunnel endpoint) and a
stand-in provider whose "VM" is the ``vm``/``vmpod`` namespace pair of
``podnetwork.testbed``: ``create_instance`` reads apf.json out of the userdata
it is given and runs the forwarder's network hook, ``delete_instance`` undoes
it.  Each iteration: CreateVM (VNI allocation, inspect), StartVM (worker side),
a TCP round trip from the peer to the pod IP inside the "VM", StopVM.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

import pytest
import pytest_asyncio

from cloud_api_adaptor.apf import DEFAULT_APF_CONFIG_PATH, ApfConfig
from cloud_api_adaptor.hypervisor.models import SandboxState
from cloud_api_adaptor.hypervisor.sandboxes import SandboxManager
from cloud_api_adaptor.hypervisor.store import SandboxStore
from cloud_api_adaptor.kata_client import kata_annotations
from cloud_api_adaptor.network import build_pod_network
from cloud_api_adaptor.podnetwork import (
    PodNetworkConfig,
    forwarder_network_setup,
    run_in_netns,
    teardown_pod_node,
)
from cloud_api_adaptor.podnetwork.netlink import in_netns
from cloud_api_adaptor.podnetwork.notrack import IptablesNotrack, NftablesNotrack
from cloud_api_adaptor.podnetwork.testbed import (
    NODE_UNDERLAY,
    POD_IP,
    VM_UNDERLAY,
    Testbed,
    echo_roundtrip,
    start_echo_server,
)
from cloud_api_adaptor.podnetwork.workernode import POD_VXLAN_NAME
from cloud_api_adaptor.provider import CheckResult, CreateRequest, Instance, Provider
from cloud_api_adaptor.settings import Settings
from cloud_api_adaptor.testing.fakes import NullAgentChannel
from cloud_api_adaptor.vm.provision import parse_cloud_config

pytestmark = pytest.mark.root

CYCLES = 50
VXLAN_MIN_ID = 555000


class NamespaceVmProvider(Provider):
    """One "VM" at a time: the testbed's vm namespace, its VM side built from the userdata's apf.json."""

    def __init__(self, bed: Testbed) -> None:
        self.bed = bed
        self.instances: dict[str, PodNetworkConfig] = {}

    def tunnel_endpoint(self) -> ipaddress.IPv4Address:
        """The node's address on the VM's network (TunnelEndpointProvider), as the local provider's."""
        return NODE_UNDERLAY.ip

    async def create_instance(self, request: CreateRequest) -> Instance:
        files = {f.path: f.data for f in parse_cloud_config(request.userdata.encode())}
        apf = ApfConfig.from_json(files[DEFAULT_APF_CONFIG_PATH])
        assert apf.pod_network is not None
        await forwarder_network_setup(apf, self.bed.vmpod, vm_netns=self.bed.vm)
        instance_id = f"ns-{request.token}"
        self.instances[instance_id] = PodNetworkConfig.from_json_obj(apf.pod_network)
        return Instance(id=instance_id, name=request.name, ips=(VM_UNDERLAY.ip,))

    async def delete_instance(self, instance_id: str) -> None:
        config = self.instances.pop(instance_id, None)
        if config is not None:
            await teardown_pod_node(config, self.bed.vmpod, vm_netns=self.bed.vm)

    async def list_instances(self, owner_tags: Mapping[str, str]) -> Sequence[Instance]:
        return [Instance(id=i, name=i, ips=(VM_UNDERLAY.ip,)) for i in self.instances]

    async def verify(self) -> Sequence[CheckResult]:
        return ()


@pytest_asyncio.fixture
async def bed() -> AsyncIterator[Testbed]:
    testbed = await Testbed.create()
    try:
        yield testbed
    finally:
        await testbed.aclose()


async def leftovers(bed: Testbed) -> list[str]:
    found = await bed.leftovers()
    for backend in (IptablesNotrack(), NftablesNotrack()):
        for path in (bed.node, bed.vm):
            found += [f"{path}: {rule}" for rule in await run_in_netns(path, backend.rules)]
    return found


@pytest.mark.asyncio
async def test_fifty_lifecycles_in_a_row_each_carry_traffic_and_leave_nothing(
    bed: Testbed, tmp_path: Path
) -> None:
    settings = dataclasses.replace(Settings(), state_dir=tmp_path / "state", pods_dir=tmp_path / "pods")
    store = SandboxStore(settings.state_dir)
    store.prepare()
    provider = NamespaceVmProvider(bed)
    network = build_pod_network(settings, provider, host_netns=bed.node)
    manager = SandboxManager(settings, provider, store, NullAgentChannel(), network)
    server, port = await start_echo_server(bed.vmpod, "0.0.0.0")
    try:
        async with server:
            for i in range(CYCLES):
                sid = f"cycle{i:02d}"
                await manager.create_vm(sid, kata_annotations(f"pod-{i}"), bed.pod)
                await manager.start_vm(sid)
                record = next(r for r in manager.records() if r.id == sid)
                assert record.vni == VXLAN_MIN_ID  # the previous pod's VNI, reused after its StopVM
                assert record.pod_network is not None
                assert record.pod_network["worker-node-ip"] == f"{NODE_UNDERLAY.ip}/32"
                payload = f"cycle {i}".encode() * 100
                assert await echo_roundtrip(bed.peer, str(POD_IP.ip), port, payload) == payload
                await manager.stop_vm(sid)
                assert await in_netns(bed.pod, lambda nl: nl.link(POD_VXLAN_NAME)) is None
    finally:
        await manager.aclose()
        store.close()
    assert {r.state for r in manager.records()} == {SandboxState.STOPPED}
    assert provider.instances == {}
    assert await leftovers(bed) == []
