"""Batched durable record writes (state.SandboxStore) and shared directory fsyncs (fsutil.DirectorySync)."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import pytest

from cloud_api_adaptor.errors import StateWriteError
from cloud_api_adaptor.fsutil import DirectorySync
from cloud_api_adaptor.hypervisor.models import SandboxRecord, SandboxState
from cloud_api_adaptor.hypervisor.store import SandboxStore, encode_record

pytestmark = pytest.mark.timeout(60)  # a lost wake-up would hang, not fail


def record(sandbox_id: str = "sb1", **kw: object) -> SandboxRecord:
    base: dict[str, object] = dict(
        id=sandbox_id,
        pod_name="p",
        pod_namespace="ns",
        request_digest="d",
        agent_socket_path=f"/x/{sandbox_id}/agent.ttrpc",
        instance_name=f"podvm-p-{sandbox_id}",
        instance_type="t",
        image="i",
        vcpus=1,
        memory_mib=2,
        gpus=0,
        userdata='#cloud-config\nwrite_files: [{"path": "/x", "content": "é"}]\n',
    )
    base.update(kw)
    return SandboxRecord(**base)  # type: ignore[arg-type]


# -- encoding ------------------------------------------------------------------------------


def test_the_store_encodes_the_same_fields_and_values_as_to_json() -> None:
    r = record(
        state=SandboxState.RUNNING,
        instance_id="i-1",
        instance_ips=("10.0.0.1", "10.0.0.2"),
        pod_network={"routes": [{"dst": "0.0.0.0/0", "gw": "10.0.0.1"}], "mtu": 1450},
        vni=555000,
        created_at=1.5,
    )
    assert json.loads(encode_record(r)) == json.loads(r.to_json())
    assert SandboxRecord.from_json(encode_record(r)) == r


# -- DirectorySync -------------------------------------------------------------------------


class BlockingFsync:
    """An fsync stand-in that counts calls and holds each one until the test releases it."""

    def __init__(self) -> None:
        self.calls = 0
        self.entered = threading.Semaphore(0)
        self.release = threading.Semaphore(0)
        self.fail_next = False

    def __call__(self, path: Path) -> None:
        self.calls += 1
        self.entered.release()
        self.release.acquire()
        if self.fail_next:
            self.fail_next = False
            raise OSError(5, "Input/output error")


def start(target: DirectorySync, results: list[str], name: str) -> threading.Thread:
    def run() -> None:
        try:
            target.sync()
            results.append(name)
        except OSError:
            results.append(f"{name}: failed")

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def wait_for_changes(sync: DirectorySync, count: int) -> None:
    while sync.changes < count:
        threading.Event().wait(0.001)


def test_changes_made_during_an_fsync_wait_for_the_next_one_which_they_share(tmp_path: Path) -> None:
    fsync = BlockingFsync()
    sync = DirectorySync(tmp_path, fsync)
    done: list[str] = []
    first = start(sync, done, "a")
    assert fsync.entered.acquire(timeout=30)
    # b, c and d change the directory while a's fsync runs: it may not cover them.
    others = [start(sync, done, name) for name in "bcd"]
    wait_for_changes(sync, 4)
    fsync.release.release()
    first.join()
    assert done == ["a"]
    assert fsync.entered.acquire(timeout=30)  # one fsync on behalf of b, c and d
    assert done == ["a"]
    fsync.release.release()
    for thread in others:
        thread.join()
    assert sorted(done) == ["a", "b", "c", "d"]
    assert fsync.calls == 2


def test_a_failed_fsync_fails_its_runner_and_the_waiters_try_again(tmp_path: Path) -> None:
    fsync = BlockingFsync()
    sync = DirectorySync(tmp_path, fsync)
    done: list[str] = []
    fsync.fail_next = True
    first = start(sync, done, "a")
    assert fsync.entered.acquire(timeout=30)
    second = start(sync, done, "b")
    wait_for_changes(sync, 2)
    fsync.release.release()
    first.join()
    assert fsync.entered.acquire(timeout=30)
    fsync.release.release()
    second.join()
    assert done == ["a: failed", "b"]


# -- SandboxStore ----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_burst_of_saves_is_durable_and_shares_directory_fsyncs(tmp_path: Path) -> None:
    store = SandboxStore(tmp_path, writers=2)
    store.prepare()
    try:
        ids = [f"sb{i}" for i in range(60)]
        await asyncio.gather(*(store.save(record(i, state=SandboxState.CREATED)) for i in ids))
        assert sorted(p.name for p in store.directory.iterdir()) == sorted(f"{i}.json" for i in ids)
        assert {r.id for r in store.load_all()} == set(ids)
        # Every save announced one change; at most one fsync per batch ran.
        assert store._dir_sync.changes < len(ids)
    finally:
        store.close()


@pytest.mark.asyncio
async def test_concurrent_saves_of_one_record_leave_the_last_one_requested(tmp_path: Path) -> None:
    store = SandboxStore(tmp_path)
    store.prepare()
    try:
        states = [SandboxState.CREATED, SandboxState.STARTING, SandboxState.RUNNING, SandboxState.STOPPING]
        await asyncio.gather(*(store.save(record(state=s, attempt=n)) for n, s in enumerate(states)))
        (loaded,) = store.load_all()
        assert (loaded.state, loaded.attempt) == (SandboxState.STOPPING, 3)
    finally:
        store.close()


@pytest.mark.asyncio
async def test_a_failed_write_fails_only_its_own_caller(tmp_path: Path) -> None:
    store = SandboxStore(tmp_path)
    store.prepare()
    (store.directory / "bad.json").mkdir()  # the rename onto it fails
    try:
        results = await asyncio.gather(
            store.save(record("bad")), store.save(record("good")), return_exceptions=True
        )
        assert isinstance(results[0], StateWriteError)
        assert str(store.directory) in str(results[0]) and not results[0].no_space
        assert results[1] is None
        assert [r.id for r in store.load_all()] == ["good"]
        assert not [p for p in store.directory.iterdir() if p.name.endswith(".tmp")]
    finally:
        store.close()


@pytest.mark.asyncio
async def test_a_cancelled_save_is_still_written_in_order(tmp_path: Path) -> None:
    store = SandboxStore(tmp_path)
    store.prepare()
    try:
        first = asyncio.ensure_future(store.save(record(state=SandboxState.CREATED)))
        await asyncio.sleep(0)  # queued
        first.cancel()
        await store.save(record(state=SandboxState.STARTING))
        with pytest.raises(asyncio.CancelledError):
            await first
        (loaded,) = store.load_all()
        assert loaded.state is SandboxState.STARTING
        await store.remove("sb1")
        assert store.load_all() == []
    finally:
        store.close()


@pytest.mark.asyncio
async def test_saving_after_close_raises_instead_of_waiting_forever(tmp_path: Path) -> None:
    store = SandboxStore(tmp_path)
    store.prepare()
    await store.save(record())
    store.close()
    with pytest.raises(RuntimeError):
        await store.save(record(state=SandboxState.STARTING))
    assert store.load_all()[0].state is SandboxState.CREATED


@pytest.mark.asyncio
async def test_a_first_step_runs_before_its_record_and_a_failing_one_keeps_the_record_out(
    tmp_path: Path,
) -> None:
    store = SandboxStore(tmp_path / "state")
    store.prepare()
    pod_dir = tmp_path / "pods" / "sb1"
    try:
        await store.save(record(), first=lambda: pod_dir.mkdir(parents=True))
        assert pod_dir.is_dir()
        assert [r.state for r in store.load_all()] == [SandboxState.CREATED]

        def fail() -> None:
            raise PermissionError(13, "Permission denied")

        with pytest.raises(StateWriteError, match="Permission denied"):
            await store.save(record(state=SandboxState.STARTING), first=fail)
        assert [r.state for r in store.load_all()] == [SandboxState.CREATED]
    finally:
        store.close()
