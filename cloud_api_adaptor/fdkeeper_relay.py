"""The fd-keeper relays a resumable shim connection, so that a crash of the daemon loses no byte.

Why the keeper does the shim's I/O (docs/survival.md, "The keeper relays"): after
a ``kill -9`` two numbers must be exact, and only the process doing the I/O can
know them: the bytes read from the shim that the VM has not acknowledged (kept
here for replay, trimmed by the daemon's ``acked`` reports) and how many of the
VM's bytes reached the shim (``received``: counted as they are read from the
daemon's end of a ``socketpair``; bytes the daemon wrote before dying are still
queued in the pair and drained into the shim).  The daemon serves its end of
the pair exactly as it would serve the shim's connection.

A ``Relay`` is one such connection: the shim's socket and the keeper's end of the
pair, both non-blocking, pumped by the keeper's ``selectors`` loop.  Every
buffer is bounded: the replay buffer by the session's ``replay_limit`` (the
shim is not read while it is full), what waits for the pair by one read (the
shim is not read while anything waits), the outbox to the shim by
``OUTBOX_LIMIT`` (the pair is not read while it is full).  Byte positions are
absolute in the session's streams: ``replay`` holds ``[base, sent)``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import selectors
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

logger = logging.getLogger("caa-fd-keeper")

READ_SIZE = 64 << 10
OUTBOX_LIMIT = 1 << 20
#: how long the keeper waits for a daemon's end of a pair to reach EOF (it closed it, or died)
DRAIN_WAIT = 2.0
#: how long a dropped connection may take to flush what the VM sent before it is closed
FLUSH_WAIT = 5.0
SESSION_ID_BYTES = 16
DEFAULT_REPLAY_LIMIT = 8 << 20


class Relay:
    """One shim connection the keeper relays; see the module docstring."""

    def __init__(
        self,
        key: str,
        listener: str,
        shim: socket.socket,
        pair: socket.socket,
        session: dict[str, Any],
        prefix: bytes,
        owner: object,
    ) -> None:
        self.key = key
        self.listener = listener
        self.shim = shim
        self.pair: socket.socket | None = pair
        self.owner: object | None = owner
        self.session_id = str(session["id"])
        bytes.fromhex(self.session_id)  # a malformed id is refused at once (ValueError)
        self.opened = bool(session.get("opened", False))
        self.replay_limit = int(session.get("replay_limit") or DEFAULT_REPLAY_LIMIT)
        self.sent = int(session["sent"])
        self.acked = int(session["acked"])
        self.received = int(session["received"])
        self.fin_sent = bool(session.get("fin_sent", False))
        self.fin_received = bool(session.get("fin_received", False))
        if not 0 <= self.acked <= self.sent or self.received < 0 or self.replay_limit < 4096:
            raise ValueError(f"relay {key}: inconsistent counters")
        if len(prefix) != self.sent - self.acked:
            raise ValueError(
                f"relay {key}: {len(prefix)} un-acked bytes for counters {self.acked}..{self.sent}"
            )
        self.plain = False
        self.base = self.acked
        self.replay = bytearray(prefix)
        self.fed = self.sent  # what the daemon was handed with the registration is its already
        self.outbox = bytearray()
        self.fin_announced = False  # the daemon said "fin": its pair end's EOF is the VM's FIN
        self.pair_eof = False
        self.pair_broken = False
        self.pair_shut = False
        self.shim_broken = False
        self.shim_shut = False
        self.drop_deadline: float | None = None
        #: the selector events registered for (the shim, the pair): re-registered only on a change
        self.registered: tuple[int, int, socket.socket | None] = (-1, -1, None)
        #: stops the keeper's selector watching a socket before it is closed (set by the table)
        self.unwatch: Callable[[socket.socket], None] = lambda _sock: None
        for sock in (shim, pair):
            sock.setblocking(False)

    # -- state -------------------------------------------------------------------

    def session(self) -> dict[str, Any]:
        return {
            "id": self.session_id,
            "opened": self.opened,
            "sent": self.sent,
            "acked": self.acked,
            "received": self.received,
            "fin_sent": self.fin_sent,
            "fin_received": self.fin_received,
            "replay_limit": self.replay_limit,
        }

    def unacked(self) -> bytes:
        return bytes(self.replay)

    @property
    def finished(self) -> bool:
        """A dropped connection whose last bytes reached the shim (or cannot)."""
        if self.drop_deadline is None:
            return False
        if time.monotonic() >= self.drop_deadline:
            return True
        return (self.pair is None or self.pair_eof) and (not self.outbox or self.shim_broken)

    def interest(self) -> tuple[int, int]:
        """Selector events wanted on (the shim, the pair)."""
        shim = pair = 0
        alive = self.pair is not None and not self.pair_broken and self.drop_deadline is None
        room = self.plain or self.sent - self.acked < self.replay_limit
        if alive and not self.fin_sent and self.fed == self.sent and room:
            shim |= selectors.EVENT_READ
        if self.outbox and not self.shim_broken:
            shim |= selectors.EVENT_WRITE
        if self.pair is not None:
            if not self.pair_eof and len(self.outbox) < OUTBOX_LIMIT:
                pair |= selectors.EVENT_READ
            if not self.pair_broken and self.fed < self.sent:
                pair |= selectors.EVENT_WRITE
        return shim, pair

    # -- control (the daemon's reports) ---------------------------------------------

    def on_acked(self, acked: int) -> None:
        if acked > self.sent:
            raise ValueError(f"relay {self.key}: acked {acked} beyond the {self.sent} bytes read")
        if self.plain or acked <= self.acked:
            return
        del self.replay[: acked - self.base]
        self.base = self.acked = acked

    def on_plain(self) -> None:
        """The session fell back to a plain relay: no replay, only what waits for the pair is kept."""
        self.plain = True
        del self.replay[: self.fed - self.base]
        self.base = self.fed

    # -- pumping -------------------------------------------------------------------

    def shim_readable(self) -> None:
        room = READ_SIZE if self.plain else min(READ_SIZE, self.replay_limit - (self.sent - self.acked))
        if room <= 0:
            return
        try:
            data = self.shim.recv(room)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
            self.shim_broken = True
        if not data:
            self.fin_sent = True  # the shim's stream ended at ``sent``
        else:
            self.replay += data
            self.sent += len(data)
        self.feed()

    def feed(self) -> None:
        """Write what the shim sent into the pair (as much as it takes now)."""
        pair = self.pair
        while pair is not None and not self.pair_broken and self.fed < self.sent:
            start = self.fed - self.base
            try:
                n = pair.send(self.replay[start : start + READ_SIZE])
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.pair_broken = True
                break
            self.fed += n
        if self.plain and self.fed > self.base:
            del self.replay[: self.fed - self.base]
            self.base = self.fed
        if pair is not None and self.fin_sent and self.fed == self.sent and not self.pair_shut:
            self.pair_shut = True
            with contextlib.suppress(OSError):
                pair.shutdown(socket.SHUT_WR)

    def pair_readable(self) -> bool:
        """Read what the daemon sent for the shim; True at EOF (the caller tells a FIN from a death)."""
        if self.pair is None:
            return False
        try:
            data = self.pair.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            data = b""
        if not data:
            self.pair_eof = True
            return True
        self.outbox += data
        self.received += len(data)
        self.flush()
        return False

    def flush(self) -> None:
        """Write the outbox into the shim; half-close it after the VM's FIN."""
        while self.outbox and not self.shim_broken:
            try:
                n = self.shim.send(self.outbox[:READ_SIZE])
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.shim_broken = True
                self.outbox.clear()
                return
            del self.outbox[:n]
        if self.fin_received and not self.outbox and not self.shim_shut:
            self.shim_shut = True
            with contextlib.suppress(OSError):
                self.shim.shutdown(socket.SHUT_WR)

    def pair_ended(self) -> None:
        """The pair reached EOF: the VM's FIN (announced first), or the daemon died or let go."""
        if self.fin_announced:
            self.fin_received = True
            self.flush()
            return
        self.close_pair()

    def drain_pair(self, wait: float = DRAIN_WAIT) -> None:
        """Read the pair to EOF (the daemon closed it or died), bounded by ``wait``; then close it."""
        deadline = time.monotonic() + wait
        late = 16  # past the deadline, what is already queued (a pair holds far less than 16 reads)
        while self.pair is not None and not self.pair_eof:
            left = deadline - time.monotonic()
            if left <= 0:
                late -= 1
            if late < 0 or not select.select([self.pair], [], [], max(0.0, left))[0]:
                if left <= 0 or late < 0:
                    logger.warning("relay %s: the daemon's end did not close in time; cutting it", self.key)
                    break
                continue
            self.pair_readable()
        if self.pair_eof and self.fin_announced:
            self.fin_received = True
        self.close_pair()
        self.flush()

    def close_pair(self) -> None:
        pair, self.pair = self.pair, None
        if pair is not None:
            self.unwatch(pair)
            pair.close()

    def start_drop(self) -> None:
        self.drop_deadline = time.monotonic() + FLUSH_WAIT

    def renew(self) -> socket.socket:
        """After the daemon's end was drained and closed: a new pair; returns the daemon's end.

        A plain relay becomes a new (not yet opened) session holding what waits
        for the pair; the outbox stays here and goes on to the shim.
        """
        if self.plain:
            self.plain = False
            self.session_id = os.urandom(SESSION_ID_BYTES).hex()
            self.opened = False
            self.acked = self.base = 0
            self.sent = len(self.replay)
            self.received = 0
            self.fin_received = False
        self.fed = self.sent
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        self.pair = ours
        self.pair_eof = self.pair_broken = self.pair_shut = False
        self.fin_announced = False
        return theirs

    def close(self) -> None:
        self.close_pair()
        self.unwatch(self.shim)
        self.shim.close()


