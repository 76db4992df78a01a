"""``cloud-api-adaptor demo``: three pod sandboxes end to end on the local provider.

It starts the daemon in a temporary directory, plays Kata's side for several
pods at once (CreateVM with the nine annotations, StartVM, Health/Check and
GetGuestDetails through the agent socket, StopVM), prints a timing table, and
checks that nothing is left behind.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import tempfile
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cloud_api_adaptor import kata_client as kata
from cloud_api_adaptor.daemon import start_daemon
from cloud_api_adaptor.settings import KubernetesSettings, Settings

STEPS = ("CreateVM", "StartVM", "Health/Check", "GetGuestDetails", "StopVM")


async def _one_pod(socket: Path, index: int) -> dict[str, float]:
    sandbox_id = uuid.uuid4().hex + uuid.uuid4().hex  # 64 hex chars, like Kata's ids
    timings: dict[str, float] = {}

    async def step(name: str, coro):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        result = await coro
        timings[name] = (time.perf_counter() - started) * 1000
        return result

    annotations = kata.kata_annotations(f"demo-pod-{index}", "default", vcpus=1, memory_mib=1024)
    agent_socket = await step("CreateVM", kata.create_vm(socket, sandbox_id, annotations))
    try:
        await step("StartVM", kata.start_vm(socket, sandbox_id, timeout=120))
        agent = await kata.AgentClient.connect(agent_socket)
        try:
            status = await step("Health/Check", agent.check())
            if status != 1:
                raise RuntimeError(f"agent answered status {status}, not SERVING")
            details = await step("GetGuestDetails", agent.guest_details())
            if not details.agent_details.version:
                raise RuntimeError("GetGuestDetails carried no agent version")
        finally:
            await agent.aclose()
    finally:
        await step("StopVM", kata.stop_vm(socket, sandbox_id))
    return timings


def _table(results: list[dict[str, float]]) -> str:
    head = "pod  " + "".join(f"{s:>17}" for s in STEPS)
    rows = [head]
    for i, timings in enumerate(results):
        rows.append(f"{i:<5}" + "".join(f"{timings.get(s, float('nan')):>14.1f} ms" for s in STEPS))
    return "\n".join(rows)


async def run_demo(provider_config: Any, env: Mapping[str, str], pods: int = 3) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="caa-", dir="/tmp"))
    settings = dataclasses.replace(
        Settings(),
        provider="local",
        socket=tmp / "hypervisor.sock",
        pods_dir=tmp / "pods",
        state_dir=tmp / "state",
        probe_port=0,
        proxy_timeout=120.0,
        orphan_scan_interval=3600.0,
        kubernetes=KubernetesSettings(api="off"),  # the demo never touches a cluster
    )
    print(f"demo: daemon on {settings.socket} with the local provider ({pods} pods at once)")
    daemon = await start_daemon(settings, provider_config)
    try:
        started = time.perf_counter()
        results = await asyncio.gather(*(_one_pod(settings.socket, i) for i in range(pods)))
        wall = (time.perf_counter() - started) * 1000
        print(_table(list(results)))
        print(f"all {pods} lifecycles in {wall:.0f} ms wall")
        leftovers = await daemon.provider.list_instances(daemon.manager.owner_tags())
        live = [r.id for r in daemon.manager.records() if r.state.value != "stopped"]
        pod_dirs = list(settings.pods_dir.iterdir()) if settings.pods_dir.exists() else []
        if leftovers or live or pod_dirs:
            print(f"demo: FAILED: left behind instances={leftovers} sandboxes={live} pod dirs={pod_dirs}")
            return 1
        print("demo: nothing left behind (no VM, no sandbox, no pod directory)")
        return 0
    finally:
        await daemon.aclose()
        shutil.rmtree(tmp, ignore_errors=True)
