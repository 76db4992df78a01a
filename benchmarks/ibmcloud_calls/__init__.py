"""IBM Cloud API calls per pod lifecycle, and 50 concurrent lifecycles, for the VPC and PowerVS providers.

For each provider the daemon runs in the integration tests' node namespace
(``tests/integration/ibmcloud``) and reaches the IAM, VPC or PowerVS, Global
Tagging and Search fakes through the fault proxy (no faults injected), which
counts every call by method and path (ids folded to ``{id}``):

- start-up calls (the profile catalogue, the first orphan scan, the IAM token);
- one full lifecycle through the daemon's ttrpc socket, the test playing the
  pod VM over mutual TLS, then a second one for the steady state;
- 50 concurrent lifecycles (CreateVM, StartVM, Health/Check, StopVM) against
  one lifecycle measured the same way in the same run; one pod VM answers for
  every instance (TLS off: one forwarder cannot present every VM's certificate).

The fakes keep a new instance without an address for two reads (VPC) or in
BUILD for two reads (PowerVS), so each lifecycle includes the provider's real
poll intervals (2 s for VPC, 1 s then 2 s for PowerVS): the concurrent ratio
shows whether those waits overlap.  Needs root (namespaces); without it the
result says so.  Nothing is asserted: the numbers go into the README.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the harness lives with the integration tests
    sys.path.insert(0, str(ROOT))

from caa_provider_ibmcloud.tags import owner_tag  # noqa: E402
from caa_provider_ibmcloud.testing.world import VpcWorld  # noqa: E402
from caa_provider_ibmcloud_powervs.testing.world import PowerWorld  # noqa: E402

from benchmarks.cloud_lifecycles import calls_since, lifecycle, played_lifecycle  # noqa: E402
from cloud_api_adaptor import kata_client as kata  # noqa: E402
from cloud_api_adaptor.provider import TAG_SANDBOX  # noqa: E402
from cloud_api_adaptor.testing.eventually import eventually  # noqa: E402
from cloud_api_adaptor.testing.faultproxy import FaultProxy  # noqa: E402
from tests.integration.cloudstand.podvm import PodVm  # noqa: E402
from tests.integration.cloudstand.stand import SHARED_VM_RANGE  # noqa: E402
from tests.integration.ibmcloud.harness import FAKE_SUBNET, IbmNode, orphan_scans  # noqa: E402

CONCURRENT = 50
BOUND = 900.0
_ID = re.compile(r"/(?:0717_|r006-)?[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def run() -> dict[str, Any]:
    if os.geteuid() != 0 or not shutil.which("ip"):
        return {"skipped": "needs root and iproute2 (network namespaces)"}
    return {
        "ibmcloud": asyncio.run(
            asyncio.wait_for(_measure(VpcWorld(subnet_cidr=FAKE_SUBNET), "ibmcloud"), BOUND)
        ),
        "ibmcloud-powervs": asyncio.run(
            asyncio.wait_for(_measure(PowerWorld(subnet=FAKE_SUBNET), "ibmcloud-powervs"), BOUND)
        ),
    }


def _calls(proxy: FaultProxy) -> Counter[str]:
    return Counter(f"{r.method} {_ID.sub('/{id}', r.path.split('?')[0])}" for r in proxy.requests())


def _instances(world: Any, sid: str) -> list[str]:
    tag = owner_tag(TAG_SANDBOX, sid)
    return list(world.vpc.tagged(tag) if isinstance(world, VpcWorld) else world.power.tagged(tag))


def _vm_view(world: Any, instance_id: str) -> tuple[str, str]:
    if isinstance(world, VpcWorld):
        return world.vpc.addresses(instance_id)[0], world.vpc.user_data(instance_id)
    return world.power.address(instance_id), world.power.user_data(instance_id)


def _live(world: Any) -> int:
    return len(world.vpc.live() if isinstance(world, VpcWorld) else world.power.live_ids())


async def _measure(world: Any, provider: str) -> dict[str, Any]:
    node: IbmNode | None = None
    try:
        node = await asyncio.to_thread(IbmNode, world, provider)
        proxy, endpoint = node.fault_proxy()
        machine = "bx3dc-2x10" if provider == "ibmcloud" else ""
        daemon = await asyncio.to_thread(
            lambda: node.daemon(endpoint, ORPHAN_SCAN_INTERVAL="1h", PROXY_TIMEOUT="60s")
        )
        await eventually(lambda: orphan_scans(daemon), "the start-up orphan scan")
        startup = _calls(proxy)
        annotations = kata.kata_annotations("bench", machine_type=machine)

        async def boot(vm: PodVm, sid: str) -> None:
            [instance_id] = await eventually(lambda: _instances(world, sid), "the pod's instance")
            await vm.boot(*_vm_view(world, instance_id))

        first = await played_lifecycle(node, daemon, boot, annotations)
        after_first = _calls(proxy)
        second = await played_lifecycle(node, daemon, boot, annotations)
        after_second = _calls(proxy)
        await asyncio.to_thread(daemon.stop)

        shared = node.pod_vm()
        node.stand.answer_on(SHARED_VM_RANGE)
        await shared.boot_shared()
        daemon = await asyncio.to_thread(
            lambda: node.daemon(
                endpoint, args=["-disable-tls"], ORPHAN_SCAN_INTERVAL="1h", PROXY_TIMEOUT="60s"
            )
        )
        await lifecycle(daemon, kata.kata_annotations("warm-up", machine_type=machine))
        one = await lifecycle(daemon, kata.kata_annotations("single", machine_type=machine))
        before = _calls(proxy)
        started = time.perf_counter()
        pods = [kata.kata_annotations(f"pod-{i}", machine_type=machine) for i in range(CONCURRENT)]
        walls = await asyncio.gather(*(lifecycle(daemon, pod) for pod in pods))
        wall = time.perf_counter() - started
        concurrent_calls = calls_since(_calls(proxy), before)
        await asyncio.to_thread(daemon.stop)
        per_lifecycle = calls_since(after_second, after_first)
        return {
            "mode": "daemon in a network namespace, fakes over HTTP, calls counted by the fault proxy",
            "startup_calls": dict(sorted(startup.items())),
            "first_lifecycle_calls": calls_since(after_first, startup),
            "lifecycle_calls": per_lifecycle,
            "lifecycle_calls_total": sum(per_lifecycle.values()),
            "played_lifecycle_s": [round(first, 3), round(second, 3)],
            "concurrent": CONCURRENT,
            "single_lifecycle_s": round(one, 3),
            "concurrent_wall_s": round(wall, 3),
            "concurrent_vs_single": round(wall / one, 2),
            "concurrent_lifecycle_p50_s": round(sorted(walls)[len(walls) // 2], 3),
            "concurrent_calls_per_lifecycle": round(sum(concurrent_calls.values()) / CONCURRENT, 2),
            "instances_left": _live(world),
        }
    finally:
        if node is not None:
            await asyncio.to_thread(node.close)
        world.close()
