"""Pod lifecycles through a daemon's ttrpc socket, shared by the cloud-call benchmarks.

``played_lifecycle`` is the one where the benchmark plays the pod VM: it waits
for the cloud's fake to hold the instance and boots the VM-side programs with
its address and user data (``boot``), so StartVM returns over real mutual TLS.
``lifecycle`` is the plain one for bursts, against a shared pod VM.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cloud_api_adaptor import kata_client as kata
from cloud_api_adaptor.testing.eventually import eventually
from cloud_api_adaptor.testing.faultproxy import FaultProxy, RecordedRequest
from tests.integration.cloudstand.node import CloudNode, new_sandbox_id, orphan_scans
from tests.integration.cloudstand.podvm import PodVm
from tests.integration.cloudstand.stand import SHARED_VM_RANGE
from tests.integration.daemon_proc import DaemonProcess

#: boots ``vm`` as the pod VM of sandbox ``sid`` once the fake holds its instance
Boot = Callable[[PodVm, str], Awaitable[None]]


def calls_since(after: Counter[str], before: Counter[str]) -> dict[str, int]:
    """The calls counted between two snapshots, by API method."""
    return {k: v for k, v in sorted((after - before).items()) if v}


async def played_lifecycle(
    node: CloudNode, daemon: DaemonProcess, boot: Boot, annotations: Mapping[str, str] | None = None
) -> float:
    """Create, start (the benchmark boots the pod VM), health check, stop; seconds."""
    sid = new_sandbox_id()
    started = time.perf_counter()
    path = await kata.create_vm(daemon.socket, sid, annotations or kata.kata_annotations("bench"))
    start = asyncio.create_task(kata.start_vm(daemon.socket, sid, timeout=120))
    vm = node.pod_vm()
    try:
        await boot(vm, sid)
        await start
    except BaseException:
        start.cancel()
        raise
    await health_check(path)
    await kata.stop_vm(daemon.socket, sid)
    elapsed = time.perf_counter() - started
    await asyncio.to_thread(vm.shutdown)
    return elapsed


async def lifecycle(daemon: DaemonProcess, annotations: Mapping[str, str]) -> float:
    """Create, start, health check, stop against a pod VM that is already up; seconds."""
    sid = new_sandbox_id()
    started = time.perf_counter()
    path = await kata.create_vm(daemon.socket, sid, annotations)
    await kata.start_vm(daemon.socket, sid, timeout=120)
    await health_check(path)
    await kata.stop_vm(daemon.socket, sid)
    return time.perf_counter() - started


async def health_check(agent_path: str) -> None:
    agent = await kata.AgentClient.connect(agent_path)
    try:
        await agent.check()
    finally:
        await agent.aclose()


@dataclass(frozen=True)
class StandBurst:
    """What a cloud's call-count benchmark tells ``measure_on_stand`` about its fake."""

    #: the report's "mode" line
    mode: str
    #: the calls the fault proxy saw so far, by API method
    counts: Callable[[FaultProxy], Counter[str]]
    #: boots the pod VM of a sandbox once the fake holds its instance
    boot: Boot
    #: what the fake still holds (instances, and for Azure their NICs, disks and IPs)
    left: Callable[[], int]
    #: the same creates and deletes through the provider alone: {"concurrent_wall_s", "left"}
    floor: Callable[[], Awaitable[dict[str, Any]]]
    concurrent: int = 50


