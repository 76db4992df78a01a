"""Passing sockets between processes (SCM_RIGHTS) and the fd-keeper that holds them across a crash."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud_api_adaptor.testing.keeper import keeper_in_thread
from cloud_api_adaptor.transport.custody import (
    Inventory,
    SocketCustody,
    connection_meta,
    listener_meta,
    session_meta,
    session_state,
)
from cloud_api_adaptor.transport.fdpass import FdPassError, receive_message, send_message
from cloud_api_adaptor.transport.keeper_link import KeeperLink
from cloud_api_adaptor.transport.resume import Session


def test_a_passed_descriptor_is_the_same_connection_and_bytes_queued_in_it_wait() -> None:
    channel_a, channel_b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    shim, ours = socket.socketpair()
    with channel_a, channel_b, shim, ours:
        shim.sendall(b"queued before the hand-over")
        send_message(channel_a, {"op": "socket", "key": "k"}, [ours.fileno()])
        ours.close()  # the sender's copy is gone: the kernel's copy in flight keeps the connection
        message, fds = receive_message(channel_b)
        assert message == {"op": "socket", "key": "k"}
        with socket.socket(fileno=fds[0]) as adopted:
            assert adopted.recv(100) == b"queued before the hand-over"
            adopted.sendall(b"answer")
            assert shim.recv(100) == b"answer"


def test_a_closed_or_garbled_channel_is_an_error_and_leaks_no_descriptor() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    extra, other = socket.socketpair()
    with a, b, extra, other:
        socket.send_fds(a, [b"not json"], [extra.fileno()])
        before = len(os.listdir("/proc/self/fd"))
        with pytest.raises(FdPassError, match="malformed"):
            receive_message(b)
        assert len(os.listdir("/proc/self/fd")) == before
        a.close()
        with pytest.raises(FdPassError, match="closed"):
            receive_message(b)


@pytest.fixture
def keeper(tmp_path: Path) -> Iterator[Path]:
    with keeper_in_thread(tmp_path / "keeper.sock") as fdk:
        yield fdk.path


def test_the_keeper_hands_back_what_a_dead_daemon_kept_with_its_bytes(keeper: Path) -> None:
    shim, ours = socket.socketpair()
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(os.fspath(keeper.parent / "agent.sock"))
    listener.listen()
    big = os.urandom(100_000)  # a session's un-acked bytes: more than one message
    with shim:
        daemon = KeeperLink(keeper)
        daemon.keep(listener_meta(str(keeper.parent / "agent.sock")), listener.fileno())
        daemon.keep(connection_meta("C:1", str(keeper.parent / "agent.sock")), ours.fileno(), big)
        daemon.keep(connection_meta("C:2", str(keeper.parent / "agent.sock")), ours.fileno())
        daemon.drop("C:2")
        daemon.close()  # the daemon dies: its descriptors are gone, the keeper's are not
        ours.close()
        listener.close()
        shim.sendall(b"while nobody ran")

        restarted = KeeperLink(keeper)
        inventory = restarted.fetch()
        restarted.close()
        try:
            assert list(inventory.listeners) == [str(keeper.parent / "agent.sock")]
            (conn,) = inventory.connections[str(keeper.parent / "agent.sock")]
            assert conn.key == "C:1" and bytes(conn.prefix) == big
            assert conn.sock.recv(100) == b"while nobody ran"
            # the listener still accepts on its path
            with socket.socket(socket.AF_UNIX) as client:
                client.connect(os.fspath(keeper.parent / "agent.sock"))
        finally:
            inventory.close()


def test_a_misbehaving_client_is_dropped_and_the_keeper_keeps_serving(keeper: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as bad:
        bad.connect(os.fspath(keeper))
        bad.send(b'{"op": "launch missiles"}')
        assert bad.recv(10) == b""  # dropped
    link = KeeperLink(keeper)
    try:
        assert link.fetch().listeners == {}
    finally:
        link.close()


def test_custody_keeps_and_releases_with_the_keeper(keeper: Path, tmp_path: Path) -> None:
    custody = SocketCustody(keeper=KeeperLink(keeper))
    a, b = socket.socketpair()
    with a, b:
        key = custody.keep_connection(tmp_path / "agent.sock", a.fileno())
        link = KeeperLink(keeper)
        try:
            held = link.fetch()
            assert [c.key for c in held.connections[str(tmp_path / "agent.sock")]] == [key]
            held.close()
            custody.release_connection(key)
            assert link.fetch().connections == {}
        finally:
            link.close()
            custody.close()


def test_a_hand_over_copy_wins_over_the_keepers_older_one() -> None:
    mine, theirs = Inventory(), Inventory()
    a, b = socket.socketpair()
    with a, b:
        mine.add(connection_meta("C:1", "/p", b"newer"), os.dup(a.fileno()))
        theirs.add(connection_meta("C:1", "/p"), os.dup(a.fileno()))
        theirs.add(connection_meta("C:2", "/p"), os.dup(b.fileno()))
        mine.merge(theirs)
        assert sorted((c.key, bytes(c.prefix)) for c in mine.connections["/p"]) == [
            ("C:1", b"newer"),
            ("C:2", b""),
        ]
        mine.close()


def test_a_session_survives_its_json_round_trip() -> None:
    session = Session(b"s" * 16)
    session.send(b"request bytes the VM has not acknowledged")
    state = session.snapshot()
    again = session_state(session_meta(state), state.unacked)
    assert again == state
    assert Session.restore(again).snapshot() == state
