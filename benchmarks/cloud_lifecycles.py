"""Pod lifecycles through a daemon's ttrpc socket, shared by the cloud-call benchmarks.

``played_lifecycle`` is the one where the benchmark plays the pod VM: it waits
for the cloud's fake to hold the instance and boots the VM-side programs with
its address and user data (``boot``), so StartVM returns over real mutual TLS.
``lifecycle`` is the plain one for bursts, against a shared pod VM.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping

from cloud_api_adaptor import kata_client as kata
from tests.integration.cloudstand.node import CloudNode, new_sandbox_id
from tests.integration.cloudstand.podvm import PodVm
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
