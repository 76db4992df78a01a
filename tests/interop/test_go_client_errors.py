"""Kata's Go ttrpc client (containerd/ttrpc v1.2.7) against our Python ttrpc Server."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from cloud_api_adaptor._pb import hypervisor_pb2 as hv
from cloud_api_adaptor.ttrpc import CallContext, Server, UnaryMethod

from .katasim import run_kata_sim

# The first test of a session may have to build the Go binaries (minutes on a cold cache).
pytestmark = pytest.mark.timeout(1200)


async def _version(req: hv.VersionRequest, ctx: CallContext) -> hv.VersionResponse:
    return hv.VersionResponse(version="0.0.0")


@pytest_asyncio.fixture
async def hypervisor_socket(tmp_path: Path) -> AsyncIterator[Path]:
    path = tmp_path / "hypervisor.sock"
    async with Server() as server:
        server.add_service("hypervisor.Hypervisor", {"Version": UnaryMethod(hv.VersionRequest, _version)})
        await server.start_unix(path)
        yield path


@pytest.mark.asyncio
async def test_go_client_calls_version_on_new_connections(interop_bin: Path, hypervisor_socket: Path) -> None:
    run = await run_kata_sim(
        interop_bin, "-socket", os.fspath(hypervisor_socket), "-mode", "version", "-count", "3"
    )
    assert run.returncode == 0, run.stderr
    assert [(line["ok"], line["version"]) for line in run.steps("Version")] == [(True, "0.0.0")] * 3


@pytest.mark.asyncio
async def test_go_client_sees_go_codes_for_unknown_service_and_method(
    interop_bin: Path, hypervisor_socket: Path
) -> None:
    run = await run_kata_sim(interop_bin, "-socket", os.fspath(hypervisor_socket), "-mode", "errors")
    assert run.returncode == 0, run.stderr
    outcomes = [(line["step"], line["ok"], line.get("code"), line.get("message")) for line in run.lines]
    assert outcomes == [
        ("unknown-service", False, "Unimplemented", "service hypervisor.NoSuchService"),
        ("unknown-method", False, "Unimplemented", "method NoSuchMethod"),
        # Same connection: the errors did not cost the client its connection.
        ("Version", True, None, None),
    ]
    assert [line.get("code_num") for line in run.lines[:2]] == [12, 12]
