"""Compute Engine API calls per pod lifecycle, and 50 concurrent lifecycles, against the fake GCP.

Every call the daemon makes goes through the fault proxy (no faults injected),
which records it; calls are counted per API method:

- start-up calls (once per daemon: the first orphan scan, the machine-type catalogue);
- one full lifecycle through the daemon's ttrpc socket with the test playing the
  pod VM (mutual TLS); the first lifecycle also pays ``images.get`` (once per
  image), so a second one gives the steady state.  Target: insert + operation
  waits + one get + delete + its waits;
- 50 concurrent lifecycles (CreateVM, StartVM, Health/Check, StopVM) against one
  lifecycle measured the same way in the same run (target: a ratio close to 1).
  The same 50 creates and deletes through the provider alone (no daemon) are the
  floor: the SDK's per-call CPU, the proxy and the fake share two cores, so that
  floor, not the daemon, sets the wall time (``concurrent_vs_provider_floor``).
  One pod VM stands in for every instance (it owns the range the fake hands out),
  so TLS is off for this part.

The fake keeps each zone operation RUNNING for two observations and answers a
``wait`` on a running operation after 50 ms, a fixed floor per create and delete.
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
for extra in (ROOT, ROOT / "providers" / "gcp" / "tests"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from benchmarks.cloud_lifecycles import StandBurst, call_counter, measure_on_stand, provider_floor  # noqa: E402
from cloud_api_adaptor.testing.eventually import eventually  # noqa: E402
from tests.integration.cloudstand.podvm import PodVm  # noqa: E402
from tests.integration.gcp.cloud import boot_pod_vm  # noqa: E402
from tests.integration.gcp.harness import GcpNode  # noqa: E402

CONCURRENT = 50
BOUND = 600.0  # seconds: every phase is cut off well before this

_METHODS = [
    ("POST", re.compile(r"/zones/[^/]+/instances$"), "instances.insert"),
    ("GET", re.compile(r"/zones/[^/]+/instances$"), "instances.list"),
    ("GET", re.compile(r"/zones/[^/]+/instances/[^/]+$"), "instances.get"),
    ("DELETE", re.compile(r"/zones/[^/]+/instances/[^/]+$"), "instances.delete"),
    ("POST", re.compile(r"/operations/[^/]+/wait$"), "zoneOperations.wait"),
    ("GET", re.compile(r"/operations/[^/]+$"), "zoneOperations.get"),
    ("GET", re.compile(r"/machineTypes/[^/]+$"), "machineTypes.get"),
    ("GET", re.compile(r"/global/images/"), "images.get"),
]


counts = call_counter(_METHODS)


def run() -> dict[str, Any]:
    if os.geteuid() == 0 and shutil.which("ip"):
        return asyncio.run(asyncio.wait_for(_in_namespaces(), BOUND))
    return asyncio.run(asyncio.wait_for(_loopback_only(), BOUND))


async def _in_namespaces() -> dict[str, Any]:
    node: GcpNode | None = None
    try:
        node = await asyncio.to_thread(GcpNode)
        cloud = node.cloud

        async def boot(vm: PodVm, sid: str) -> None:
            [launched] = await eventually(lambda: cloud.of_sandbox(sid), "the pod's instance")
            await boot_pod_vm(vm, cloud, launched)

        report = await measure_on_stand(
            node,
            StandBurst(
                mode="daemon in a network namespace, fake Compute Engine over HTTP, counted by the proxy",
                counts=counts,
                boot=boot,
                left=lambda: len(cloud.live()),
                floor=_loopback_only,
                concurrent=CONCURRENT,
            ),
        )
        return {**report, "instances_created": cloud.compute.created_total}
    finally:
        if node is not None:
            await asyncio.to_thread(node.close)


async def _loopback_only() -> dict[str, Any]:
    """No namespaces: create and delete through the provider, the fake and the fault proxy on loopback."""
    from gcp_testkit import make_world  # type: ignore[import-not-found]

    world, proxy = make_world()
    provider = world.provider()
    try:
        return await provider_floor(
            provider, lambda: counts(proxy), lambda: len(world.compute.live()), concurrent=CONCURRENT
        )
    finally:
        await provider.aclose()
        proxy.stop()
        world.fake.close()
