"""Process identity and stopping: by session and start time, never by name, never a reused pid."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from cloud_api_adaptor.localvm.procs import VmIdentity, parse_stat, read_stat, stop_vm

# A session leader that starts a child which starts a session of its own (escapes the session).
TREE = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print("ready", flush=True)
time.sleep(60)
"""


def test_parse_stat_copes_with_spaces_and_parentheses_in_the_command_name() -> None:
    text = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 " + " ".join(["0"] * 12) + " 987654 rest"
    stat = parse_stat(text)
    assert (stat.pid, stat.state, stat.ppid, stat.pgid, stat.sid, stat.start_time) == (
        4242,
        "S",
        1,
        4242,
        4242,
        987654,
    )


def test_read_stat_of_this_process() -> None:
    stat = read_stat(os.getpid())
    assert stat is not None and stat.pid == os.getpid() and not stat.is_zombie
    assert read_stat(2**22 + 1) is None


@pytest.fixture
def session() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", TREE], stdout=subprocess.PIPE, start_new_session=True)
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    proc.stdout.close()


def test_stop_vm_ends_the_whole_session(session: subprocess.Popen[bytes]) -> None:
    stat = read_stat(session.pid)
    assert stat is not None
    identity = VmIdentity.resolve(session.pid, stat.start_time, None)
    members = identity.members()
    assert session.pid in members and len(members) == 2
    assert stop_vm(identity, timeout=5.0) == []
    assert identity.members() == []
    assert session.wait() == -15


def test_a_recorded_start_time_that_does_not_match_protects_the_process(
    session: subprocess.Popen[bytes],
) -> None:
    stat = read_stat(session.pid)
    assert stat is not None
    stranger = VmIdentity.resolve(session.pid, stat.start_time + 1, None)
    assert stranger.session is None
    assert stranger.members() == []
    assert stop_vm(stranger, timeout=1.0) == []
    assert session.poll() is None


def test_nothing_to_identify_means_nothing_to_stop() -> None:
    assert stop_vm(VmIdentity.resolve(None, None, None), timeout=1.0) == []
