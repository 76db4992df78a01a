"""The daemon's channel to the fd-keeper (``caa-fd-keeper``): blocking, small local messages.

Split from ``custody`` (what the daemon holds): how it talks to the keeper.
``KeeperLink`` registers sockets (``keep``), hands over shim connections for the
keeper to relay (``relay``), reports a relayed session's progress (``report``),
takes a connection back (``reclaim``) and fetches everything at start
(``fetch``, via ``open_keeper``).  See docs/survival.md.
"""

from __future__ import annotations

import base64
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from cloud_api_adaptor.transport.custody import (
    KEEPER_TIMEOUT,
    InheritedConnection,
    Inventory,
    prefix_chunks,
)
from cloud_api_adaptor.transport.fdpass import (
    FdPassError,
    close_fds,
    receive_message,
    send_message,
    seqpacket_connect,
)

logger = logging.getLogger("cloud_api_adaptor.transport.custody")


class KeeperLink:
    """The daemon's channel to the fd-keeper (blocking, small local messages)."""

    def __init__(self, path: Path, timeout: float = KEEPER_TIMEOUT) -> None:
        self.path = path
        self._sock = seqpacket_connect(path, timeout)

    def fetch(self) -> Inventory:
        """Everything the keeper holds (what the previous daemon left there)."""
        send_message(self._sock, {"op": "hello", "pid": os.getpid()})
        inventory = Inventory()
        while True:
            message, fds = receive_message(self._sock)
            op = message.get("op")
            if op == "end":
                close_fds(fds)
                return inventory
            if op in ("prefix", "outbox"):
                close_fds(fds)
                data = base64.b64decode(str(message.get("data")))
                inventory.append_prefix(str(message.get("key")), data, op)
                continue
            items = message.get("items", [])
            if op != "entries" or not isinstance(items, list) or len(items) != len(fds):
                close_fds(fds)
                raise FdPassError(f"unexpected message from the fd-keeper: {op!r}")
            for meta, fd in zip(items, fds, strict=True):
                inventory.add(meta, fd)

    def keep(self, meta: dict[str, Any], fd: int, prefix: bytes = b"") -> None:
        """Hold ``fd`` under ``meta["key"]`` (replacing an earlier one), with bytes to hand back with it."""
        send_message(self._sock, {"op": "keep", **meta}, [fd])
        for chunk in prefix_chunks(str(meta["key"]), prefix):
            send_message(self._sock, chunk)

    def drop(self, key: str) -> None:
        send_message(self._sock, {"op": "drop", "key": key})

    def relay(
        self, key: str, listener: str, shim: int, session: dict[str, Any], prefix: bytes, outbox: bytes
    ) -> socket.socket:
        """Hand the keeper the shim's connection to relay; returns our end of the pair it relays to.

        One-way: no answer is awaited (the keeper reads the chunks right after the registration).
        """
        ours, theirs = socket.socketpair()
        try:
            message = {
                "op": "relay",
                "key": key,
                "listener": listener,
                "session": session,
                "prefix_len": len(prefix),
                "outbox_len": len(outbox),
            }
            send_message(self._sock, message, [shim, theirs.fileno()])
            for chunk in prefix_chunks(key, prefix):
                send_message(self._sock, chunk)
            for chunk in prefix_chunks(key, outbox, "outbox"):
                send_message(self._sock, chunk)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return ours

    def report(self, op: str, key: str, **fields: Any) -> None:
        """One-way news about a relayed connection: ``acked``, ``opened``, ``fin``, ``plain``."""
        send_message(self._sock, {"op": op, "key": key, **fields})

    def reclaim(self, key: str, acked: int) -> InheritedConnection | None:
        """Take a relayed shim connection back for good, with its exact state (blocking: a round trip).

        Close our end of its pair first: the keeper drains it to EOF before answering.
        """
        send_message(self._sock, {"op": "reclaim", "key": key, "acked": acked})
        message, fds = receive_message(self._sock)
        if message.get("op") != "reclaimed" or message.get("key") != key:
            close_fds(fds)
            raise FdPassError(f"unexpected answer from the fd-keeper: {message.get('op')!r}")
        if message.get("missing") or len(fds) != 1:
            close_fds(fds)
            return None
        session = message.get("session")
        conn = InheritedConnection(
            key,
            str(message.get("listener", "")),
            socket.socket(fileno=fds[0]),
            session=session if isinstance(session, dict) else None,
        )
        try:
            for op, size in (("prefix", int(message["prefix_len"])), ("outbox", int(message["outbox_len"]))):
                data = conn.outbox if op == "outbox" else conn.prefix
                while len(data) < size:
                    chunk, extra = receive_message(self._sock)
                    close_fds(extra)
                    if chunk.get("op") != op:
                        raise FdPassError(f"unexpected {chunk.get('op')!r} from the fd-keeper")
                    data += base64.b64decode(str(chunk.get("data")))
        except BaseException:
            conn.sock.close()
            raise
        return conn

    def listing(self) -> list[dict[str, Any]]:
        """What the keeper holds and relays, without taking anything (for tests and diagnostics)."""
        send_message(self._sock, {"op": "list"})
        message, fds = receive_message(self._sock)
        close_fds(fds)
        items = message.get("items")
        return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []

    def close(self) -> None:
        self._sock.close()


def open_keeper(path: Path | None, wait: float = 10.0) -> tuple[KeeperLink | None, Inventory]:
    """Connect to the keeper (if configured, waiting up to ``wait`` for it to listen); fetch what it holds.

    Blocking: run it in a thread.  Without a keeper the daemon still runs; its
    pods survive hand-overs but not its crash (logged as an error).
    """
    if path is None:
        return None, Inventory()
    deadline = time.monotonic() + wait
    while True:
        try:
            keeper = KeeperLink(path)
            break
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            if time.monotonic() < deadline:  # the keeper container is starting next to us
                time.sleep(0.1)
                continue
            logger.error("no fd-keeper at %s (%s): pods will not survive a crash of this daemon", path, exc)
            return None, Inventory()
        except OSError as exc:
            logger.error("no fd-keeper at %s (%s): pods will not survive a crash of this daemon", path, exc)
            return None, Inventory()
    try:
        inventory = keeper.fetch()
    except (OSError, FdPassError) as exc:
        keeper.close()
        logger.error(
            "the fd-keeper at %s failed (%s): pods will not survive a crash of this daemon", path, exc
        )
        return None, Inventory()
    held = len(inventory.listeners) + sum(len(c) for c in inventory.connections.values())
    logger.info("fd-keeper at %s: connected, it held %d socket(s)", path, held)
    return keeper, inventory
