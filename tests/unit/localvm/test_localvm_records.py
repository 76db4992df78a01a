"""VM records: versioned JSON, atomic writes, listing that tolerates strays."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud_api_adaptor.localvm.records import RecordStore, VmRecord, VmState


def record(vm_id: str = "local-0123456789", **changes: object) -> VmRecord:
    base = VmRecord(
        id=vm_id,
        name="podvm-a",
        token="tok",
        sandbox_id="sb",
        mode="netns",
        address="198.18.0.2",
        created_at=1700000000.5,
        tags={"k": "v"},
        spec={"instance_type": "small", "vcpus": 1},
        host_address="198.18.0.1",
        prefixlen=30,
        block=0,
        netns="caa-0123456789",
        host_ifname="caa-0123456789",
    )
    return base.evolve(**changes)


def test_a_record_round_trips_through_json_with_its_schema_version() -> None:
    original = record(state=VmState.LAUNCHED, pid=42, start_time=1234)
    data = original.to_json()
    assert b'"schema_version": 1' in data
    assert VmRecord.from_json(data) == original


def test_an_unknown_schema_version_is_refused() -> None:
    data = record().to_json().replace(b'"schema_version": 1', b'"schema_version": 99')
    with pytest.raises(ValueError, match="schema_version"):
        VmRecord.from_json(data)


def test_the_store_puts_gets_lists_and_removes(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "records")
    assert store.all() == []
    store.put(record())
    store.put(record("local-abcdefabcd", address="198.18.0.6", block=1))
    assert store.get("local-0123456789") == record()
    assert {r.id for r in store.all()} == {"local-0123456789", "local-abcdefabcd"}
    assert (tmp_path / "records" / "local-0123456789.json").stat().st_mode & 0o777 == 0o600
    store.remove("local-0123456789")
    store.remove("local-0123456789")  # idempotent
    assert store.get("local-0123456789") is None
    assert [r.id for r in store.all()] == ["local-abcdefabcd"]


def test_listing_skips_temp_files_strays_and_unreadable_records(tmp_path: Path) -> None:
    store = RecordStore(tmp_path)
    store.put(record())
    (tmp_path / ".local-0123456789.json.77.tmp").write_text("{")
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / "local-ffffffffff.json").write_text("{broken")
    assert [r.id for r in store.all()] == ["local-0123456789"]


def test_ids_that_are_not_ours_name_no_record_and_no_path(tmp_path: Path) -> None:
    store = RecordStore(tmp_path)
    assert store.get("../../etc/passwd") is None
    assert store.get("i-0123456789abcdef0") is None
    with pytest.raises(ValueError):
        store.path("local-../x")
