"""``caa-fd-keeper``: holds the shim-facing sockets while cloud-api-adaptor is down.

Runs as a second container in the DaemonSet pod (or next to the daemon under
systemd).  The daemon registers every listening socket (hypervisor, agent
sockets) and every accepted shim connection with it as a duplicate descriptor,
and drops them when it closes them for good.  When the daemon dies (``kill
-9``, an OOM kill, a container restart) the keeper's duplicates keep those
sockets open: the socket files stay bound, the shim sees no EOF, and what it
writes meanwhile waits in the kernel's socket buffers.  The next daemon
connects, says hello, and gets every descriptor back.

Deliberately tiny and dependency-free: a single thread, blocking-free
``selectors`` loop, no asyncio, no reading from the held sockets ever (so it
never takes a byte from the shim).  It must not crash: a malformed message
only closes that client.  If it dies itself, the daemon logs it and carries on
(its pods then survive hand-overs but not a crash).

A resumable shim connection is *relayed* rather than held (``fdkeeper_relay``):
the keeper does its I/O, so that the session's counters survive a crash exactly.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import logging
import os
import select
import selectors
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloud_api_adaptor.fdkeeper_relay import DRAIN_WAIT, Relay, RelayTable
from cloud_api_adaptor.transport.custody import prefix_chunks
from cloud_api_adaptor.transport.fdpass import (
    MAX_FDS,
    FdPassError,
    bind_unix_listener,
    close_fds,
    receive_message,
    same_user,
    send_message,
)

logger = logging.getLogger("caa-fd-keeper")

DEFAULT_SOCKET = Path("/run/peerpod/fd-keeper.sock")
#: the most bytes a relay registration may carry (un-acked bytes and the outbox, each)
MAX_CARRIED = 64 << 20


@dataclass
class Held:
    meta: dict[str, Any]
    fd: int
    #: bytes the daemon read from the connection and never relayed (or a session's un-acked bytes)
    prefix: bytearray = field(default_factory=bytearray)


class FdKeeper:
    """The keeper's state and loop; ``serve`` runs until ``stop`` is called (or a signal)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.held: dict[str, Held] = {}
        self._selector = selectors.DefaultSelector()
        self._listener = bind_unix_listener(path, 0o600, socket.SOCK_SEQPACKET)
        self._listener.setblocking(False)
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._running = True
        self.relays = RelayTable(self._selector)

    def stop(self) -> None:
        """Ask the loop to end (safe from a signal handler or another thread)."""
        self._running = False
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def serve(self) -> None:
        logger.info("caa-fd-keeper listening on %s", self.path)
        try:
            while self._running:
                for key, mask in self._selector.select(self.relays.tick()):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if sock.fileno() < 0:
                        continue  # closed by an earlier event of this batch
                    if isinstance(key.data, tuple):
                        relay, which = key.data
                        assert isinstance(relay, Relay)
                        if self.relays.get(relay.key) is relay and sock in (relay.shim, relay.pair):
                            self.relays.event(relay, which, mask, lambda: self._drain_others(None))
                    elif sock is self._listener:
                        self._accept()
                    elif sock is self._wake_r:
                        self._wake_r.recv(64)
                    else:
                        self._serve_one(sock)
        finally:
            self.close()

    def close(self) -> None:
        self.relays.close()
        for sock in [k.fileobj for k in self._selector.get_map().values()]:
            if isinstance(sock, socket.socket):
                sock.close()
        self._selector.close()
        self._wake_w.close()
        close_fds([h.fd for h in self.held.values()])
        self.held.clear()
        try:
            if os.stat(self.path).st_ino:
                self.path.unlink()
        except OSError:
            pass

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        if not same_user(client):
            logger.warning("refusing a client of another user")
            client.close()
            return
        client.setblocking(True)
        client.settimeout(5.0)  # a client that stops reading must not wedge the keeper
        self._selector.register(client, selectors.EVENT_READ)

    def _serve_one(self, client: socket.socket) -> None:
        try:
            message, fds = receive_message(client)
        except (FdPassError, OSError) as exc:
            if not isinstance(exc, FdPassError) or "closed" not in str(exc):
                logger.warning("dropping an fd-keeper client: %s", exc)
            self._drop_client(client)
            return
        try:
            self._handle(client, message, fds)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("dropping an fd-keeper client after %s: %s", message.get("op"), exc)
            close_fds(fds)
            self._drop_client(client)

    def _drop_client(self, client: socket.socket) -> None:
        """A daemon's channel closed (it went away, or sent garbage): its relays wait for the next one."""
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(client)
        client.close()
        self.relays.owner_gone(client)

    def _drain_others(self, client: socket.socket | None) -> None:
        """Apply what other clients already sent before answering a hello.

        A daemon killed a moment ago may have left keeps and drops queued in
        its connection; the daemon saying hello now must get the state after them.
        """
        others = [
            k.fileobj
            for k in self._selector.get_map().values()
            if isinstance(k.fileobj, socket.socket)
            and k.data is None
            and k.fileobj not in (client, self._listener, self._wake_r)
        ]
        for other in others:
            while other.fileno() >= 0 and select.select([other], [], [], 0)[0]:
                self._serve_one(other)

    def _handle(self, client: socket.socket, message: dict[str, Any], fds: list[int]) -> None:
        op = message.get("op")
        if op == "keep" and len(fds) == 1:
            key = str(message.get("key", ""))
            if not key:
                raise ValueError("keep without a key")
            meta = {k: v for k, v in message.items() if k not in {"op", "prefix"}}
            prefix = bytearray(base64.b64decode(str(message.get("prefix", ""))))
            old = self.held.pop(key, None)
            if old is not None:
                close_fds([old.fd])
            self.held[key] = Held(meta, fds[0], prefix)
            logger.debug("keeping %s (%d held)", key, len(self.held))
        elif op == "drop":
            close_fds(fds)
            held = self.held.pop(str(message.get("key", "")), None)
            if held is not None:
                close_fds([held.fd])
                logger.debug("dropped %s (%d held)", message.get("key"), len(self.held))
            relay = self.relays.get(str(message.get("key", "")))
            if relay is not None:  # what the VM sent goes to the shim first, then it sees the close
                relay.start_drop()
                self.relays.update(relay)
        elif op == "prefix":
            close_fds(fds)
            held = self.held.get(str(message.get("key", "")))
            if held is not None:
                held.prefix += base64.b64decode(str(message.get("data", "")))
        elif op == "hello":
            close_fds(fds)
            self._drain_others(client)
            self._hand_back(client, message.get("pid"))
        elif op == "relay" and len(fds) == 2:
            self._relay(client, message, fds)
        elif op in ("acked", "opened", "fin", "plain"):
            close_fds(fds)
            relay = self.relays.get(str(message.get("key", "")))
            if relay is None:
                return
            if op == "acked":
                relay.on_acked(int(message["acked"]))
            elif op == "opened":
                relay.opened = True
            elif op == "fin":
                relay.fin_announced = True
            else:
                relay.on_plain()
            self.relays.update(relay)
        elif op == "reclaim":
            close_fds(fds)
            self._reclaim(client, str(message.get("key", "")), message.get("acked"))
        elif op == "list":
            close_fds(fds)
            items = [h.meta for h in self.held.values()]
            items += [{"kind": "conn", "key": r.key, "listener": r.listener} for r in self.relays]
            send_message(client, {"op": "list", "items": items})
        else:
            raise ValueError(f"unknown or malformed request {op!r}")

    def _relay(self, client: socket.socket, message: dict[str, Any], fds: list[int]) -> None:
        """Take over a shim connection's I/O: ``fds`` are the shim's socket and our end of a pair."""
        key = str(message.get("key") or "")
        session = message.get("session")
        if not key or not isinstance(session, dict):
            raise ValueError("relay without a key or a session")
        prefix = self._collect(client, key, "prefix", int(message.get("prefix_len", 0)))
        outbox = self._collect(client, key, "outbox", int(message.get("outbox_len", 0)))
        shim, pair = socket.socket(fileno=fds[0]), socket.socket(fileno=fds[1])
        try:
            relay = Relay(key, str(message.get("listener", "")), shim, pair, session, prefix, client)
        except (KeyError, ValueError, TypeError):
            shim.detach()  # the caller closes the descriptors
            pair.detach()
            raise
        relay.outbox += outbox
        old = self.held.pop(key, None)
        if old is not None:
            close_fds([old.fd])
        self.relays.add(relay)
        relay.flush()
        self.relays.update(relay)
        logger.debug("relaying %s (%d relayed)", key, len(self.relays.relays))

    def _collect(self, client: socket.socket, key: str, kind: str, size: int) -> bytes:
        """The ``size`` bytes a registration carries in ``kind`` chunks sent right after it."""
        if not 0 <= size <= MAX_CARRIED:
            raise ValueError(f"{kind} of {size} bytes")
        data = bytearray()
        while len(data) < size:
            message, fds = receive_message(client)
            close_fds(fds)
            if message.get("op") != kind or message.get("key") != key:
                raise ValueError(f"expected {kind} chunks for {key}, got {message.get('op')!r}")
            data += base64.b64decode(str(message.get("data", "")))
        if len(data) != size:
            raise ValueError(f"{kind} of {len(data)} bytes, {size} announced")
        return bytes(data)

    def _reclaim(self, client: socket.socket, key: str, acked: Any) -> None:
        """Give a relayed shim connection back for good (a hand-over to another node's daemon)."""
        relay = self.relays.get(key)
        if relay is None:
            send_message(client, {"op": "reclaimed", "key": key, "missing": True})
            return
        if acked is not None:
            relay.on_acked(int(acked))
        relay.drain_pair()  # the daemon closed its end first: what it wrote is all here now
        self.relays.forget(relay)
        prefix, outbox = relay.unacked(), bytes(relay.outbox)
        reply = {
            "op": "reclaimed",
            "kind": "conn",
            "key": key,
            "listener": relay.listener,
            "session": None if relay.plain else relay.session(),
            "prefix_len": len(prefix),
            "outbox_len": len(outbox),
        }
        try:
            send_message(client, reply, [relay.shim.fileno()])
            for chunk in prefix_chunks(key, prefix):
                send_message(client, chunk)
            for chunk in prefix_chunks(key, outbox, "outbox"):
                send_message(client, chunk)
        finally:
            relay.close()
        logger.info("relay %s reclaimed by its daemon", key)

    def _hand_back(self, client: socket.socket, pid: Any) -> None:
        """Hello: everything held, and each relay whose daemon is gone on a new pair with its state."""
        entries: list[tuple[dict[str, Any], int, bytes]] = [
            (h.meta, h.fd, bytes(h.prefix)) for h in self.held.values()
        ]
        theirs: list[socket.socket] = []
        deadline = time.monotonic() + DRAIN_WAIT  # for all of them: a dead daemon's ends are at EOF
        for relay in self.relays:
            if relay.owner is not None or relay.drop_deadline is not None:
                continue  # its daemon is alive (next to a hand-over) or it is closing
            relay.drain_pair(max(0.0, deadline - time.monotonic()))
            end = relay.renew()
            theirs.append(end)
            relay.owner = client
            self.relays.update(relay)
            meta = {"kind": "conn", "key": relay.key, "listener": relay.listener, "relayed": True}
            entries.append(({**meta, "session": relay.session()}, end.fileno(), relay.unacked()))
        logger.info("a daemon (pid %s) connected: handing back %d socket(s)", pid, len(entries))
        try:
            for start in range(0, len(entries), MAX_FDS):
                batch = entries[start : start + MAX_FDS]
                send_message(client, {"op": "entries", "items": [e[0] for e in batch]}, [e[1] for e in batch])
            for meta, _, prefix in entries:
                for chunk in prefix_chunks(str(meta.get("key")), prefix):
                    send_message(client, chunk)
            send_message(client, {"op": "end"})
        finally:
            for end in theirs:
                end.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="caa-fd-keeper",
        description="Hold cloud-api-adaptor's shim-facing sockets across daemon crashes and restarts.",
    )
    parser.add_argument(
        "--socket",
        type=Path,
        default=Path(os.environ.get("FD_KEEPER_SOCKET") or DEFAULT_SOCKET),
        help="unix socket the daemon talks to (env FD_KEEPER_SOCKET; default %(default)s)",
    )
    parser.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "info"))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    keeper = FdKeeper(args.socket)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _s, _f: keeper.stop())
    keeper.serve()
    logger.info("caa-fd-keeper stopped")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
