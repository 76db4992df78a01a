"""Kata's side of the protocol, in Python: used by the demo, tests and benchmarks.

It behaves as Kata's Go runtime (the ``remote`` hypervisor) does: a new ttrpc
connection for every hypervisor RPC, the nine annotations always sent, StartVM
with a deadline, then the agent socket dialled for Health/Check.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

from google.protobuf.message import Message

from cloud_api_adaptor._pb import agent_pb2, health_pb2
from cloud_api_adaptor._pb import hypervisor_pb2 as hv
from cloud_api_adaptor.hypervisor.requests import (
    ANN_GPU_MODEL,
    ANN_GPUS,
    ANN_IMAGE,
    ANN_INITDATA,
    ANN_MACHINE_TYPE,
    ANN_MEMORY,
    ANN_SANDBOX_NAME,
    ANN_SANDBOX_NAMESPACE,
    ANN_VCPUS,
)
from cloud_api_adaptor.ttrpc import Client

M = TypeVar("M", bound=Message)
HYPERVISOR = "hypervisor.Hypervisor"


def kata_annotations(
    pod_name: str,
    namespace: str = "default",
    *,
    vcpus: int = 1,
    memory_mib: int = 2048,
    machine_type: str = "",
    image: str = "",
    initdata: str = "",
    gpus: int = 0,
) -> dict[str, str]:
    """The nine annotations Kata always sends, even when empty."""
    return {
        ANN_SANDBOX_NAME: pod_name,
        ANN_SANDBOX_NAMESPACE: namespace,
        ANN_MACHINE_TYPE: machine_type,
        ANN_IMAGE: image,
        ANN_VCPUS: str(vcpus),
        ANN_MEMORY: str(memory_mib),
        ANN_INITDATA: initdata,
        ANN_GPUS: str(gpus),
        ANN_GPU_MODEL: "",
    }


async def one_call(
    socket: Path,
    service: str,
    method: str,
    request: Message,
    response_type: type[M],
    timeout: float | None = None,
) -> M:
    """One RPC on a fresh connection, as Kata does for every hypervisor call."""
    client = await Client.connect_unix(socket)
    try:
        return await client.call(service, method, request, response_type, timeout=timeout)
    finally:
        await client.aclose()


async def create_vm(socket: Path, sandbox_id: str, annotations: Mapping[str, str], netns: str = "") -> str:
    request = hv.CreateVMRequest(id=sandbox_id, annotations=dict(annotations), networkNamespacePath=netns)
    response = await one_call(socket, HYPERVISOR, "CreateVM", request, hv.CreateVMResponse)
    return response.agentSocketPath


async def start_vm(socket: Path, sandbox_id: str, timeout: float = 600.0) -> None:
    await one_call(
        socket, HYPERVISOR, "StartVM", hv.StartVMRequest(id=sandbox_id), hv.StartVMResponse, timeout
    )


async def stop_vm(socket: Path, sandbox_id: str) -> None:
    await one_call(socket, HYPERVISOR, "StopVM", hv.StopVMRequest(id=sandbox_id), hv.StopVMResponse)


async def version(socket: Path) -> str:
    return (await one_call(socket, HYPERVISOR, "Version", hv.VersionRequest(), hv.VersionResponse)).version


class AgentClient:
    """The shim's long-lived agent connection (LongLiveConn)."""

    def __init__(self, client: Client) -> None:
        self._client = client

    @classmethod
    async def connect(cls, agent_socket: str | Path) -> AgentClient:
        return cls(await Client.connect_unix(Path(agent_socket)))

    async def check(self, timeout: float = 30.0) -> int:
        reply = await self._client.call(
            "grpc.Health", "Check", health_pb2.CheckRequest(), health_pb2.HealthCheckResponse, timeout=timeout
        )
        return int(reply.status)

    async def guest_details(self, timeout: float = 300.0) -> agent_pb2.GuestDetailsResponse:
        return await self._client.call(
            "grpc.AgentService",
            "GetGuestDetails",
            agent_pb2.GuestDetailsRequest(mem_block_size=True),
            agent_pb2.GuestDetailsResponse,
            timeout=timeout,
        )

    async def aclose(self) -> None:
        await self._client.aclose()
