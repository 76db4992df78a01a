"""Small asyncio helpers: the event-loop choice, guarded background tasks, shielded cleanup.

No fire-and-forget: every background task is owned by a ``TaskSupervisor`` that
keeps a reference, logs a failure, and cancels and awaits its tasks on close.

``run`` is how the long-running CLIs (``cloud-api-adaptor serve``,
``agent-protocol-forwarder``) start their loop: uvloop when it is importable,
because the agent channel and the ttrpc frame loop spend most of their time in
the loop's transports (uvloop's TLS transport in particular is several times
cheaper per record than asyncio's sslproto), and the stock asyncio loop when
``CAA_EVENT_LOOP=asyncio`` asks for it (a debugging escape hatch; the CLI reads
the variable and passes it here).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from cloud_api_adaptor.errors import ConfigError

logger = logging.getLogger(__name__)
T = TypeVar("T")

EVENT_LOOP_ENV = "CAA_EVENT_LOOP"
"""Environment variable naming the event loop: ``uvloop``, ``asyncio``, or empty/``auto``."""

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def loop_factory(choice: str = "") -> LoopFactory | None:
    """The loop factory for ``choice``; None means asyncio's default loop.

    Empty or ``auto``: uvloop when importable, else asyncio.  ``uvloop`` insists
    (ConfigError when it is missing); ``asyncio`` turns uvloop off.
    """
    name = choice.strip().lower()
    if name == "asyncio":
        return None
    if name not in ("", "auto", "uvloop"):
        raise ConfigError(EVENT_LOOP_ENV, f"unknown event loop {choice!r}: expected uvloop, asyncio or auto")
    try:
        import uvloop
    except ImportError as exc:
        if name == "uvloop":
            raise ConfigError(EVENT_LOOP_ENV, "uvloop is not installed") from exc
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T], *, event_loop: str = "") -> T:
    """``asyncio.run(main)`` on the loop ``event_loop`` names (see ``loop_factory``)."""
    try:
        factory = loop_factory(event_loop)
    except ConfigError:
        main.close()
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


#: seconds between restarts of a failed long-running task: doubling, capped
RESTART_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


class TaskSupervisor:
    """Owns named background tasks; ``aclose`` cancels and awaits them all.

    ``spawn`` runs a task once and logs its failure; ``keep_running`` runs a
    long-lived loop (housekeeping, watches) and restarts it after any exception,
    with backoff, reporting each failure to ``on_failure`` (a metric).
    """

    def __init__(
        self,
        name: str,
        *,
        on_failure: Callable[[str, BaseException], None] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._name = name
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self._on_failure = on_failure
        self._sleep = sleep

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str) -> asyncio.Task[T]:
        if self._closed:
            coro.close()
            raise RuntimeError(f"{self._name}: supervisor is closed")
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._on_done)
        return task

    def keep_running(
        self,
        factory: Callable[[], Coroutine[Any, Any, None]],
        *,
        name: str,
        delays: tuple[float, ...] = RESTART_DELAYS,
    ) -> asyncio.Task[None]:
        """Run ``factory()`` until closed; after an exception log it, count it, wait, start it again."""
        return self.spawn(self._restarting(factory, name, delays), name=name)

    async def _restarting(
        self, factory: Callable[[], Coroutine[Any, Any, None]], name: str, delays: tuple[float, ...]
    ) -> None:
        failures = 0
        while True:
            try:
                await factory()
                failures = 0
                logger.warning("%s: %s returned; starting it again", self._name, name)
            except Exception as exc:
                delay = delays[min(failures, len(delays) - 1)]
                failures += 1
                logger.error(
                    "%s: %s failed (%d in a row); restarting in %.0f s",
                    self._name,
                    name,
                    failures,
                    delay,
                    exc_info=exc,
                )
                if self._on_failure is not None:
                    self._on_failure(name, exc)
                await self._sleep(delay)

    def _on_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            logger.error("%s: background task %s failed", self._name, task.get_name(), exc_info=exc)

    def __len__(self) -> int:
        return len(self._tasks)

    async def aclose(self) -> None:
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


async def shielded(awaitable: Awaitable[T]) -> T:
    """Run cleanup to completion even if the caller is cancelled.

    The work runs in its own task; if the caller is cancelled while waiting, the
    cleanup still finishes before the cancellation propagates.
    """
    task = asyncio.ensure_future(awaitable)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.done():
            try:
                await task
            except Exception:
                logger.exception("cleanup failed after cancellation")
        raise


class KeyedLocks:
    """One asyncio lock per key (e.g. per idempotency token), dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)
