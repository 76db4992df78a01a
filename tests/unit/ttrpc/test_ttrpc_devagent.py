"""The development kata-agent stand-in, driven by our ttrpc Client."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import empty_pb2

from cloud_api_adaptor._pb import agent_pb2, health_pb2
from cloud_api_adaptor.testing.eventually import eventually
from cloud_api_adaptor.ttrpc import Client, Code, RpcError
from cloud_api_adaptor.vm.devagent import AGENT_VERSION, DEFAULT_SOCKET, run_devagent, socket_from_env


@pytest.mark.asyncio
async def test_devagent_answers_the_runtime_connect_sequence(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "kata" / "agent.sock"
    stop = asyncio.Event()
    serving = asyncio.create_task(run_devagent(path, stop, tmp_path / "root"))
    try:
        await eventually(path.exists, "the agent's socket", interval=0.005)
        async with await Client.connect_unix(path) as client:
            health = await client.call(
                "grpc.Health", "Check", health_pb2.CheckRequest(), health_pb2.HealthCheckResponse, timeout=30
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            version = await client.call(
                "grpc.Health", "Version", health_pb2.CheckRequest(), health_pb2.VersionCheckResponse
            )
            assert version.agent_version == AGENT_VERSION
            assert AGENT_VERSION.startswith("caa-devagent ")
            details = await client.call(
                "grpc.AgentService",
                "GetGuestDetails",
                agent_pb2.GuestDetailsRequest(mem_block_size=True),
                agent_pb2.GuestDetailsResponse,
            )
            assert details.mem_block_size_bytes > 0
            assert details.agent_details.version == AGENT_VERSION
            with caplog.at_level("INFO", logger="cloud_api_adaptor.vm.devagent"):
                await client.call(
                    "grpc.AgentService",
                    "CreateSandbox",
                    agent_pb2.CreateSandboxRequest(sandbox_id="sb-1", hostname="pod"),
                    empty_pb2.Empty,
                )
            assert "sandbox_id=sb-1" in caplog.text
            await client.call(
                "grpc.AgentService", "DestroySandbox", agent_pb2.DestroySandboxRequest(), empty_pb2.Empty
            )
            with pytest.raises(RpcError) as info:
                await client.call(
                    "grpc.AgentService",
                    "ExecProcess",
                    agent_pb2.CreateContainerRequest(),
                    empty_pb2.Empty,
                )
            assert (info.value.code, info.value.message) == (Code.UNIMPLEMENTED, "method ExecProcess")
    finally:
        stop.set()
        await serving
    assert not path.exists()


def test_socket_comes_from_kata_agent_server_addr() -> None:
    assert socket_from_env({}) == DEFAULT_SOCKET
    assert socket_from_env({"KATA_AGENT_SERVER_ADDR": "unix:///tmp/x.sock"}) == Path("/tmp/x.sock")
    with pytest.raises(ValueError, match="unix"):
        socket_from_env({"KATA_AGENT_SERVER_ADDR": "vsock://-1:1024"})


def test_cli_serves_until_sigterm_and_exits_zero(tmp_path: Path) -> None:
    path = tmp_path / "agent.sock"
    env = {**os.environ, "KATA_AGENT_SERVER_ADDR": f"unix://{path}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cloud_api_adaptor.vm.devagent"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "serving on" in line:
                break
        assert path.exists()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
    assert not path.exists()
