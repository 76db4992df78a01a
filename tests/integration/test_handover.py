"""Rolling upgrade on one node: a second daemon takes over from the first without losing pods."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from cloud_api_adaptor import kata_client as kata

from .daemon_proc import DaemonProcess


@pytest.mark.asyncio
async def test_a_new_daemon_takes_over_the_node_and_its_running_pods(short_tmp: Path) -> None:
    old = DaemonProcess(short_tmp)
    old.start()
    new: DaemonProcess | None = None
    try:
        sid = uuid.uuid4().hex
        path = await kata.create_vm(old.socket, sid, kata.kata_annotations("upgrade"))
        await kata.start_vm(old.socket, sid, timeout=60)
        # The new daemon uses the same socket, probe port and state directory (hostPath).
        new = DaemonProcess(short_tmp)
        new.env = dict(old.env)
        new.probe_port = old.probe_port
        new.log = short_tmp / "daemon-new.log"
        new.start()
        assert old.proc is not None and old.proc.poll() is None  # the old one idles until SIGTERM
        agent = await kata.AgentClient.connect(path)
        try:
            assert await agent.check() == 1
        finally:
            await agent.aclose()
        assert "hand-over complete" in new.log.read_text()
        assert "handed this node over" in old.log.read_text()
        await kata.stop_vm(new.socket, sid)
        assert list(new.pods_dir.iterdir()) == []
        assert old.stop() == 0
    finally:
        if new is not None:
            code = new.stop()
            assert code == 0, new.log.read_text()[-3000:]
        old.stop()
