"""Custody of the sockets the shim holds the other end of: they must outlive any one daemon.

The shim dials the hypervisor socket for every call and keeps one connection to
its sandbox's agent socket for the pod's whole life; any EOF there is pod death.
So the listening sockets and the accepted shim connections are never closed by
a daemon that is going away: they are either passed to the next daemon (the
hand-over) or kept by a separate process, the fd-keeper, which gives them back
to the next daemon after a crash.  Both travel as descriptors (``SCM_RIGHTS``):
the kernel keeps the socket and the bytes queued in it meanwhile.

``SocketCustody`` is the daemon's register of them:
- what it *inherited* at start (from a hand-over or the keeper), taken by the
  agent proxies and the hypervisor server as they start;
- what it *keeps*: every listener it serves and every shim connection it
  accepted is registered with the keeper (a duplicate descriptor), and dropped
  from it when the daemon closes it for good, so that the shim sees the close.
"""

from __future__ import annotations

import base64
import logging
import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cloud_api_adaptor.transport.resume import SessionState

logger = logging.getLogger(__name__)

LISTENER = "listener"
CONNECTION = "conn"
KEEPER_TIMEOUT = 5.0
PREFIX_CHUNK = 24 << 10


@dataclass
class InheritedConnection:
    """An accepted shim connection handed to this daemon."""

    key: str
    listener: str
    sock: socket.socket
    #: bytes read from the shim not known to have reached the VM: a plain relay sends them first;
    #: with a resumable ``session`` they are its un-acknowledged bytes
    prefix: bytearray = field(default_factory=bytearray)
    #: a resumable agent session's state (``session_meta``), to be resumed on a new link
    session: dict[str, Any] | None = None
    #: the VM's bytes still to be written to the shim, before anything else (from a keeper's relay)
    outbox: bytearray = field(default_factory=bytearray)
    #: ``sock`` is the daemon's end of a pair the fd-keeper relays (it holds the shim's connection)
    relayed: bool = False


@dataclass
class Inventory:
    """Sockets passed to a starting daemon, by listener path."""

    listeners: dict[str, socket.socket] = field(default_factory=dict)
    connections: dict[str, list[InheritedConnection]] = field(default_factory=dict)

    def add(self, meta: dict[str, Any], fd: int) -> None:
        """Adopt one descriptor described by ``meta`` (a later copy of the same key wins)."""
        sock = socket.socket(fileno=fd)
        kind, path = meta.get("kind"), str(meta.get("listener", ""))
        if kind == LISTENER and path:
            old = self.listeners.pop(path, None)
            if old is not None:
                old.close()
            self.listeners[path] = sock
        elif kind == CONNECTION and path:
            key = str(meta.get("key", ""))
            conns = self.connections.setdefault(path, [])
            for existing in [c for c in conns if c.key == key]:
                conns.remove(existing)
                existing.sock.close()
            prefix = bytearray(base64.b64decode(str(meta.get("prefix", ""))))
            outbox = bytearray(base64.b64decode(str(meta.get("outbox", ""))))
            session = meta.get("session")
            conns.append(
                InheritedConnection(
                    key,
                    path,
                    sock,
                    prefix,
                    session if isinstance(session, dict) else None,
                    outbox,
                    bool(meta.get("relayed", False)),
                )
            )
        else:
            logger.warning("ignoring a passed descriptor with unknown metadata %r", meta)
            sock.close()

    def append_prefix(self, key: str, data: bytes, op: str = "prefix") -> None:
        for conns in self.connections.values():
            for conn in conns:
                if conn.key == key:
                    (conn.outbox if op == "outbox" else conn.prefix).extend(data)

    def merge(self, other: Inventory) -> None:
        """Add ``other``'s sockets; ours win for the same listener or connection key."""
        for path, sock in other.listeners.items():
            if path in self.listeners:
                sock.close()
            else:
                self.listeners[path] = sock
        for path, conns in other.connections.items():
            mine = self.connections.setdefault(path, [])
            keys = {c.key for c in mine}
            for conn in conns:
                if conn.key in keys:
                    conn.sock.close()
                else:
                    mine.append(conn)
        other.listeners.clear()
        other.connections.clear()

    def close(self) -> None:
        for sock in self.listeners.values():
            sock.close()
        for conns in self.connections.values():
            for conn in conns:
                conn.sock.close()
        self.listeners.clear()
        self.connections.clear()


