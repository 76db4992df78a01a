"""The Hypervisor and PodVMInfo services: decode, call the lifecycle, encode.

One implementation behind two transports: ``ttrpc_services`` for Kata's shim on
REMOTE_HYPERVISOR_ENDPOINT, and ``GrpcHypervisor`` for the optional gRPC socket.
No cloud logic lives here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from cloud_api_adaptor._pb import hypervisor_pb2 as hv
from cloud_api_adaptor._pb import hypervisor_pb2_grpc as hv_grpc
from cloud_api_adaptor._pb import podvminfo_pb2 as pvi
from cloud_api_adaptor._pb import podvminfo_pb2_grpc as pvi_grpc
from cloud_api_adaptor.hypervisor.sandboxes import SandboxManager
from cloud_api_adaptor.hypervisor.status_map import to_status
from cloud_api_adaptor.ttrpc import CallContext, UnaryMethod

VERSION = "0.0.0"  # what Kata and the Go version report
HYPERVISOR_SERVICE = "hypervisor.Hypervisor"
PODVMINFO_SERVICE = "podvminfo.PodVMInfo"

T = TypeVar("T")


class HypervisorService:
    """Transport-neutral handlers; errors are raised as our own classes."""

    def __init__(self, manager: SandboxManager) -> None:
        self._manager = manager

    async def version(self, request: hv.VersionRequest) -> hv.VersionResponse:
        return hv.VersionResponse(version=VERSION)

    async def create_vm(self, request: hv.CreateVMRequest) -> hv.CreateVMResponse:
        path = await self._manager.create_vm(
            request.id, dict(request.annotations), request.networkNamespacePath
        )
        return hv.CreateVMResponse(agentSocketPath=path)

    async def start_vm(self, request: hv.StartVMRequest, deadline: float | None) -> hv.StartVMResponse:
        await self._manager.start_vm(request.id, deadline)
        return hv.StartVMResponse()

    async def stop_vm(self, request: hv.StopVMRequest) -> hv.StopVMResponse:
        await self._manager.stop_vm(request.id)
        return hv.StopVMResponse()

    async def get_info(self, request: pvi.GetInfoRequest) -> pvi.GetInfoResponse:
        vmid = await self._manager.get_info(request.PodName, request.PodNamespace, request.Wait)
        return pvi.GetInfoResponse(VMID=vmid)


def ttrpc_services(service: HypervisorService) -> dict[str, dict[str, UnaryMethod[Any]]]:
    """The method tables to register on a ttrpc server built with ``error_translator=to_rpc_error``."""

    async def version(req: Any, ctx: CallContext) -> Any:
        return await service.version(req)

    async def create_vm(req: Any, ctx: CallContext) -> Any:
        return await service.create_vm(req)

    async def start_vm(req: Any, ctx: CallContext) -> Any:
        return await service.start_vm(req, ctx.deadline)

    async def stop_vm(req: Any, ctx: CallContext) -> Any:
        return await service.stop_vm(req)

    async def get_info(req: Any, ctx: CallContext) -> Any:
        return await service.get_info(req)

    return {
        HYPERVISOR_SERVICE: {
            "CreateVM": UnaryMethod(hv.CreateVMRequest, create_vm),
            "StartVM": UnaryMethod(hv.StartVMRequest, start_vm),
            "StopVM": UnaryMethod(hv.StopVMRequest, stop_vm),
            "Version": UnaryMethod(hv.VersionRequest, version),
        },
        PODVMINFO_SERVICE: {"GetInfo": UnaryMethod(pvi.GetInfoRequest, get_info)},
    }


async def _grpc_call(context: grpc.aio.ServicerContext[Any, Any], call: Callable[[], Awaitable[T]]) -> T:
    try:
        return await call()
    except Exception as exc:
        code, message = to_status(exc, "gRPC call")
        await context.abort(grpc.StatusCode[code.name], message)
        raise  # unreachable: abort raises


def _grpc_deadline(context: grpc.aio.ServicerContext[Any, Any]) -> float | None:
    remaining: float | None = context.time_remaining()
    if remaining is None:
        return None
    return asyncio.get_running_loop().time() + remaining


class GrpcHypervisor(hv_grpc.HypervisorServicer):  # type: ignore[misc]
    """The same service over gRPC (grpc.aio) for tools that speak gRPC."""

    def __init__(self, service: HypervisorService) -> None:
        self._s = service

    async def Version(self, request: Any, context: Any) -> Any:
        return await _grpc_call(context, lambda: self._s.version(request))

    async def CreateVM(self, request: Any, context: Any) -> Any:
        return await _grpc_call(context, lambda: self._s.create_vm(request))

    async def StartVM(self, request: Any, context: Any) -> Any:
        return await _grpc_call(context, lambda: self._s.start_vm(request, _grpc_deadline(context)))

    async def StopVM(self, request: Any, context: Any) -> Any:
        return await _grpc_call(context, lambda: self._s.stop_vm(request))


class GrpcPodVMInfo(pvi_grpc.PodVMInfoServicer):  # type: ignore[misc]
    def __init__(self, service: HypervisorService) -> None:
        self._s = service

    async def GetInfo(self, request: Any, context: Any) -> Any:
        return await _grpc_call(context, lambda: self._s.get_info(request))


def add_grpc_services(server: grpc.aio.Server, service: HypervisorService) -> None:
    hv_grpc.add_HypervisorServicer_to_server(GrpcHypervisor(service), server)
    pvi_grpc.add_PodVMInfoServicer_to_server(GrpcPodVMInfo(service), server)
