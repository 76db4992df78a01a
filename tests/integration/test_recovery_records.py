"""A node whose state directory holds records the daemon cannot trust still starts and keeps its pods.

Records that are garbage, truncated, from a future schema or type-confused sit
next to the records of running sandboxes; after a restart every good sandbox
answers through its agent socket, every bad record is named in the log and
quarantined, and a sandbox whose recovery fails stops neither the others nor
the daemon.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest

from cloud_api_adaptor import kata_client as kata

from ..unit.hypervisor.test_models import BAD_RECORDS
from .daemon_proc import DaemonProcess


def new_id() -> str:
    return uuid.uuid4().hex + uuid.uuid4().hex


@pytest.mark.asyncio
async def test_bad_records_are_quarantined_and_every_good_sandbox_still_answers(short_tmp: Path) -> None:
    d = DaemonProcess(short_tmp)
    d.start()
    ids = [new_id() for _ in range(3)]
    paths = [
        await kata.create_vm(d.socket, sid, kata.kata_annotations(f"good-{i}")) for i, sid in enumerate(ids)
    ]
    await asyncio.gather(*(kata.start_vm(d.socket, sid, timeout=60) for sid in ids))
    d.kill9()
    records = d.state_dir / "sandboxes"
    for name, raw, _ in BAD_RECORDS:
        (records / f"{name}.json").write_bytes(raw)
    # a valid record whose recovery fails: its agent socket's directory is a file
    broken = json.loads((records / f"{ids[2]}.json").read_bytes())
    blocker = short_tmp / "blocker"
    blocker.write_text("not a directory")
    broken["agent_socket_path"] = str(blocker / "agent.ttrpc")
    (records / f"{ids[2]}.json").write_text(json.dumps(broken))
    d.start()
    try:
        for path in paths[:2]:
            agent = await kata.AgentClient.connect(path)
            try:
                assert await agent.check() == 1
            finally:
                await agent.aclose()
        log = d.log.read_text(errors="replace")
        for name, _, field in BAD_RECORDS:
            assert f"sandbox record {name}.json is invalid ({field}:" in log, name
        assert f"recovering sandbox {ids[2]} (restore) failed" in log
        assert sorted(p.name for p in records.glob("*.json")) == sorted(f"{sid}.json" for sid in ids)
        assert len(list((records / "quarantine").iterdir())) == len(BAD_RECORDS)
        for sid in ids:
            await kata.stop_vm(d.socket, sid)
        # the tampered record no longer names its first pod directory, so only that one stays
        assert [p.name for p in d.pods_dir.iterdir()] == [ids[2]]
        assert not any(
            p.name == "local" for p in (d.state_dir / "providers").iterdir() if any(p.glob("vms/*"))
        )
    finally:
        d.stop()
