"""Time-based behaviour on trio's MockClock, asserted at exact virtual times.

The pool reads time from the running backend only, so trio's ``MockClock``
(with autojump: the clock jumps to the next deadline whenever every task is
blocked) drives every back-off, lifetime, idle expiry and acquire timeout
here. These tests use the generic connector (no sockets: a network wait would
let the clock jump), and so run on trio alone: asyncio has no virtual clock.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from anyio_wspool import PoolTimeout, open_pool

pytestmark = pytest.mark.anyio

trio_testing = pytest.importorskip("trio.testing")


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    return ("trio", {"clock": trio_testing.MockClock(autojump_threshold=0)})


class Resource:
    """A test double for what a connector yields."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.closed_at: float | None = None


class Connector:
    """Opens Resources, recording when each attempt began and each close happened."""

    def __init__(self, *, fail: int = 0, handshake: float = 0.0) -> None:
        self.fail = fail
        self.handshake = handshake
        self.attempts: list[float] = []
        self.opened: list[Resource] = []

    @asynccontextmanager
    async def __call__(self) -> AsyncIterator[Resource]:
        self.attempts.append(anyio.current_time())
        if self.handshake:
            await anyio.sleep(self.handshake)
        if len(self.attempts) <= self.fail:
            raise ConnectionRefusedError("down")
        resource = Resource(len(self.opened))
        self.opened.append(resource)
        try:
            yield resource
        finally:
            resource.closed_at = anyio.current_time()


def _gaps(times: list[float]) -> list[float]:
    return [later - earlier for earlier, later in itertools.pairwise(times)]


async def test_attempts_back_off_at_the_doubling_cap() -> None:
    connect = Connector(fail=10)
    async with open_pool(
        connect=connect, connect_attempts=5, retry_backoff=1.0, retry_backoff_max=3.0
    ) as pool:
        assert pool._host is not None
        pool._host._rng.uniform = lambda a, b: b  # type: ignore[method-assign]
        started = anyio.current_time()
        with pytest.raises(ConnectionRefusedError) as caught:
            await pool.acquire()
        # the upper bounds of full jitter: 1, 2, then capped at 3
        assert _gaps(connect.attempts) == pytest.approx([1.0, 2.0, 3.0, 3.0])
        assert anyio.current_time() - started == pytest.approx(9.0)
    assert "5 attempt(s)" in "".join(caught.value.__notes__)


async def test_attempts_back_off_with_full_jitter() -> None:
    connect = Connector(fail=10)
    async with open_pool(
        connect=connect, connect_attempts=8, retry_backoff=1.0, retry_backoff_max=4.0
    ) as pool:
        with pytest.raises(ConnectionRefusedError):
            await pool.acquire()
    gaps = _gaps(connect.attempts)
    assert len(gaps) == 7
    for attempt, gap in enumerate(gaps, start=1):
        assert 0.0 <= gap <= min(4.0, 2 ** (attempt - 1))
    assert len(set(gaps)) > 1  # jittered, not a fixed schedule


async def test_acquire_timeout_is_exact() -> None:
    async with open_pool(connect=Connector(), max_connections=1, acquire_timeout=2.5) as pool:
        async with pool.connection():
            started = anyio.current_time()
            with pytest.raises(PoolTimeout, match=r"2\.50 s"):
                await pool.acquire()
            assert anyio.current_time() - started == pytest.approx(2.5)
        assert pool.stats.acquire_timeouts == 1


async def test_waiters_time_out_in_the_order_they_came() -> None:
    failed: list[tuple[int, float]] = []
    async with open_pool(connect=Connector(), max_connections=1, acquire_timeout=3.0) as pool:
        async with pool.connection():
            started = anyio.current_time()

            async def borrower(number: int) -> None:
                with pytest.raises(PoolTimeout):
                    await pool.acquire()
                failed.append((number, anyio.current_time() - started))

            async with anyio.create_task_group() as tg:
                for number in range(3):
                    tg.start_soon(borrower, number)
                    await anyio.sleep(1.0)
    assert [number for number, _ in failed] == [0, 1, 2]
    assert [when for _, when in failed] == pytest.approx([3.0, 4.0, 5.0])