def listener_meta(path: str) -> dict[str, Any]:
    return {"kind": LISTENER, "key": f"L:{path}", "listener": path}


def connection_meta(
    key: str,
    listener: str,
    prefix: bytes = b"",
    session: dict[str, Any] | None = None,
    outbox: bytes = b"",
) -> dict[str, Any]:
    meta: dict[str, Any] = {"kind": CONNECTION, "key": key, "listener": listener}
    if prefix:
        meta["prefix"] = base64.b64encode(prefix).decode()
    if outbox:
        meta["outbox"] = base64.b64encode(outbox).decode()
    if session is not None:
        meta["session"] = session
    return meta


def session_meta(state: SessionState, opened: bool = True) -> dict[str, Any]:
    """A resumable session's state as JSON (its un-acknowledged bytes travel as the prefix).

    ``opened``: the forwarder was told about the session (a hello went out), so
    the next owner resumes it rather than opening it.
    """
    return {
        "id": state.session_id.hex(),
        "opened": opened,
        "sent": state.sent,
        "acked": state.acked,
        "received": state.received,
        "fin_sent": state.fin_sent,
        "fin_received": state.fin_received,
        "replay_limit": state.replay_limit,
    }


def session_state(meta: dict[str, Any], unacked: bytes) -> SessionState:
    return SessionState(
        session_id=bytes.fromhex(str(meta["id"])),
        sent=int(meta["sent"]),
        acked=int(meta["acked"]),
        received=int(meta["received"]),
        unacked=unacked,
        fin_sent=bool(meta["fin_sent"]),
        fin_received=bool(meta["fin_received"]),
        replay_limit=int(meta["replay_limit"]),
    )


def prefix_chunks(key: str, prefix: bytes, op: str = "prefix") -> Iterator[dict[str, Any]]:
    """Messages carrying a connection's prefix (or ``op="outbox"``: its outbox) in pieces."""
    for start in range(0, len(prefix), PREFIX_CHUNK):
        chunk = prefix[start : start + PREFIX_CHUNK]
        yield {"op": op, "key": key, "data": base64.b64encode(chunk).decode()}


class KeeperChannel(Protocol):
    """What the custody needs of its channel to the fd-keeper (``keeper_link.KeeperLink``)."""

    path: Path

    def keep(self, meta: dict[str, Any], fd: int, prefix: bytes = b"") -> None: ...
    def drop(self, key: str) -> None: ...
    def relay(
        self, key: str, listener: str, shim: int, session: dict[str, Any], prefix: bytes, outbox: bytes
    ) -> socket.socket: ...
    def report(self, op: str, key: str, **fields: Any) -> None: ...
    def reclaim(self, key: str, acked: int) -> InheritedConnection | None: ...
    def close(self) -> None: ...


