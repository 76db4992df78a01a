"""The fd-keeper relaying a shim connection, without a daemon: a socketpair stands in for the shim.

What makes a ``kill -9`` exact: the keeper does the shim's I/O, so what it hands
the next daemon (bytes read from the shim and not acknowledged, how many of the
VM's bytes reached the shim) is exactly right, whatever the daemon was doing
when it died.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloud_api_adaptor import fdkeeper, fdkeeper_relay
from cloud_api_adaptor.fdkeeper import FdKeeper
from cloud_api_adaptor.fdkeeper_relay import OUTBOX_LIMIT, READ_SIZE
from cloud_api_adaptor.testing.eventually import eventually_sync
from cloud_api_adaptor.testing.keeper import keeper_in_thread
from cloud_api_adaptor.transport.custody import InheritedConnection
from cloud_api_adaptor.transport.fdpass import send_message
from cloud_api_adaptor.transport.keeper_link import KeeperLink

LISTENER = "/run/pods/s1/agent.ttrpc"


@pytest.fixture
def fdk(tmp_path: Path) -> Iterator[FdKeeper]:
    with keeper_in_thread(tmp_path / "keeper.sock") as keeper:
        yield keeper


def session(sent: int = 0, acked: int = 0, received: int = 0, **extra: Any) -> dict[str, Any]:
    return {
        "id": "ab" * 16,
        "opened": True,
        "sent": sent,
        "acked": acked,
        "received": received,
        "fin_sent": False,
        "fin_received": False,
        "replay_limit": 1 << 20,
        **extra,
    }


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    sock.settimeout(10)
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


def relayed(fdk: FdKeeper, key: str = "C:1", **state: Any) -> tuple[KeeperLink, socket.socket, socket.socket]:
    """A daemon registering a shim connection: (its keeper link, its end of the pair, the shim)."""
    shim, accepted = socket.socketpair()
    daemon = KeeperLink(fdk.path)
    prefix = state.pop("prefix", b"")
    outbox = state.pop("outbox", b"")
    d_end = daemon.relay(key, LISTENER, accepted.fileno(), session(**state), prefix, outbox)
    accepted.close()  # the daemon's copy: from now on only the keeper holds the shim's connection
    return daemon, d_end, shim


def restart(fdk: FdKeeper) -> InheritedConnection:
    link = KeeperLink(fdk.path)
    try:
        inventory = link.fetch()
    finally:
        link.close()
    (conn,) = inventory.connections[LISTENER]
    assert conn.relayed and conn.session is not None
    return conn


def test_a_daemon_death_hands_the_next_daemon_exact_counters(fdk: FdKeeper) -> None:
    daemon, d_end, shim = relayed(fdk)
    with shim:
        shim.sendall(b"request-1")
        assert recv_exactly(d_end, 9) == b"request-1"
        daemon.report("opened", "C:1")
        daemon.report("acked", "C:1", acked=4)  # the VM acknowledged 4 bytes
        shim.sendall(b"request-2")  # fed into the pair; the daemon never reads it
        d_end.sendall(b"answer-1")  # written into the pair just before the daemon dies
        daemon.close()
        d_end.close()
        assert recv_exactly(shim, 8) == b"answer-1"  # the bytes the daemon wrote reach the shim
        shim.sendall(b"|while down")

        conn = restart(fdk)
        with conn.sock:
            state = conn.session
            assert state is not None
            assert (state["acked"], state["received"], state["opened"]) == (4, 8, True)
            assert state["sent"] == 4 + len(conn.prefix)
            # everything the shim sent after the acknowledged bytes, once: handed back, or still queued
            rest = b"est-1request-2|while down"[len(conn.prefix) :]
            assert bytes(conn.prefix) + recv_exactly(conn.sock, len(rest)) == b"est-1request-2|while down"
            # the new pair goes on both ways
            shim.sendall(b"request-3")
            assert recv_exactly(conn.sock, 9) == b"request-3"
            conn.sock.sendall(b"answer-2")
            assert recv_exactly(shim, 8) == b"answer-2"
            assert fdk.relays.get("C:1").received == 16  # type: ignore[union-attr]


def test_a_fin_announced_is_a_half_close_not_a_death(fdk: FdKeeper) -> None:
    daemon, d_end, shim = relayed(fdk)
    with shim, d_end:
        daemon.report("fin", "C:1")
        d_end.sendall(b"last answer")
        d_end.shutdown(socket.SHUT_WR)  # the VM's FIN
        assert recv_exactly(shim, 100) == b"last answer"  # then EOF: the shim's read side ended
        shim.sendall(b"the shim still talks")
        assert recv_exactly(d_end, 20) == b"the shim still talks"
        daemon.close()
    conn = restart(fdk)
    with conn.sock:
        assert conn.session is not None and conn.session["fin_received"] is True
        assert conn.session["received"] == 11 and conn.session["sent"] == 20


def test_reclaim_gives_the_shim_connection_back_with_its_state(fdk: FdKeeper) -> None:
    daemon, d_end, shim = relayed(fdk, sent=5, acked=2, received=7, prefix=b"abc", outbox=b"first ")
    with shim:
        assert recv_exactly(shim, 6) == b"first "  # the outbox a previous keeper left goes first
        shim.sendall(b"0123456789")
        assert recv_exactly(d_end, 10) == b"0123456789"
        d_end.sendall(b"reply")
        d_end.close()  # the daemon closes its end, then asks
        conn = daemon.reclaim("C:1", acked=10)
        daemon.close()
        assert conn is not None
        with conn.sock:
            assert conn.session is not None
            assert (conn.session["sent"], conn.session["acked"], conn.session["received"]) == (15, 10, 12)
            assert bytes(conn.prefix) == b"56789"
            assert recv_exactly(shim, 5) == b"reply"
            conn.sock.sendall(b"direct")  # the real connection to the shim
            assert recv_exactly(shim, 6) == b"direct"
        assert fdk.relays.get("C:1") is None


def test_drop_flushes_what_the_vm_sent_then_closes_the_shim(fdk: FdKeeper) -> None:
    daemon, d_end, shim = relayed(fdk)
    with shim:
        d_end.sendall(b"last words")
        d_end.close()
        daemon.drop("C:1")
        daemon.close()
        assert recv_exactly(shim, 100) == b"last words"  # and then EOF
        eventually_sync(lambda: fdk.relays.get("C:1") is None, "the relay to close")


def test_a_shim_that_does_not_read_does_not_grow_the_keeper(fdk: FdKeeper) -> None:
    daemon, d_end, shim = relayed(fdk)
    chunk = os.urandom(READ_SIZE)
    written = bytearray()
    d_end.setblocking(False)

    def fill() -> bool:
        """Write until the pair is full; True once the keeper stopped taking more."""
        before = len(written)
        while True:
            try:
                n = d_end.send(chunk)
            except BlockingIOError:
                break
            written.extend(chunk[:n])
        relay = fdk.relays.get("C:1")
        return relay is not None and len(relay.outbox) >= OUTBOX_LIMIT and len(written) == before

    with shim, d_end:
        eventually_sync(fill, "the keeper to stop reading the pair")
        relay = fdk.relays.get("C:1")
        assert relay is not None and len(relay.outbox) < OUTBOX_LIMIT + READ_SIZE
        assert bytes(recv_exactly(shim, len(written))) == bytes(written)  # in order, nothing lost
        daemon.close()


def test_malformed_messages_drop_that_client_only(fdk: FdKeeper) -> None:
    daemon, d_end, shim = relayed(fdk)
    with shim, d_end:
        for bad in (
            {"op": "relay", "key": "C:2", "session": {"id": "zz"}},
            {"op": "acked", "key": "C:1", "acked": 10**9},
            {"op": "acked", "key": "C:1", "acked": "many"},
            {"op": "relay", "key": "C:3", "session": session(), "prefix_len": -1},
        ):
            a, b = socket.socketpair()
            with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as other, a, b:
                other.connect(os.fspath(fdk.path))
                send_message(other, bad, [a.fileno(), b.fileno()] if bad["op"] == "relay" else [])
                other.settimeout(10)
                assert other.recv(10) == b""  # dropped
        # the relay registered before is untouched
        shim.sendall(b"ping")
        assert recv_exactly(d_end, 4) == b"ping"
        assert sorted(i["key"] for i in daemon.listing()) == ["C:1"]
        daemon.close()


def test_a_drop_gives_up_on_a_shim_that_never_reads(fdk: FdKeeper, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fdkeeper_relay, "FLUSH_WAIT", 0.2)
    daemon, d_end, shim = relayed(fdk)
    with shim:
        d_end.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:  # the shim's socket, the outbox and the pair all full
                d_end.send(b"x" * READ_SIZE)
        d_end.close()
        daemon.drop("C:1")
        daemon.close()
        eventually_sync(lambda: fdk.relays.get("C:1") is None, "the keeper to give up")
        shim.settimeout(10)
        while shim.recv(1 << 20):  # what reached the shim's socket, then the close
            pass


def test_a_plain_relay_comes_back_as_a_new_session(fdk: FdKeeper) -> None:
    daemon, d_end, shim = relayed(fdk, sent=3, acked=0, received=5, prefix=b"abc")
    with shim:
        daemon.report("plain", "C:1")  # the forwarder does not resume: no replay buffer
        shim.sendall(b"request")
        assert recv_exactly(d_end, 7) == b"request"
        daemon.close()
        d_end.close()
        conn = restart(fdk)
        with conn.sock:
            assert conn.session is not None
            assert conn.session["id"] != "ab" * 16 and conn.session["opened"] is False
            assert (conn.session["sent"], conn.session["acked"], conn.session["received"]) == (0, 0, 0)
            assert bytes(conn.prefix) == b""
            shim.sendall(b"next")
            assert recv_exactly(conn.sock, 4) == b"next"


def test_a_daemon_that_lost_its_keeper_channel_is_cut_off_at_the_next_hello(
    fdk: FdKeeper, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fdkeeper, "DRAIN_WAIT", 0.2)
    daemon, d_end, shim = relayed(fdk)
    with shim, d_end:
        daemon.close()  # its channel to the keeper is gone, its end of the pair is not
        d_end.sendall(b"late")
        assert recv_exactly(shim, 4) == b"late"  # still relayed meanwhile
        conn = restart(fdk)  # waits (bounded) for an EOF that never comes, then cuts the old pair
        with conn.sock:
            assert conn.session is not None and conn.session["received"] == 4
            d_end.settimeout(10)
            assert d_end.recv(10) == b""  # the old daemon's end is cut off
            conn.sock.sendall(b"new")
            assert recv_exactly(shim, 3) == b"new"
