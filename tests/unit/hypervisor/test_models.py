import json
import os
from pathlib import Path
from typing import Any

import pytest

from cloud_api_adaptor.errors import FailedPrecondition
from cloud_api_adaptor.hypervisor.models import SandboxRecord, SandboxState
from cloud_api_adaptor.hypervisor.store import SandboxStore


def record(**kw: object) -> SandboxRecord:
    base: dict[str, object] = dict(
        id="sb1",
        pod_name="p",
        pod_namespace="ns",
        request_digest="d",
        agent_socket_path="/x/sb1/agent.ttrpc",
        instance_name="podvm-p-sb1",
        instance_type="t",
        image="i",
        vcpus=1,
        memory_mib=2,
        gpus=0,
        userdata="#cloud-config\n",
    )
    base.update(kw)
    return SandboxRecord(**base)  # type: ignore[arg-type]


def test_records_round_trip_through_json() -> None:
    r = record(
        state=SandboxState.RUNNING,
        instance_id="i-1",
        instance_ips=("10.0.0.1",),
        pod_network={"a": 1},
        vni=555000,
    )
    assert SandboxRecord.from_json(r.to_json()) == r


def test_the_state_machine_refuses_impossible_transitions() -> None:
    r = record()
    assert r.transition(SandboxState.STARTING).state is SandboxState.STARTING
    with pytest.raises(FailedPrecondition):
        r.transition(SandboxState.RUNNING)
    with pytest.raises(FailedPrecondition):
        record(state=SandboxState.STOPPED).transition(SandboxState.STARTING)


def test_tokens_change_with_each_start_attempt() -> None:
    assert record(attempt=1).token != record(attempt=2).token
    assert record(attempt=1).token == record(attempt=1).token


def test_unknown_schema_versions_are_refused() -> None:
    raw = record().to_json().replace(b'"schema_version": 1', b'"schema_version": 99')
    with pytest.raises(ValueError, match="schema_version"):
        SandboxRecord.from_json(raw)


@pytest.mark.asyncio
async def test_store_writes_are_atomic_private_and_reloadable(tmp_path: Path) -> None:
    store = SandboxStore(tmp_path)
    store.prepare()
    await store.save(record())
    await store.save(record(id="sb2"))
    files = sorted(p.name for p in store.directory.iterdir())
    assert files == ["sb1.json", "sb2.json"]  # no temp files left
    assert oct(os.stat(store.directory / "sb1.json").st_mode & 0o777) == "0o600"
    assert {r.id for r in store.load_all()} == {"sb1", "sb2"}
    await store.remove("sb1")
    assert [r.id for r in store.load_all()] == ["sb2"]


def _good(sandbox_id: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(record(id=sandbox_id).to_json())
    return data


def _changed(name: str, **changes: Any) -> bytes:
    return json.dumps({**_good(name), **changes}).encode()


def _without(name: str, key: str) -> bytes:
    return json.dumps({k: v for k, v in _good(name).items() if k != key}).encode()


#: (file name, contents, the field the quarantine reason names)
BAD_RECORDS: list[tuple[str, bytes, str]] = [
    ("garbage", b"\x00\xff not json", "record"),
    ("truncated", json.dumps(_good("truncated")).encode()[:-40], "record"),
    ("not-an-object", b"[1, 2, 3]", "record"),
    ("future", _changed("future", schema_version=99), "schema_version"),
    ("no-version", _without("no-version", "schema_version"), "schema_version"),
    ("path-is-number", _changed("path-is-number", agent_socket_path=42), "agent_socket_path"),
    ("relative-path", _changed("relative-path", agent_socket_path="pods/x"), "agent_socket_path"),
    ("ips-is-string", _changed("ips-is-string", instance_ips="10.0.0.1"), "instance_ips"),
    ("ips-not-ips", _changed("ips-not-ips", instance_ips=["x"]), "instance_ips"),
    ("state-unknown", _changed("state-unknown", state="zombie"), "state"),
    ("vcpus-bool", _changed("vcpus-bool", vcpus=True), "vcpus"),
    ("vcpus-negative", _changed("vcpus-negative", vcpus=-1), "vcpus"),
    ("vni-too-big", _changed("vni-too-big", vni=1 << 25), "vni"),
    ("network-is-list", _changed("network-is-list", pod_network=[]), "pod_network"),
    ("missing-id", _without("missing-id", "id"), "id"),
    ("other-id", json.dumps(_good("someone-else")).encode(), "id"),
    ("created-nan", _changed("created-nan", created_at=float("nan")), "created_at"),
]


def test_records_that_cannot_be_trusted_are_quarantined_and_the_good_ones_load(tmp_path: Path) -> None:
    store = SandboxStore(tmp_path)
    store.prepare()
    for name, raw, _ in BAD_RECORDS:
        (store.directory / f"{name}.json").write_bytes(raw)
    (store.directory / "good.json").write_bytes(record(id="good").to_json())
    assert [r.id for r in store.load_all()] == ["good"]
    reasons = dict(store.quarantined)
    assert set(reasons) == {f"{name}.json" for name, _, _ in BAD_RECORDS}
    for name, _, field in BAD_RECORDS:
        assert reasons[f"{name}.json"].startswith(f"{field}:"), (name, reasons[f"{name}.json"])
    assert sorted(p.name for p in store.directory.glob("*.json")) == ["good.json"]
    assert len(list(store.quarantine_dir.iterdir())) == len(BAD_RECORDS)
    assert store.load_all() == [record(id="good")]  # quarantined records stay out of later loads


def test_a_late_write_of_an_older_state_never_overwrites_a_newer_one(tmp_path: Path) -> None:
    store = SandboxStore(tmp_path)
    store.prepare()
    path = store.directory / "sb1.json"
    newer = record(state=SandboxState.STARTING)
    older = record()
    # A cancelled caller's write (sequence 1) finishes in its thread after the cleanup's write (2).
    store._write_in_order("sb1", 2, lambda: path.write_bytes(newer.to_json()))
    store._write_in_order("sb1", 1, lambda: path.write_bytes(older.to_json()))
    assert SandboxRecord.from_json(path.read_bytes()).state is SandboxState.STARTING
    store.close()
