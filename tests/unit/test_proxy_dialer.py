"""StaggeredDialer on a scripted connector and fake loop time (looptime): no sockets, no wall-clock waits.

Each scenario scripts what every attempt meets (refused, a dropped SYN, an
accepted connection with a handshake of some length, a handshake that hangs)
and asserts on the outcome and on the loop time at which things happened.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import looptime
import pytest

from cloud_api_adaptor.proxy.dialer import DialFailed, Handshake, StaggeredDialer

INTERVAL = 0.05
CONNECT_TIMEOUT = 0.5  # what a dropped SYN costs an attempt


@dataclass
class Conn:
    attempt: int
    closed: bool = False

    def close(self) -> None:
        self.closed = True


Script = Callable[[int, Handshake], Coroutine[Any, Any, Conn]]


def on_fake_time(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """Run ``test`` on an event loop whose clock only moves when every task waits (looptime).

    looptime's pytest plugin is off (see pyproject.toml: it leaks a loop per sync
    test); its loop class is used directly instead.
    """

    @functools.wraps(test)
    def run() -> None:
        loop = looptime.new_event_loop(start=0.0)
        try:
            loop.run_until_complete(test())
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    return run


def refused(n: int, handshake: Handshake) -> Coroutine[Any, Any, Conn]:
    async def attempt() -> Conn:
        raise ConnectionRefusedError(111, "connection refused")

    return attempt()


def dropped(n: int, handshake: Handshake) -> Coroutine[Any, Any, Conn]:
    async def attempt() -> Conn:
        await asyncio.sleep(CONNECT_TIMEOUT)
        raise TimeoutError

    return attempt()


def accepted(handshake_seconds: float = 0.01) -> Script:
    def script(n: int, handshake: Handshake) -> Coroutine[Any, Any, Conn]:
        async def attempt() -> Conn:
            with handshake():
                await asyncio.sleep(handshake_seconds)
            return Conn(n)

        return attempt()

    return script


def hanging_handshake(timeout: float) -> Script:
    def script(n: int, handshake: Handshake) -> Coroutine[Any, Any, Conn]:
        async def attempt() -> Conn:
            with handshake():
                await asyncio.sleep(timeout)
            raise TimeoutError("handshake timed out")

        return attempt()

    return script


@dataclass
class Connector:
    """Plays attempt n with ``scripts[n]`` (the last one repeats); records when each attempt started."""

    scripts: list[Script]
    started: list[float] = field(default_factory=list)
    made: list[Conn] = field(default_factory=list)
    failures: list[int] = field(default_factory=list)

    async def __call__(self, handshake: Handshake) -> Conn:
        n = len(self.started)
        self.started.append(asyncio.get_running_loop().time())
        conn = await self.scripts[min(n, len(self.scripts) - 1)](n, handshake)
        self.made.append(conn)
        return conn

    def dialer(self, max_in_flight: int = 10) -> StaggeredDialer[Conn]:
        return StaggeredDialer(
            self,
            close=Conn.close,
            interval=INTERVAL,
            max_in_flight=max_in_flight,
            on_failure=lambda exc, count: self.failures.append(count),
        )


@on_fake_time
async def test_a_refused_first_attempt_is_followed_one_interval_later_by_the_winner() -> None:
    connector = Connector([refused, accepted(0.01)])
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    conn = await connector.dialer().dial(t0 + 300)
    assert conn.attempt == 1 and not conn.closed
    assert [t - t0 for t in connector.started] == pytest.approx([0.0, INTERVAL])
    assert loop.time() - t0 == pytest.approx(INTERVAL + 0.01)
    assert connector.failures == [1]


@on_fake_time
async def test_dropped_syns_do_not_hold_back_the_attempts_after_them() -> None:
    connector = Connector([dropped, dropped, dropped, accepted(0.01)])
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    conn = await connector.dialer().dial(t0 + 300)
    assert conn.attempt == 3
    assert loop.time() - t0 == pytest.approx(3 * INTERVAL + 0.01)  # not CONNECT_TIMEOUT: staggered
    assert connector.failures == []  # the dropped attempts were cancelled, not failed
    assert [c.attempt for c in connector.made] == [3]


@on_fake_time
async def test_no_new_attempt_starts_while_a_handshake_is_under_way_and_attempts_resume_after_it_fails() -> (
    None
):
    connector = Connector([hanging_handshake(10.0), accepted(0.01)])
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    conn = await connector.dialer().dial(t0 + 300)
    assert [t - t0 for t in connector.started] == pytest.approx([0.0, 10.0])
    assert conn.attempt == 1 and connector.failures == [1]


@on_fake_time
async def test_attempts_in_flight_are_bounded_and_none_is_left_at_the_deadline() -> None:
    forever: Script = lambda n, handshake: asyncio.Event().wait()  # type: ignore[assignment,return-value]  # noqa: E731
    connector = Connector([forever])
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(DialFailed) as err:
        await connector.dialer(max_in_flight=3).dial(t0 + 60)
    assert len(connector.started) == 3  # a minute of fake time, room for 1200 attempts
    assert isinstance(err.value.last, TimeoutError)
    assert loop.time() - t0 == pytest.approx(60)
    assert all(task.done() for task in asyncio.all_tasks() if task.get_name().startswith("dial #"))


def connect_then_handshake(connect_seconds: float, handshake_seconds: float) -> Script:
    def script(n: int, handshake: Handshake) -> Coroutine[Any, Any, Conn]:
        async def attempt() -> Conn:
            await asyncio.sleep(connect_seconds)
            with handshake():
                await asyncio.sleep(handshake_seconds)
            return Conn(n)

        return attempt()

    return script


@on_fake_time
async def test_of_two_connections_that_finish_together_one_wins_and_the_other_is_closed() -> None:
    # attempt 0 connects at 0.055 and attempt 1 (started at 0.05) at once: both finish at 0.07
    connector = Connector([connect_then_handshake(0.055, 0.015), connect_then_handshake(0.0, 0.02)])
    loop = asyncio.get_running_loop()
    conn = await connector.dialer().dial(loop.time() + 300)
    assert sorted(c.attempt for c in connector.made) == [0, 1]
    assert [c for c in connector.made if not c.closed] == [conn]


@on_fake_time
async def test_the_last_real_failure_is_reported_at_the_deadline() -> None:
    connector = Connector([refused])
    loop = asyncio.get_running_loop()
    with pytest.raises(DialFailed) as err:
        await connector.dialer().dial(loop.time() + 1.0)
    assert isinstance(err.value.last, ConnectionRefusedError)
    assert len(connector.started) == pytest.approx(1.0 / INTERVAL, abs=1)


@on_fake_time
async def test_a_bug_in_the_connector_is_not_retried() -> None:
    def broken(n: int, handshake: Handshake) -> Coroutine[Any, Any, Conn]:
        async def attempt() -> Conn:
            raise KeyError("bug")

        return attempt()

    with pytest.raises(KeyError):
        await Connector([broken]).dialer().dial(asyncio.get_running_loop().time() + 300)