async def measure_on_stand(node: CloudNode, burst: StandBurst) -> dict[str, Any]:
    """Start-up and per-lifecycle calls (mutual TLS, the benchmark playing the VM), then a burst.

    The burst runs ``burst.concurrent`` lifecycles against one shared pod VM (TLS
    off) and is compared with one lifecycle and with the provider-alone floor.
    """
    proxy, endpoint = node.fault_proxy()

    def start(*args: str) -> DaemonProcess:  # no orphan scans during the measurement
        return node.daemon(endpoint, args=args, ORPHAN_SCAN_INTERVAL="1h", PROXY_TIMEOUT="60s")

    daemon = await asyncio.to_thread(start)
    await eventually(lambda: orphan_scans(daemon), "the start-up orphan scan")
    startup = burst.counts(proxy)
    first = await played_lifecycle(node, daemon, burst.boot)
    after_first = burst.counts(proxy)
    second = await played_lifecycle(node, daemon, burst.boot)
    after_second = burst.counts(proxy)
    await asyncio.to_thread(daemon.stop)
    leaked = burst.left()

    shared = node.pod_vm()
    node.stand.answer_on(SHARED_VM_RANGE)
    await shared.boot_shared()
    daemon = await asyncio.to_thread(start, "-disable-tls")
    await lifecycle(daemon, kata.kata_annotations("warm-up"))
    one = await lifecycle(daemon, kata.kata_annotations("single"))
    before = burst.counts(proxy)
    pods = [kata.kata_annotations(f"pod-{i}") for i in range(burst.concurrent)]
    started = time.perf_counter()
    walls = await asyncio.gather(*(lifecycle(daemon, pod) for pod in pods))
    wall = time.perf_counter() - started
    calls = calls_since(burst.counts(proxy), before)
    await asyncio.to_thread(daemon.stop)
    leaked += burst.left()
    # The same creates and deletes through the provider alone, in this process
    # (SDK, fault proxy and fake sharing one interpreter): the floor the daemon sits on.
    floor = await burst.floor()
    return {
        "mode": burst.mode,
        "startup_calls": dict(sorted(startup.items())),
        "first_lifecycle_calls": calls_since(after_first, startup),
        "lifecycle_calls": calls_since(after_second, after_first),
        "lifecycle_calls_total": sum((after_second - after_first).values()),
        "played_lifecycle_s": [round(first, 3), round(second, 3)],
        "concurrent": burst.concurrent,
        "concurrent_tls": False,
        "single_lifecycle_s": round(one, 3),
        "concurrent_wall_s": round(wall, 3),
        "concurrent_vs_single": round(wall / one, 2),
        "concurrent_lifecycle_p50_s": round(sorted(walls)[len(walls) // 2], 3),
        "concurrent_calls": calls,
        "concurrent_calls_per_lifecycle": round(sum(calls.values()) / burst.concurrent, 2),
        "provider_floor_wall_s": floor["concurrent_wall_s"],
        "concurrent_vs_provider_floor": round(wall / floor["concurrent_wall_s"], 2),
        "left": leaked + floor["left"],
    }


#: (HTTP method, path pattern, API method name): how a cloud's calls are named in the reports
MethodTable = Sequence[tuple[str, re.Pattern[str], str]]


def call_counter(table: MethodTable) -> Callable[[FaultProxy], Counter[str]]:
    """Counts the calls a fault proxy saw by API method name (unknown calls by method and path)."""

    def name(request: RecordedRequest) -> str:
        path = request.path.split("?", 1)[0]
        for method, pattern, api in table:
            if request.method == method and pattern.search(path):
                return api
        return f"{request.method} {path}"

    def counts(proxy: FaultProxy) -> Counter[str]:
        return Counter(name(r) for r in proxy.requests())

    return counts


async def provider_floor(
    provider: Any,
    count: Callable[[], Counter[str]],
    left: Callable[[], int],
    *,
    concurrent: int,
) -> dict[str, Any]:
    """Create and delete through the provider alone (no daemon): one, then ``concurrent`` at once.

    The floor a daemon's burst is compared with (and the fallback report without root).  The
    first create+delete pays one-time calls (a token, an image lookup) and is not counted.
    """
    from cloud_api_adaptor.provider import TAG_SANDBOX, CreateRequest, InstanceSpec

    async def create_delete() -> float:
        sid = new_sandbox_id()
        request = CreateRequest(
            name=f"podvm-bench-{sid[:8]}",
            sandbox_id=sid,
            token=f"{sid}-1",
            spec=InstanceSpec(),
            userdata="#cloud-config\n",
            tags={TAG_SANDBOX: sid},
        )
        started = time.perf_counter()
        instance = await provider.create_instance(request)
        await provider.delete_instance(instance.id)
        return time.perf_counter() - started

    await create_delete()
    before = count()
    one = await create_delete()
    per_lifecycle = calls_since(count(), before)
    before = count()
    started = time.perf_counter()
    await asyncio.gather(*(create_delete() for _ in range(concurrent)))
    wall = time.perf_counter() - started
    calls = calls_since(count(), before)
    return {
        "mode": "loopback only (not root): provider create+delete, no daemon",
        "lifecycle_calls": per_lifecycle,
        "lifecycle_calls_total": sum(per_lifecycle.values()),
        "concurrent": concurrent,
        "single_create_delete_s": round(one, 3),
        "concurrent_wall_s": round(wall, 3),
        "concurrent_vs_single": round(wall / one, 2),
        "concurrent_calls_per_lifecycle": round(sum(calls.values()) / concurrent, 2),
        "left": left(),
    }