class SocketCustody:
    """What a daemon inherited and what it keeps with the fd-keeper."""

    def __init__(self, inventory: Inventory | None = None, keeper: KeeperChannel | None = None) -> None:
        self.inventory = inventory or Inventory()
        self._keeper = keeper
        #: our own duplicate of every listener we serve, for a hand-over
        self._listeners: dict[str, socket.socket] = {}

    @property
    def retains(self) -> bool:
        """A keeper holds our sockets: a daemon going away must leave them be (no unlink, no EOF)."""
        return self._keeper is not None

    # -- inherited ----------------------------------------------------------------

    def take_listener(self, path: Path) -> socket.socket | None:
        """The listening socket for ``path`` passed to us, if its file still names it."""
        sock = self.inventory.listeners.pop(os.fspath(path), None)
        if sock is None:
            return None
        try:
            bound = sock.getsockname()
            same = bound == os.fspath(path) and os.stat(path).st_ino is not None
        except OSError:
            same = False
        if not same:
            logger.warning("the passed listener for %s no longer serves that path; binding anew", path)
            sock.close()
            return None
        return sock

    def take_connections(self, path: Path) -> list[InheritedConnection]:
        return self.inventory.connections.pop(os.fspath(path), [])

    def discard_unclaimed(self) -> None:
        """Close what no sandbox took (it was stopped meanwhile) and drop it from the keeper."""
        for path, sock in list(self.inventory.listeners.items()):
            logger.info("closing the passed listener %s: no sandbox serves it", path)
            self._drop(listener_meta(path)["key"])
            sock.close()
        for conns in self.inventory.connections.values():
            for conn in conns:
                self._drop(conn.key)
                conn.sock.close()
        self.inventory.listeners.clear()
        self.inventory.connections.clear()

    # -- kept ----------------------------------------------------------------------

    def keep_listener(self, path: Path, sock: socket.socket) -> None:
        key = os.fspath(path)
        old = self._listeners.pop(key, None)
        if old is not None:
            old.close()
        self._listeners[key] = sock.dup()
        self._keep(listener_meta(key), sock.fileno())

    def release_listener(self, path: Path) -> None:
        """The listener is closed for good (its sandbox stopped)."""
        key = os.fspath(path)
        own = self._listeners.pop(key, None)
        if own is not None:
            own.close()
        self._drop(listener_meta(key)["key"])

    def keep_connection(
        self,
        listener: Path,
        fd: int,
        key: str | None = None,
        prefix: bytes = b"",
        session: dict[str, Any] | None = None,
    ) -> str:
        """Register a shim connection; again with ``session`` when leaving it to the next daemon."""
        key = key or f"C:{uuid.uuid4().hex}"
        self._keep(connection_meta(key, os.fspath(listener), session=session), fd, prefix)
        return key

    def leave(self, conn: InheritedConnection) -> None:
        """Going away (SIGTERM) with a keeper: leave the connection's state with it for the next daemon."""
        self.keep_connection(
            Path(conn.listener), conn.sock.fileno(), conn.key, bytes(conn.prefix), conn.session
        )

    def release_connection(self, key: str) -> None:
        self._drop(key)

    # -- relayed by the keeper ----------------------------------------------------------

    @property
    def relays(self) -> bool:
        """A keeper is connected: resumable shim connections go through it (``relay_connection``)."""
        return self._keeper is not None

    def relay_connection(
        self,
        listener: Path,
        sock: socket.socket,
        key: str,
        session: dict[str, Any],
        prefix: bytes = b"",
        outbox: bytes = b"",
    ) -> socket.socket | None:
        """Let the keeper relay ``sock``; our end of its pair, or None (no keeper: serve ``sock``)."""
        if self._keeper is None:
            return None
        try:
            return self._keeper.relay(key, os.fspath(listener), sock.fileno(), session, prefix, outbox)
        except (OSError, ValueError) as exc:
            self._lost_keeper(OSError(str(exc)))
            return None

    def report(self, op: str, key: str, **fields: Any) -> None:
        if self._keeper is None:
            return
        try:
            self._keeper.report(op, key, **fields)
        except OSError as exc:
            self._lost_keeper(exc)

    def reclaim(self, key: str, acked: int) -> InheritedConnection | None:
        """Blocking (run it in a thread): the shim's connection back from the keeper, see ``KeeperLink``."""
        keeper = self._keeper
        if keeper is None:
            return None
        try:
            return keeper.reclaim(key, acked)
        except OSError as exc:
            self._lost_keeper(exc)
            return None

    def listener_sockets(self) -> dict[str, socket.socket]:
        """Our duplicates of the listeners we serve (for a hand-over)."""
        return dict(self._listeners)

    def forget_keeper(self) -> None:
        """After a hand-over: the next daemon keeps the sockets with its own keeper."""
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            keeper.close()

    def close(self) -> None:
        for sock in self._listeners.values():
            sock.close()
        self._listeners.clear()
        self.inventory.close()
        self.forget_keeper()

    def _keep(self, meta: dict[str, Any], fd: int, prefix: bytes = b"") -> None:
        if self._keeper is None:
            return
        try:
            self._keeper.keep(meta, fd, prefix)
        except OSError as exc:
            self._lost_keeper(exc)

    def _drop(self, key: str) -> None:
        if self._keeper is None:
            return
        try:
            self._keeper.drop(key)
        except OSError as exc:
            self._lost_keeper(exc)

    def _lost_keeper(self, exc: OSError) -> None:
        logger.error(
            "the fd-keeper at %s is gone (%s): a crash of this daemon would now end its pods",
            self._keeper.path if self._keeper else "?",
            exc,
        )
        self.forget_keeper()
