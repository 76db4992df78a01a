"""The same Hypervisor service over gRPC on the optional second socket."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from cloud_api_adaptor._pb import hypervisor_pb2 as hv
from cloud_api_adaptor._pb import hypervisor_pb2_grpc as hv_grpc
from cloud_api_adaptor.kata_client import kata_annotations

from .daemon_proc import DaemonProcess


@pytest.mark.asyncio
async def test_grpc_clients_get_the_same_service_and_status_codes(short_tmp: Path) -> None:
    grpc_socket = short_tmp / "grpc.sock"
    d = DaemonProcess(short_tmp, {"GRPC_ENDPOINT": f"unix://{grpc_socket}"}, provider="fake")
    d.start()
    try:
        assert oct(grpc_socket.stat().st_mode & 0o777) == "0o600"
        async with grpc.aio.insecure_channel(f"unix://{grpc_socket}") as channel:
            stub = hv_grpc.HypervisorStub(channel)
            assert (await stub.Version(hv.VersionRequest(), timeout=10)).version == "0.0.0"
            created = await stub.CreateVM(
                hv.CreateVMRequest(id="g1", annotations=kata_annotations("p")), timeout=10
            )
            assert created.agentSocketPath == f"{d.pods_dir}/g1/agent.ttrpc"
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.CreateVM(hv.CreateVMRequest(id="g2", annotations={}), timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "io.kubernetes.cri.sandbox-name" in (err.value.details() or "")
            await stub.StopVM(hv.StopVMRequest(id="g1"), timeout=10)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.StopVM(hv.StopVMRequest(id="never"), timeout=10)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        assert d.stop() == 0
