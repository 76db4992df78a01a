"""kata-sim's full Kata sequence against stub hypervisor handlers and our dev agent.

This pins down what kata-sim sends (so the daemon-level interop test can rely on
it) and checks the Go agent client's Health/Check against ``vm.devagent``.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from cloud_api_adaptor._pb import hypervisor_pb2 as hv
from cloud_api_adaptor.ttrpc import CallContext, Code, RpcError, Server, UnaryMethod
from cloud_api_adaptor.vm.devagent import run_devagent

from .katasim import run_kata_sim

pytestmark = pytest.mark.timeout(1200)

KATA_ANNOTATIONS = {
    "io.kubernetes.cri.sandbox-name",
    "io.kubernetes.cri.sandbox-namespace",
    "io.katacontainers.config.hypervisor.machine_type",
    "io.katacontainers.config.hypervisor.image",
    "io.katacontainers.config.hypervisor.default_vcpus",
    "io.katacontainers.config.hypervisor.default_memory",
    "io.katacontainers.config.hypervisor.cc_init_data",
    "io.katacontainers.config.hypervisor.default_gpus",
    "io.katacontainers.config.hypervisor.default_gpu_model",
}


class StubHypervisor:
    """Records what the Go client sent; CreateVM points it at a dev agent socket."""

    def __init__(self, agent_dir: Path) -> None:
        self.agent_dir = agent_dir
        self.created: list[hv.CreateVMRequest] = []
        self.start_deadlines: list[float | None] = []
        self.stopped: list[str] = []
        self.metadata_keys: set[str] = set()

    async def create(self, req: hv.CreateVMRequest, ctx: CallContext) -> hv.CreateVMResponse:
        self.created.append(req)
        if ctx.deadline is not None:
            raise RpcError(Code.INVALID_ARGUMENT, "Kata sets no CreateVM deadline")
        return hv.CreateVMResponse(agentSocketPath=os.fspath(self.agent_dir / req.id / "agent.ttrpc"))

    async def start(self, req: hv.StartVMRequest, ctx: CallContext) -> hv.StartVMResponse:
        self.start_deadlines.append(ctx.time_remaining())
        return hv.StartVMResponse()

    async def stop(self, req: hv.StopVMRequest, ctx: CallContext) -> hv.StopVMResponse:
        self.stopped.append(req.id)
        return hv.StopVMResponse()

    def methods(self) -> dict[str, UnaryMethod[Any]]:
        return {
            "CreateVM": UnaryMethod(hv.CreateVMRequest, self.create),
            "StartVM": UnaryMethod(hv.StartVMRequest, self.start),
            "StopVM": UnaryMethod(hv.StopVMRequest, self.stop),
        }


@pytest.mark.asyncio
async def test_kata_sequence_with_agent_health_check(interop_bin: Path, tmp_path: Path) -> None:
    stub = StubHypervisor(tmp_path / "pods")
    socket_path = tmp_path / "hypervisor.sock"
    stops = [asyncio.Event(), asyncio.Event()]
    agents = [
        asyncio.create_task(run_devagent(stub.agent_dir / f"sb-{i}" / "agent.ttrpc", stops[i]))
        for i in range(2)
    ]
    try:
        async with Server() as server:
            server.add_service("hypervisor.Hypervisor", stub.methods())
            await server.start_unix(socket_path)
            run = await run_kata_sim(
                interop_bin,
                "-socket",
                os.fspath(socket_path),
                "-id",
                "sb",
                "-count",
                "2",
                "-parallel",
                "-pod-name",
                "web",
                "-pod-namespace",
                "shop",
                "-netns",
                "/run/netns/test",
            )
    finally:
        for stop in stops:
            stop.set()
        await asyncio.gather(*agents)
    assert run.returncode == 0, (run.lines, run.stderr)
    assert run.steps("summary") == [{"step": "summary", "ok": True, "sandboxes": 2, "failed": 0}]
    assert sorted(line["health_status"] for line in run.steps("AgentCheck")) == ["SERVING", "SERVING"]
    assert sorted(req.id for req in stub.created) == ["sb-0", "sb-1"]
    for req in stub.created:
        assert set(req.annotations) == KATA_ANNOTATIONS
        assert req.annotations["io.kubernetes.cri.sandbox-name"] == "web"
        assert req.annotations["io.kubernetes.cri.sandbox-namespace"] == "shop"
        assert req.networkNamespacePath == "/run/netns/test"
    # StartVM carries Kata's 600 s deadline (some of it already spent in transit).
    assert all(d is not None and 500 < d <= 600 for d in stub.start_deadlines)
    assert sorted(stub.stopped) == ["sb-0", "sb-1"]


@pytest.mark.asyncio
async def test_failed_start_still_stops_the_sandbox(interop_bin: Path, tmp_path: Path) -> None:
    stub = StubHypervisor(tmp_path / "pods")

    async def failing_start(req: hv.StartVMRequest, ctx: CallContext) -> hv.StartVMResponse:
        raise RpcError(Code.UNAVAILABLE, "no capacity")

    socket_path = tmp_path / "hypervisor.sock"
    async with Server() as server:
        methods = stub.methods()
        methods["StartVM"] = UnaryMethod(hv.StartVMRequest, failing_start)
        server.add_service("hypervisor.Hypervisor", methods)
        await server.start_unix(socket_path)
        run = await run_kata_sim(interop_bin, "-socket", os.fspath(socket_path), "-id", "sb-x")
    assert run.returncode == 1
    [start] = run.steps("StartVM")
    assert (start["ok"], start["code"], start["message"]) == (False, "Unavailable", "no capacity")
    assert stub.stopped == ["sb-x"]
    assert run.steps("AgentCheck") == []
