"""ARM calls per pod lifecycle, and 50 concurrent lifecycles, against the fake Azure Resource Manager.

Every call the daemon makes goes through the fault proxy (no faults injected),
which records it; calls are counted per API method:

- start-up calls (once per daemon: the first orphan scan, the resource-SKU catalogue);
- one full lifecycle through the daemon's ttrpc socket with the test playing the
  pod VM (mutual TLS); a second one gives the steady state.  Target: one PUT plus
  its operation polls (and the SDK's final GET), one NIC read, one DELETE plus its
  polls; no list or read storms;
- 50 concurrent lifecycles (CreateVM, StartVM, Health/Check, StopVM) against one
  lifecycle measured the same way in the same run (target: a ratio close to 1).
  The same 50 creates and deletes through the provider alone (no daemon) are the
  floor: the SDK's per-call CPU, the proxy and the fake share two cores, so that
  floor, not the daemon, sets the wall time (``concurrent_vs_provider_floor``).
  One pod VM stands in for every instance (it owns the range the fake hands out),
  so TLS is off for this part.

The fake keeps each operation InProgress for two polls and asks for 200 ms
between polls (``retry-after-ms``), a fixed floor per create and delete.  ARM is
HTTPS only: the fault proxy speaks TLS on both sides; token requests go to the
fake's token endpoint directly and are not counted.
Without root (no namespaces), the fallback measures create and delete through
the provider alone, on loopback.  Nothing is asserted: the numbers go into the README.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
for extra in (ROOT, ROOT / "providers" / "azure" / "tests"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from benchmarks.cloud_lifecycles import StandBurst, call_counter, measure_on_stand, provider_floor  # noqa: E402
from cloud_api_adaptor.testing.eventually import eventually  # noqa: E402
from tests.integration.azure.cloud import boot_pod_vm  # noqa: E402
from tests.integration.azure.harness import AzureNode  # noqa: E402
from tests.integration.cloudstand.podvm import PodVm  # noqa: E402

CONCURRENT = 50
BOUND = 600.0  # seconds: every phase is cut off well before this

_METHODS = [
    ("PUT", re.compile(r"/virtualMachines/[^/]+$"), "virtualMachines.createOrUpdate"),
    ("GET", re.compile(r"/virtualMachines/[^/]+$"), "virtualMachines.get"),
    ("DELETE", re.compile(r"/virtualMachines/[^/]+$"), "virtualMachines.delete"),
    ("GET", re.compile(r"/virtualMachines$"), "virtualMachines.list"),
    ("GET", re.compile(r"/operations/[^/]+$"), "operations.get"),
    ("GET", re.compile(r"/networkInterfaces/[^/]+$"), "networkInterfaces.get"),
    ("GET", re.compile(r"/publicIPAddresses/[^/]+$"), "publicIPAddresses.get"),
    ("GET", re.compile(r"/skus$"), "resourceSkus.list"),
]


counts = call_counter(_METHODS)


def run() -> dict[str, Any]:
    if os.geteuid() == 0 and shutil.which("ip"):
        return asyncio.run(asyncio.wait_for(_in_namespaces(), BOUND))
    return asyncio.run(asyncio.wait_for(_loopback_only(), BOUND))


async def _in_namespaces() -> dict[str, Any]:
    node: AzureNode | None = None
    try:
        node = await asyncio.to_thread(AzureNode)
        cloud = node.cloud

        async def boot(vm: PodVm, sid: str) -> None:
            [launched] = await eventually(lambda: cloud.of_sandbox(sid), "the pod's VM")
            await boot_pod_vm(vm, cloud, launched)

        report = await measure_on_stand(
            node,
            StandBurst(
                mode="daemon in a network namespace, fake ARM over HTTPS, counted by the proxy",
                counts=counts,
                boot=boot,
                left=lambda: len(cloud.arm.leftovers()),
                floor=_loopback_only,
                concurrent=CONCURRENT,
            ),
        )
        return {**report, "vms_created": cloud.arm.created_total}
    finally:
        if node is not None:
            await asyncio.to_thread(node.close)


async def _loopback_only() -> dict[str, Any]:
    """No namespaces: create and delete through the provider, the fake and the fault proxy on loopback."""
    from azure_testkit import make_world  # type: ignore[import-not-found]

    world = make_world()
    world.arm.retry_after_ms = 200  # as in the namespaces
    provider = world.provider()
    try:
        return await provider_floor(
            provider, lambda: counts(world.proxy), lambda: len(world.arm.leftovers()), concurrent=CONCURRENT
        )
    finally:
        await provider.aclose()
        world.close()
