"""Staggered dialling: a new connection attempt every ``interval``, the first to finish wins.

A booting cloud VM often drops SYNs rather than refusing them, and an attempt
whose SYN was dropped would hold the next one back until its own connect
timeout.  So a new attempt starts every ``interval`` even while earlier ones are
still pending (happy-eyeballs style, at most ``max_in_flight`` at once), and the
first attempt to finish its connect *and* handshake wins; the losers are
cancelled, and any that connected meanwhile are closed.

Once an attempt reaches its handshake the listener is up: no further attempt
starts (more connections would only load a forwarder that is starting).

The scheduler knows nothing of sockets or TLS: it is given a ``connect``
coroutine function (the connector) that makes one attempt, and enters the
context manager it is handed while it is in its handshake.  It runs on the
event loop's clock, so tests drive it with a scripted connector on fake loop
time (looptime).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from asyncio import FIRST_COMPLETED
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, Generic, TypeVar

from cloud_api_adaptor.aio import shielded

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: an attempt due within this many seconds starts now: a wait shorter than the loop's
#: clock resolution may return without the clock moving, and the loop would spin
_CLOCK_SLACK = 1e-3

Handshake = Callable[[], contextlib.AbstractContextManager[None]]
"""Entered by a connector while its attempt is past the connect, in its handshake."""


class DialFailed(Exception):
    """No attempt succeeded before the deadline; ``last`` is the last real failure."""

    def __init__(self, last: BaseException | None) -> None:
        super().__init__(str(last) if last is not None else "no attempt made")
        self.last = last


class StaggeredDialer(Generic[T]):
    """Runs connection attempts made by ``connect`` until one succeeds.

    ``close`` disposes of a connection that won too late; ``retryable`` lists the
    failures that lead to another attempt (anything else is a bug and propagates);
    ``on_failure(exc, count)`` is told of each failed attempt.
    """

    def __init__(
        self,
        connect: Callable[[Handshake], Coroutine[Any, Any, T]],
        *,
        close: Callable[[T], None],
        interval: float = 0.05,
        max_in_flight: int = 10,
        retryable: tuple[type[BaseException], ...] = (OSError, TimeoutError, ConnectionError),
        on_failure: Callable[[BaseException, int], None] | None = None,
        name: str = "dial",
    ) -> None:
        self._connect = connect
        self._close = close
        self._interval = interval
        self._max_in_flight = max(1, max_in_flight)
        self._retryable = retryable
        self._on_failure = on_failure
        self._name = name

    async def dial(
        self,
        deadline: float,
        *,
        stop: asyncio.Future[Any] | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> T:
        """A connection, made before ``deadline`` (loop time), or ``DialFailed``.

        Gives up early when ``stop`` completes or ``should_stop()`` holds.  On
        return, failure or cancellation no other attempt is left running or open.
        """
        loop = asyncio.get_running_loop()
        handshaking = [0]  # this dial's attempts that are in their handshake

        @contextlib.contextmanager
        def in_handshake() -> Iterator[None]:
            handshaking[0] += 1
            try:
                yield
            finally:
                handshaking[0] -= 1

        pending: set[asyncio.Task[T]] = set()
        winner: list[T] = []
        last: BaseException | None = None
        attempts = failures = 0
        next_start = loop.time()
        try:
            while not winner and not should_stop() and (stop is None or not stop.done()):
                now = loop.time()
                remaining = deadline - now
                if remaining <= _CLOCK_SLACK:
                    break
                may_start = len(pending) < self._max_in_flight and not handshaking[0]
                if may_start and now >= next_start - _CLOCK_SLACK:
                    attempts += 1
                    pending.add(
                        loop.create_task(self._connect(in_handshake), name=f"{self._name} #{attempts}")
                    )
                    next_start = now + self._interval
                    may_start = len(pending) < self._max_in_flight
                wait = min(next_start - now, remaining) if may_start else remaining
                waiters: set[asyncio.Future[Any]] = set(pending)
                if stop is not None:
                    waiters.add(stop)
                if waiters:
                    await asyncio.wait(waiters, timeout=max(0.0, wait), return_when=FIRST_COMPLETED)
                else:
                    await asyncio.sleep(max(0.0, wait))
                for task in [t for t in pending if t.done()]:
                    pending.discard(task)
                    outcome = self._outcome(task, winner)
                    if outcome is not None:
                        last = outcome
                        failures += 1
                        if self._on_failure is not None:
                            self._on_failure(outcome, failures)
        except BaseException:
            for connection in winner:
                self._close(connection)
            raise
        finally:
            if pending:
                try:
                    await shielded(self._reap(pending))
                except BaseException:
                    for connection in winner:
                        self._close(connection)
                    raise
        if winner:
            return winner[0]
        if last is None and attempts:
            last = TimeoutError()  # every attempt was still pending at the deadline
        raise DialFailed(last)

    def _outcome(self, task: asyncio.Task[T], winner: list[T]) -> BaseException | None:
        """Record a finished attempt: a win (or a late win, closed), or the failure to count."""
        if task.cancelled():
            return None
        exc = task.exception()
        if exc is None:
            if winner:
                self._close(task.result())  # finished together with the winner
            else:
                winner.append(task.result())
            return None
        if not isinstance(exc, self._retryable):
            raise exc
        return exc

    async def _reap(self, attempts: set[asyncio.Task[T]]) -> None:
        """Cancel the losing attempts; close any that connected before the cancellation landed."""
        for task in attempts:
            task.cancel()
        for outcome in await asyncio.gather(*attempts, return_exceptions=True):
            if not isinstance(outcome, BaseException):
                self._close(outcome)
