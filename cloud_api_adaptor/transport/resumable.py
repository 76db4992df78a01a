"""The resumable agent channel's I/O: a ``Session`` between a local connection and a replaceable link.

``ResumableRelay`` joins the local connection (the shim's on the node, the
agent's in the VM) to the current TLS link to the other end.  The link may drop
and be replaced (``attach_client``/``attach_server``) any number of times; the
local connection never sees it.  The protocol itself is ``transport.resume``;
this module only moves bytes, the way ``transport.pump`` does:

- bytes move inside ``buffer_updated`` (no task per chunk), read buffers are lent
  to the transport and given up when a writer keeps a reference to them;
- back-pressure: a link whose write buffer is full pauses reading the local side
  and the other way round; a full replay window (un-acked bytes) also pauses
  the local side until the peer acks;
- liveness: every ``keepalive`` seconds each end sends an ACK; a link that
  brought nothing for ``dead_after`` seconds is aborted (a black-holed link
  otherwise waits for TCP's retransmission timers, many seconds after the
  network is back), so the client redials at once;
- the session ends (both connections closed) on a FIN both ways, on the local
  connection closing, on a protocol error, or when the owner calls ``end``
  (the node when its resume window passes, the VM when nobody resumed in time).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from typing import cast

from cloud_api_adaptor.transport.pump import Filter, PumpStats
from cloud_api_adaptor.transport.resumable_ends import Link, LinkState, Local
from cloud_api_adaptor.transport.resume import (
    Hello,
    Kind,
    ResumeError,
    ResumeRejected,
    Session,
    SessionState,
    Status,
    Welcome,
    encode_hello,
    encode_welcome,
)

logger = logging.getLogger(__name__)

#: reads at least this large go out as a header and the read buffer itself (``writelines``: one
#: flush to the socket, no frame copy); smaller ones as one frame (one write, one TLS record:
#: a record each for a small header and payload costs more than the copy)
_SPLIT_AT = 16 << 10


class ResumableRelay:
    """A session's I/O on one end.  Create it, ``connect_local`` (or ``local_protocol``), attach links.

    ``ended`` completes (with the reason) once both connections are closed for good.
    """

    def __init__(
        self,
        session: Session,
        *,
        client: bool,
        filter: Filter | None = None,
        stats: PumpStats | None = None,
        keepalive: float = 1.0,
        dead_after: float = 5.0,
        open_timeout: float = 300.0,
        name: str = "",
        opened: bool = False,
    ) -> None:
        """``opened``: the peer already knows the session (a session restored from a
        hand-over): the first link resumes it rather than opening it."""
        self.session = session
        self._client = client
        self._filter = filter
        self._stats = stats
        self._keepalive = keepalive
        self._dead_after = dead_after
        self._open_timeout = open_timeout
        self.name = name or session.session_id.hex()[:12]
        self._loop = asyncio.get_running_loop()
        self.local = Local(self)
        self.link: Link | None = None
        self.ended: asyncio.Future[str] = self._loop.create_future()
        self.link_lost: asyncio.Event = asyncio.Event()
        """Set while no link is running."""
        self.link_lost.set()
        self.link_up: asyncio.Event = asyncio.Event()
        """Set while a link is running."""
        self._pause_at = session.replay_limit // 2
        self.resumes = 0
        """Links that continued the session after the first."""
        self._hello_sent = opened
        self._released = False
        self._links = 0
        self._local_paused_by: set[str] = set()
        self._timer: asyncio.TimerHandle | None = self._loop.call_later(keepalive, self._tick)
        self.on_acked: Callable[[int], None] | None = None
        """Called with ``session.acked`` when the peer's acknowledgement advanced (an fd-keeper trims)."""
        self.on_fin: Callable[[], None] | None = None
        """Called before the peer's FIN is passed on to the local connection (half-close or close)."""

    @property
    def hello_sent(self) -> bool:
        """The peer was told about the session: a next owner resumes it rather than opening it."""
        return self._hello_sent

    # -- attaching links --------------------------------------------------------------

    def attach_client(self, transport: asyncio.BaseTransport) -> Link:
        """Switch a freshly dialled TLS connection (ALPN agreed) to this session; sends the hello.

        Await the returned link's ``settled`` for the outcome.
        """
        link = Link(self, client=True)
        self._replace_link(link, transport)
        kind = Kind.RESUME if self._hello_sent else Kind.NEW
        self._hello_sent = True
        # A resume is answered at once; a new session only once the forwarder reached
        # the agent, which may still be starting.
        link.handshake_limit = self._dead_after if kind is Kind.RESUME else self._open_timeout
        assert link.transport is not None
        link.transport.write(encode_hello(Hello(kind, self.session.session_id, self.session.received)))
        return link

    def attach_server(self, transport: asyncio.BaseTransport, hello: Hello, rest: bytes) -> None:
        """Continue on a link whose hello was read (the forwarder's session table found us)."""
        link = Link(self, client=False)
        try:
            frames = self.session.resume(hello.received)
        except ResumeRejected as exc:
            cast(asyncio.Transport, transport).write(
                encode_welcome(Welcome(exc.status or Status.CANNOT_RESUME, self.session.received))
            )
            transport.close()
            self.end(f"resume refused: {exc}")
            return
        self._replace_link(link, transport)
        assert link.transport is not None
        link.transport.write(encode_welcome(Welcome(Status.OK, self.session.received)) + frames)
        self._running(link)
        if rest:
            self._from_link(link, memoryview(rest))

    def _replace_link(self, link: Link, transport: asyncio.BaseTransport) -> None:
        old, self.link = self.link, link
        if old is not None and old.transport is not None:
            old.gone()
            old.transport.abort()
        self.session.detach()
        transport.set_protocol(link)
        link.connection_made(transport)

    def _on_welcome_bytes(self, link: Link, data: memoryview) -> None:
        assert link._welcome is not None
        try:
            got = link._welcome.feed(data)
            if got is None:
                return
            welcome, rest = got
            if welcome.status is Status.UNKNOWN_SESSION and self._reopen(link):
                return
            if welcome.status is not Status.OK:
                raise ResumeRejected(
                    f"the forwarder refused the session: {welcome.status.name}", welcome.status
                )
            acked = self.session.acked
            frames = self.session.resume(welcome.received)
        except ResumeError as exc:
            if not link.settled.done():
                link.settled.set_result(False)
            self.end(str(exc))
            return
        if self.session.acked != acked and self.on_acked is not None:
            self.on_acked(self.session.acked)
        assert link.transport is not None
        link.transport.write(frames)
        self._running(link)
        if rest:
            self._from_link(link, memoryview(rest))

    def _reopen(self, link: Link) -> bool:
        """The forwarder does not know a session we resumed (e.g. a crash between the fd-keeper
        learning it was opened and the hello going out): when nothing of it was acknowledged or
        received, opening it anew is the same thing.  The link is dropped; the next one says NEW."""
        if self.session.acked or self.session.received:
            return False
        logger.info("agent channel %s: the forwarder does not know the session; opening it anew", self.name)
        self._hello_sent = False
        if not link.settled.done():
            link.settled.set_result(False)
        if link.transport is not None:
            link.transport.abort()
        return True

    def _running(self, link: Link) -> None:
        link.running()
        self._links += 1
        self.resumes = self._links - 1
        self.link_lost.clear()
        self.link_up.set()
        # Local reads paused for the old link's full write buffer: the new one is empty.
        self._pause_local("link", False)
        if self.session.fin_received:
            self._deliver_fin()

    # -- data paths ---------------------------------------------------------------------

    def _from_local(self, data: memoryview) -> bool:
        """Returns True when a transport may still hold ``data`` (the caller gives up that buffer)."""
        session = self.session
        n = len(data)
        big = n >= _SPLIT_AT
        try:
            frames = session.send_header(data) if big else session.send(data)
        except ResumeError as exc:
            self.end(str(exc))
            return False
        stats = self._stats
        if stats is not None:
            if self._client:
                stats.bytes_in += n
            else:
                stats.bytes_out += n
        kept = False
        link = self.link
        if link is not None and link.running_:
            lt = link.transport
            assert lt is not None
            if big:
                lt.writelines((frames, data))
                kept = bool(lt.get_write_buffer_size())
            else:
                lt.write(frames)
        if session.sent - session.acked >= self._pause_at:
            self._pause_local("window", True)
        return kept

    def _from_link(self, link: Link, data: memoryview) -> None:
        session = self.session
        piece = session.whole_data(data)
        if piece is None:
            self._frames_from_link(link, data)
            return
        # One whole DATA frame (no ACK or FIN in it): straight to the local side.
        lt = self.local.transport
        if lt is not None:
            filt = self._filter
            lt.write(piece if filt is None else filt(piece))
            if lt.get_write_buffer_size():
                link._buffer = None  # the transport may still point into the link's buffer
            stats = self._stats
            if stats is not None:
                if self._client:
                    stats.bytes_out += len(piece)
                else:
                    stats.bytes_in += len(piece)
        if session.ack_due and link.transport is not None:
            link.transport.write(session.ack())

    def _frames_from_link(self, link: Link, data: memoryview) -> None:
        """Any other read: frames in pieces, several frames, ACKs, FIN."""
        session = self.session
        acked = session.acked
        had_fin = session.fin_received
        try:
            pieces = session.feed(data)
        except ResumeError as exc:
            self.end(f"protocol error from the peer: {exc}")
            return
        lt = self.local.transport
        if pieces and lt is not None:
            filt = self._filter
            if len(pieces) == 1:
                (piece,) = pieces
                n = len(piece)
                lt.write(piece if filt is None else filt(piece))
            else:
                n = 0
                for piece in pieces:
                    n += len(piece)
                    lt.write(piece if filt is None else filt(piece))
            if lt.get_write_buffer_size():
                link._buffer = None  # the transport may still point into the link's buffer
            stats = self._stats
            if stats is not None:
                if self._client:
                    stats.bytes_out += n
                else:
                    stats.bytes_in += n
        if session.ack_due and link.transport is not None:
            link.transport.write(session.ack())
        if session.acked != acked:
            if self.on_acked is not None:
                self.on_acked(session.acked)
            if self._local_paused_by and session.sent - session.acked < self._pause_at:
                self._pause_local("window", False)
        if session.fin_received and not had_fin:
            self._deliver_fin()

    def _deliver_fin(self) -> None:
        lt = self.local.transport
        if self.on_fin is not None:
            self.on_fin()
        if lt is not None and not lt.is_closing():
            if self.session.fin_sent or self.local.eof:
                lt.close()
            elif lt.can_write_eof():
                lt.write_eof()
            else:
                lt.close()
        if self.session.fin_sent:
            self.end("both streams ended")

    def _local_eof(self) -> None:
        self._send_fin()
        if self.session.fin_received:
            self.end("both streams ended")

    def _local_lost(self, exc: Exception | None) -> None:
        if self._released:
            return
        self._send_fin()
        self.end(f"local connection closed{f': {exc}' if exc else ''}")

    def _send_fin(self) -> None:
        fin = self.session.send_fin()
        link = self.link
        if fin and link is not None and link.state is LinkState.RUNNING and link.transport is not None:
            link.transport.write(fin)

    # -- back-pressure ------------------------------------------------------------------

    def _pause_local(self, reason: str, pause: bool) -> None:
        t = self.local.transport
        before = bool(self._local_paused_by)
        if pause:
            self._local_paused_by.add(reason)
        else:
            self._local_paused_by.discard(reason)
        after = bool(self._local_paused_by)
        if t is None or t.is_closing() or before == after:
            return
        if after:
            t.pause_reading()
        elif not self.local.eof:
            t.resume_reading()

    def _pause_local_for_link(self, pause: bool) -> None:
        self._pause_local("link", pause)

    def _pause_link(self, pause: bool) -> None:
        link = self.link
        if link is None or link.transport is None or link.transport.is_closing():
            return
        if pause:
            link.transport.pause_reading()
        else:
            link.transport.resume_reading()

    # -- liveness and ending ------------------------------------------------------------

    def _link_lost(self, link: Link, exc: Exception | None) -> None:
        if link is not self.link:
            return
        self.link = None
        self.session.detach()
        if not self.ended.done():
            logger.info("agent channel %s: link lost (%s); waiting for a resume", self.name, exc or "closed")
            self.link_lost.set()
            self.link_up.clear()

    def _tick(self) -> None:
        self._timer = None
        if self.ended.done():
            return
        link = self.link
        if link is not None and link.transport is not None and not link.running_:
            if self._loop.time() - link.quiet_since > link.handshake_limit:
                logger.info("agent channel %s: no answer to the hello; dropping the link", self.name)
                link.transport.abort()
        elif link is not None and link.transport is not None:
            now = self._loop.time()
            if link.reads != link.seen_reads:
                link.seen_reads, link.quiet_since = link.reads, now
            if now - link.quiet_since > self._dead_after:
                logger.info(
                    "agent channel %s: nothing heard for %.1f s; dropping the link",
                    self.name,
                    self._dead_after,
                )
                link.transport.abort()
            else:
                link.transport.write(self.session.ack())
        self._timer = self._loop.call_later(self._keepalive, self._tick)

    def finish(self, reason: str) -> None:
        """End for good, telling the peer (a FIN on a running link) so it does not wait to resume."""
        self._send_fin()
        self.end(reason)

    def end(self, reason: str) -> None:
        """Close both connections (buffered bytes are flushed) and forget the session."""
        if self.ended.done():
            return
        logger.info("agent channel %s: session ended: %s", self.name, reason)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        link, self.link = self.link, None
        if link is not None and link.transport is not None:
            link.gone()
            link.transport.close()
            if not link.settled.done():
                link.settled.set_result(False)
        lt = self.local.transport
        if lt is not None:
            lt.close()
        self.link_lost.set()
        self.link_up.clear()
        self.ended.set_result(reason)

    async def release(self, timeout: float = 5.0) -> tuple[socket.socket, SessionState]:
        """Hand the session over to another process: (a duplicate of the local socket, its state).

        The link is dropped without a FIN (the peer keeps the session and waits for
        a resume), bytes already received are flushed to the local side first, and
        the local connection is left open (only this process's descriptor closes);
        the new owner continues with ``ResumableRelay(Session.restore(state),
        opened=True)`` on that socket.  Raises ``TimeoutError`` if the local side
        does not take our buffered bytes within ``timeout``.
        """
        lt = self.local.transport
        if lt is None or lt.is_closing() or self.ended.done():
            raise ResumeError("the session has no local connection to hand over")
        link = self.link
        if link is not None and link.transport is not None:
            link.transport.pause_reading()  # nothing more for the local side
        loop = self._loop
        deadline = loop.time() + timeout
        while lt.get_write_buffer_size():
            if loop.time() > deadline:
                raise TimeoutError("the local side does not read what we owe it")
            await asyncio.sleep(0.005)
        lt.pause_reading()
        sock = lt.get_extra_info("socket")
        dup = socket.socket(fileno=os.dup(sock.fileno()))
        self._released = True
        link, self.link = self.link, None
        if link is not None and link.transport is not None:
            link.gone()
            link.transport.abort()
        self.session.detach()
        state = self.session.snapshot()
        self.local.transport = None
        lt.abort()  # closes our descriptor only: the duplicate keeps the connection
        self.end("handed over")
        return dup, state

    def release_local(self) -> tuple[asyncio.Transport | None, bytes, bool]:
        """Give up the session before any link ran: (local transport, bytes it sent, EOF seen).

        For falling back to a plain relay when the peer does not speak this
        protocol: the caller installs another protocol on the transport and sends
        the bytes first.  The relay ends without closing the local connection.
        """
        if self.session.received or self._links:
            raise RuntimeError("the session already ran over a link")
        data = self.session.snapshot().unacked
        lt = self.local.transport
        self.local.transport = None
        eof = self.local.eof
        if lt is not None and self._local_paused_by and not lt.is_closing():
            lt.resume_reading()
        self._local_paused_by.clear()
        self.end("fell back to a plain relay")
        return lt, data, eof

    def abort(self) -> None:
        """End at once without flushing (shutdown grace passed)."""
        for t in (self.local.transport, self.link.transport if self.link else None):
            if t is not None:
                t.abort()
        self.end("aborted")


__all__ = ["LinkState", "ResumableRelay"]
