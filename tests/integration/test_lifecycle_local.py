"""The whole pod sandbox lifecycle through the real ttrpc socket, on the local provider."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

import pytest

from cloud_api_adaptor import kata_client as kata
from cloud_api_adaptor.ttrpc import Code, RpcError

from .daemon_proc import DaemonProcess


def new_id() -> str:
    return uuid.uuid4().hex + uuid.uuid4().hex


def vm_processes(root: Path) -> list[int]:
    """PIDs whose command line mentions this test's directory (the local VMs run from it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if str(root).encode() in cmdline and b"cloud-api-adaptor\x00serve" not in cmdline:
            found.append(int(entry.name))
    return found


@pytest.fixture
def daemon(short_tmp: Path):  # type: ignore[no-untyped-def]
    d = DaemonProcess(short_tmp)
    d.start()
    yield d
    d.stop()


@pytest.mark.asyncio
async def test_three_pods_run_and_stop_leaving_nothing(daemon: DaemonProcess) -> None:
    ids = [new_id() for _ in range(3)]

    async def lifecycle(i: int, sid: str) -> None:
        path = await kata.create_vm(daemon.socket, sid, kata.kata_annotations(f"pod-{i}"))
        assert path == f"{daemon.pods_dir}/{sid}/agent.ttrpc"
        assert (
            await kata.create_vm(daemon.socket, sid, kata.kata_annotations(f"pod-{i}")) == path
        )  # idempotent
        await kata.start_vm(daemon.socket, sid, timeout=60)
        agent = await kata.AgentClient.connect(path)
        try:
            assert await agent.check() == 1
            assert (await agent.guest_details()).agent_details.version
        finally:
            await agent.aclose()
        await kata.stop_vm(daemon.socket, sid)
        await kata.stop_vm(daemon.socket, sid)  # a second StopVM succeeds

    await asyncio.gather(*(lifecycle(i, sid) for i, sid in enumerate(ids)))
    assert list(daemon.pods_dir.iterdir()) == []
    # Debug logging of three full lifecycles carries no key material (the userdata holds TLS keys).
    log = daemon.log.read_text()
    assert "sandbox" in log and "PRIVATE KEY" not in log and "write_files" not in log
    assert vm_processes(daemon.root) == []
    assert await kata.version(daemon.socket) == "0.0.0"


@pytest.mark.asyncio
async def test_unknown_and_conflicting_sandboxes_get_clear_codes(daemon: DaemonProcess) -> None:
    sid = new_id()
    with pytest.raises(RpcError) as err:
        await kata.stop_vm(daemon.socket, sid)
    assert err.value.code == Code.NOT_FOUND
    with pytest.raises(RpcError) as err:
        await kata.start_vm(daemon.socket, sid)
    assert err.value.code == Code.NOT_FOUND
    await kata.create_vm(daemon.socket, sid, kata.kata_annotations("a"))
    with pytest.raises(RpcError) as err:
        await kata.create_vm(daemon.socket, sid, kata.kata_annotations("b"))
    assert err.value.code == Code.ALREADY_EXISTS
    await kata.stop_vm(daemon.socket, sid)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("sid", "annotations", "field"),
    [
        ("", kata.kata_annotations("a"), "empty sandbox id"),
        ("../etc", kata.kata_annotations("a"), "invalid sandbox id"),
        ("x" * 200, kata.kata_annotations("a"), "invalid sandbox id"),
        (
            "ok1",
            {**kata.kata_annotations("a"), "io.katacontainers.config.hypervisor.default_vcpus": "-2"},
            "default_vcpus",
        ),
        (
            "ok2",
            {**kata.kata_annotations("a"), "io.katacontainers.config.hypervisor.default_memory": "lots"},
            "default_memory",
        ),
        (
            "ok3",
            {
                **kata.kata_annotations(""),
            },
            "io.kubernetes.cri.sandbox-name",
        ),
        (
            "ok4",
            {**kata.kata_annotations("a"), "io.katacontainers.config.hypervisor.cc_init_data": "not toml ["},
            "cc_init_data",
        ),
        (
            "ok5",
            {**kata.kata_annotations("a"), "io.katacontainers.config.hypervisor.machine_type": "huge.x"},
            "huge.x",
        ),
    ],
)
async def test_bad_input_is_refused_naming_the_field_and_leaves_nothing(
    daemon: DaemonProcess, sid: str, annotations: dict[str, str], field: str
) -> None:
    with pytest.raises(RpcError) as err:
        await kata.create_vm(daemon.socket, sid, annotations)
    assert err.value.code == Code.INVALID_ARGUMENT
    assert field in err.value.message
    assert not daemon.pods_dir.exists() or list(daemon.pods_dir.iterdir()) == []
    records = daemon.state_dir / "sandboxes"
    assert not records.exists() or list(records.iterdir()) == []
    assert vm_processes(daemon.root) == []


@pytest.mark.asyncio
async def test_start_vm_that_times_out_deletes_its_vm(short_tmp: Path) -> None:
    d = DaemonProcess(short_tmp, {"LOCAL_BOOT_DELAY": "30s", "PROXY_TIMEOUT": "1s"})
    d.start()
    try:
        sid = new_id()
        await kata.create_vm(d.socket, sid, kata.kata_annotations("slow"))
        with pytest.raises(RpcError) as err:
            await kata.start_vm(d.socket, sid, timeout=30)
        assert err.value.code == Code.DEADLINE_EXCEEDED
        assert "failed to establish agent proxy connection" in err.value.message
        assert vm_processes(d.root) == []
        await kata.stop_vm(d.socket, sid)
    finally:
        d.stop()


@pytest.mark.asyncio
async def test_sandboxes_survive_kill_9_of_the_daemon(short_tmp: Path) -> None:
    d = DaemonProcess(short_tmp)
    d.start()
    ids = [new_id() for _ in range(3)]
    paths = []
    for i, sid in enumerate(ids):
        paths.append(await kata.create_vm(d.socket, sid, kata.kata_annotations(f"keep-{i}")))
    await asyncio.gather(*(kata.start_vm(d.socket, sid, timeout=60) for sid in ids))
    d.kill9()
    d.start()
    try:
        for path in paths:
            agent = await kata.AgentClient.connect(path)
            try:
                assert await agent.check() == 1
            finally:
                await agent.aclose()
        for sid in ids:
            await kata.stop_vm(d.socket, sid)
        assert vm_processes(d.root) == []
        assert list(d.pods_dir.iterdir()) == []
    finally:
        d.stop()