class RelayTable:
    """The keeper's relays and their selector registrations."""

    def __init__(self, selector: selectors.BaseSelector) -> None:
        self._selector = selector
        self.relays: dict[str, Relay] = {}
        self._dropping: set[Relay] = set()

    def __iter__(self) -> Iterator[Relay]:
        return iter(list(self.relays.values()))

    def add(self, relay: Relay) -> None:
        old = self.relays.pop(relay.key, None)
        if old is not None:
            self.forget(old)
            old.close()
        self.relays[relay.key] = relay
        relay.unwatch = self._unwatch
        self.update(relay)

    def get(self, key: str) -> Relay | None:
        return self.relays.get(key)

    def forget(self, relay: Relay) -> None:
        """Stop watching ``relay``'s sockets (the caller closes or passes them)."""
        for sock in (relay.shim, relay.pair):
            self._unwatch(sock)
        if self.relays.get(relay.key) is relay:
            del self.relays[relay.key]
        self._dropping.discard(relay)

    def update(self, relay: Relay) -> None:
        """Re-register ``relay``'s sockets for what it wants now; close it once a drop finished."""
        if relay.drop_deadline is not None and relay.key in self.relays:
            self._dropping.add(relay)
        if relay.finished:
            self.forget(relay)
            relay.close()
            logger.debug("relay %s closed", relay.key)
            return
        shim, pair = relay.interest()
        if relay.registered == (shim, pair, relay.pair):
            return  # the common case on the hot path: nothing to tell the selector
        relay.registered = (shim, pair, relay.pair)
        self._want(relay.shim, shim, (relay, "shim"))
        if relay.pair is not None:
            self._want(relay.pair, pair, (relay, "pair"))

    def _want(self, sock: socket.socket, events: int, data: tuple[Relay, str]) -> None:
        try:
            current = self._selector.get_key(sock)
        except KeyError:
            current = None
        if events == 0:
            if current is not None:
                self._selector.unregister(sock)
        elif current is None:
            self._selector.register(sock, events, data)
        elif current.events != events:
            self._selector.modify(sock, events, data)

    def event(self, relay: Relay, which: str, mask: int, drain_control: Callable[[], None]) -> None:
        """One selector event on a relay's socket."""
        if which == "shim":
            if mask & selectors.EVENT_WRITE:
                relay.flush()
            if mask & selectors.EVENT_READ:
                relay.shim_readable()
        else:
            if mask & selectors.EVENT_WRITE:
                relay.feed()
            if mask & selectors.EVENT_READ and relay.pair_readable():
                before = relay.pair
                drain_control()  # a "fin" the daemon sent before half-closing its end
                if relay.pair is before and self.relays.get(relay.key) is relay:
                    relay.pair_ended()
        if self.relays.get(relay.key) is relay:
            self.update(relay)

    def _unwatch(self, sock: socket.socket | None) -> None:
        if sock is not None and sock.fileno() >= 0:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(sock)
            for relay in self.relays.values():
                if sock is relay.shim or sock is relay.pair:
                    relay.registered = (-1, -1, None)

    def tick(self) -> float | None:
        """Close relays whose drop finished or timed out; the seconds until the next deadline."""
        soonest: float | None = None
        now = time.monotonic()
        for relay in list(self._dropping):
            if relay.drop_deadline is None:
                continue
            self.update(relay)
            left = max(0.0, relay.drop_deadline - now)
            soonest = left if soonest is None else min(soonest, left)
        return soonest

    def owner_gone(self, owner: object) -> None:
        for relay in self:
            if relay.owner is owner:
                relay.owner = None

    def close(self) -> None:
        for relay in self:
            self.forget(relay)
            relay.close()