async def test_idle_connection_closes_at_the_first_sweep_past_idle_timeout() -> None:
    connect = Connector()
    async with open_pool(connect=connect, idle_timeout=10.0, cleanup_interval=4.0) as pool:
        started = anyio.current_time()
        async with pool.connection():
            pass
        await anyio.sleep(11.9)  # sweeps at 4 and 8: idle for less than 10
        assert pool.stats.idle == 1
        await anyio.sleep(0.2)  # the sweep at 12
        assert pool.stats.idle == 0
        closed_at = connect.opened[0].closed_at
        assert closed_at is not None
        assert closed_at - started == pytest.approx(12.0)


async def test_lifetime_is_drawn_between_90_and_100_percent_of_max_lifetime() -> None:
    connect = Connector()
    async with open_pool(
        connect=connect,
        max_connections=20,
        max_lifetime=100.0,
        cleanup_interval=0.5,
        idle_timeout=None,
    ) as pool:
        started = anyio.current_time()
        all_in = anyio.Event()

        async def borrower() -> None:
            async with pool.connection():
                if pool.stats.in_use == 20:
                    all_in.set()
                await all_in.wait()

        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(borrower)
        await anyio.sleep(89.9)
        assert pool.stats.idle == 20
        await anyio.sleep(10.6)
        assert pool.stats.idle == 0
    lifetimes = [r.closed_at - started for r in connect.opened if r.closed_at is not None]
    assert len(lifetimes) == 20
    assert all(90.0 <= life <= 100.5 for life in lifetimes)
    assert max(lifetimes) - min(lifetimes) > 1.0  # spread out, not all at once


async def test_a_lent_connection_outlives_its_lifetime_until_it_comes_back() -> None:
    connect = Connector()
    async with open_pool(
        connect=connect, max_lifetime=10.0, cleanup_interval=1.0, idle_timeout=None
    ) as pool:
        started = anyio.current_time()
        async with pool.connection() as held:
            await anyio.sleep(30.0)
            assert held.closed_at is None
        await anyio.wait_all_tasks_blocked()  # its host task closes it
        assert held.closed_at == pytest.approx(started + 30.0)
        assert pool.stats.idle == 0


async def test_background_replacements_back_off_after_failures() -> None:
    connect = Connector(fail=4)
    async with open_pool(
        connect=connect,
        min_connections=1,
        connect_attempts=1,
        retry_backoff=1.0,
        retry_backoff_max=4.0,
    ) as pool:
        await pool.wait_ready(timeout=60.0)
    # failed at 0, then waited 1, 2, 4 (capped) before each new try
    assert _gaps(connect.attempts) == pytest.approx([1.0, 2.0, 4.0, 4.0])


async def test_a_borrower_does_not_wait_out_a_background_back_off() -> None:
    connect = Connector(fail=3)
    async with open_pool(
        connect=connect,
        min_connections=1,
        max_connections=10,
        connect_attempts=1,
        retry_backoff=5.0,
        retry_backoff_max=10.0,
        acquire_timeout=1.0,
    ) as pool:
        # failed at 0, 5 and 15: the replacement now backs off until 25
        await anyio.sleep(16.0)
        assert len(connect.attempts) == 3
        started = anyio.current_time()
        async with pool.connection() as resource:
            assert anyio.current_time() - started == pytest.approx(0.0)
            assert resource.closed_at is None


async def test_exit_cancels_a_handshake_in_flight_at_once() -> None:
    connect = Connector(handshake=1000.0)
    started = anyio.current_time()
    async with open_pool(connect=connect, min_connections=1, close_timeout=2.0):
        await anyio.sleep(1.0)
    assert anyio.current_time() - started == pytest.approx(1.0)
    assert len(connect.attempts) == 1


async def test_exit_at_once_cancels_a_handshake_that_has_not_started() -> None:
    connect = Connector(handshake=1000.0)
    started = anyio.current_time()
    async with open_pool(connect=connect, min_connections=1, close_timeout=2.0) as pool:
        pool.prewarm(1)
    assert anyio.current_time() - started == pytest.approx(0.0)
    assert len(connect.attempts) <= 1
