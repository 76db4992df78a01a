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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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

    def stop(self) -> None:
        """Ask the loop to end (safe from a signal handler or another thread)."""
        self._running = False
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def serve(self) -> None:
        logger.info("caa-fd-keeper listening on %s", self.path)
        try:
            while self._running:
                for key, _ in self._selector.select():
                    if key.fileobj is self._listener:
                        self._accept()
                    elif key.fileobj is self._wake_r:
                        self._wake_r.recv(64)
                    else:
                        client = key.fileobj
                        assert isinstance(client, socket.socket)
                        self._serve_one(client)
        finally:
            self.close()

    def close(self) -> None:
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
            self._selector.unregister(client)
            client.close()
            return
        try:
            self._handle(client, message, fds)
        except (OSError, ValueError) as exc:
            logger.warning("dropping an fd-keeper client after %s: %s", message.get("op"), exc)
            close_fds(fds)
            self._selector.unregister(client)
            client.close()

    def _drain_others(self, client: socket.socket) -> None:
        """Apply what other clients already sent before answering a hello.

        A daemon killed a moment ago may have left keeps and drops queued in
        its connection; the daemon saying hello now must get the state after them.
        """
        others = [
            k.fileobj
            for k in self._selector.get_map().values()
            if isinstance(k.fileobj, socket.socket)
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
        elif op == "prefix":
            close_fds(fds)
            held = self.held.get(str(message.get("key", "")))
            if held is not None:
                held.prefix += base64.b64decode(str(message.get("data", "")))
        elif op == "hello":
            close_fds(fds)
            self._drain_others(client)
            items = list(self.held.values())
            logger.info(
                "a daemon (pid %s) connected: handing back %d socket(s)", message.get("pid"), len(items)
            )
            for start in range(0, len(items), MAX_FDS):
                batch = items[start : start + MAX_FDS]
                send_message(
                    client, {"op": "entries", "items": [h.meta for h in batch]}, [h.fd for h in batch]
                )
            for held in items:
                for chunk in prefix_chunks(str(held.meta.get("key")), bytes(held.prefix)):
                    send_message(client, chunk)
            send_message(client, {"op": "end"})
        else:
            raise ValueError(f"unknown or malformed request {op!r}")


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
