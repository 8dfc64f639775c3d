"""Capacity (guarantee 1), exclusivity (2), fairness (3) and acquire timeouts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from anyio import wait_all_tasks_blocked
from anyio.abc import TaskStatus
from anyio.lowlevel import checkpoint
from httpx_ws import AsyncWebSocketSession

from anyio_wspool import (
    PoolClosed,
    PoolOverloaded,
    PoolStats,
    PoolTimeout,
    WebSocketPool,
)

from ._stacks import open_pool
from ._util import until
from ._wsserver import WSServer

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("stack")]


def assert_within_capacity(stats: PoolStats) -> None:
    held = stats.connecting + stats.idle + stats.in_use + stats.draining + stats.closing
    assert held <= stats.max_connections, stats


async def test_fifty_borrowers_never_exceed_five_connections(ws_server: WSServer) -> None:
    in_use: set[int] = set()
    peak = 0

    async with open_pool(ws_server.url, max_connections=5) as pool:

        async def borrower(n: int) -> None:
            nonlocal peak
            for i in range(4):
                async with pool.connection() as ws:
                    assert id(ws) not in in_use, "a connection was lent to two borrowers"
                    in_use.add(id(ws))
                    peak = max(peak, len(in_use))
                    assert_within_capacity(pool.stats)
                    await ws.send_text(f"{n}.{i}")
                    assert await ws.receive_text() == f"{n}.{i}"
                    in_use.discard(id(ws))

        async with anyio.create_task_group() as tg:
            for n in range(50):
                tg.start_soon(borrower, n)
        stats = pool.stats
    assert ws_server.max_open <= 5
    assert ws_server.handshakes == 5
    assert peak == 5
    assert stats.acquired == 200
    assert stats.waiting == 0


async def test_waiters_are_served_first_come_first_served(ws_server: WSServer) -> None:
    order: list[int] = []
    async with open_pool(ws_server.url, max_connections=1) as pool:
        held = await pool.acquire()

        async def borrower(n: int) -> None:
            async with pool.connection():
                order.append(n)

        async with anyio.create_task_group() as tg:
            for n in range(10):
                tg.start_soon(borrower, n)
                await wait_all_tasks_blocked()
            assert pool.stats.waiting == 10
            await pool.release(held)
    assert order == list(range(10))
    assert ws_server.handshakes == 1


async def test_a_newcomer_does_not_overtake_waiters(ws_server: WSServer) -> None:
    order: list[str] = []
    async with open_pool(ws_server.url, max_connections=1) as pool:
        held = await pool.acquire()

        async def borrower(name: str, *, task_status: TaskStatus[None]) -> None:
            task_status.started()
            async with pool.connection():
                order.append(name)
                await checkpoint()

        async with anyio.create_task_group() as tg:
            await tg.start(borrower, "waiter")
            await wait_all_tasks_blocked()
            await pool.release(held)
            # The connection is on its way to the waiter: a newcomer queues behind it.
            async with pool.connection():
                order.append("newcomer")
    assert order == ["waiter", "newcomer"]


async def test_acquire_timeout_raises_pool_timeout_with_context(ws_server: WSServer) -> None:
    async with open_pool(
        ws_server.url, max_connections=1, min_connections=1, acquire_timeout=0.05
    ) as pool:
        await pool.wait_ready(timeout=5)  # the timeout is for waiting, not for this handshake
        async with pool.connection():
            with pytest.raises(PoolTimeout) as info:
                async with pool.connection():
                    pytest.fail("lent a second connection beyond capacity")
        message = str(info.value)
        assert "within 0.05 s" in message or "within 0.0" in message
        assert "1 in use" in message
        assert "max_connections=1" in message
        assert isinstance(info.value, TimeoutError)
        assert pool.stats.acquire_timeouts == 1
        assert pool.stats.waiting == 0


async def test_acquire_timeout_zero_fails_at_once_when_full(ws_server: WSServer) -> None:
    async with open_pool(ws_server.url, max_connections=1, acquire_timeout=0) as pool:
        async with pool.connection():
            started = anyio.current_time()
            with pytest.raises(PoolTimeout):
                await pool.acquire()
            assert anyio.current_time() - started < 1.0
        # with capacity free, timeout 0 still opens a connection
        async with pool.connection() as ws:
            await ws.send_text("x")
            assert await ws.receive_text() == "x"


async def test_one_task_may_hold_several_leases(ws_server: WSServer) -> None:
    async with open_pool(ws_server.url, max_connections=2, acquire_timeout=0) as pool:
        async with pool.connection() as a, pool.connection() as b:
            assert a is not b
            for ws in (a, b):
                await ws.send_text("x")
                assert await ws.receive_text() == "x"
            with pytest.raises(PoolTimeout):
                async with pool.connection():
                    pytest.fail("a third lease beyond max_connections=2")
        assert pool.stats.idle == 2


async def test_cancelled_waiter_leaves_no_trace(ws_server: WSServer) -> None:
    async with open_pool(ws_server.url, max_connections=1) as pool:
        held = await pool.acquire()
        with anyio.CancelScope() as scope:

            async def cancel_when_waiting() -> None:
                await wait_all_tasks_blocked()
                assert pool.stats.waiting == 1
                scope.cancel()

            async with anyio.create_task_group() as tg:
                tg.start_soon(cancel_when_waiting)
                await pool.acquire()
        assert scope.cancelled_caught
        assert pool.stats.waiting == 0
        await pool.release(held)
        assert pool.stats.idle == 1
        async with pool.connection() as ws:
            assert ws is held


async def test_waiter_cancelled_right_after_hand_over_loses_nothing(
    ws_server: WSServer,
) -> None:
    async with open_pool(ws_server.url, max_connections=1) as pool:
        held = await pool.acquire()
        got: list[AsyncWebSocketSession] = []

        async def second() -> None:
            async with pool.connection() as ws:
                await ws.send_text("x")
                assert await ws.receive_text() == "x"
                got.append(ws)

        first_scope = anyio.CancelScope()

        async def first() -> None:
            with first_scope:
                async with pool.connection():
                    await anyio.sleep_forever()

        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            await wait_all_tasks_blocked()
            tg.start_soon(second)  # queues behind the first waiter
            await wait_all_tasks_blocked()
            assert pool.stats.waiting == 2
            # Hand the connection to the first waiter and cancel it before it runs:
            # cancellation lands inside its block, which closes the connection,
            # and the second waiter gets a new one.
            await pool.release(held)
            first_scope.cancel()
        assert len(got) == 1
        assert got[0] is not held
        stats = pool.stats
        assert (stats.in_use, stats.waiting, stats.discarded, stats.opened) == (0, 0, 1, 2)


async def test_close_while_waiting_raises_pool_closed(ws_server: WSServer) -> None:
    errors: list[BaseException] = []
    async with open_pool(ws_server.url, max_connections=1) as pool:
        held = await pool.acquire()

        async def waiter() -> None:
            try:
                await pool.acquire()
            except PoolClosed as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(waiter)
            await wait_all_tasks_blocked()
            await pool.aclose()
        await pool.release(held)  # a no-op once the pool is closed
    assert len(errors) == 3
    assert pool.is_closed
    with pytest.raises(PoolClosed):
        await pool.acquire()
    await ws_server.wait_until(lambda: ws_server.open_connections == 0)


async def test_max_connections_can_grow_and_shrink(ws_server: WSServer) -> None:
    async with open_pool(ws_server.url, max_connections=1) as pool:
        held = await pool.acquire()
        async with anyio.create_task_group() as tg:
            tg.start_soon(pool.acquire)
            await wait_all_tasks_blocked()
            assert pool.stats.waiting == 1
            pool.max_connections = 3  # the waiter gets a new connection
        assert pool.stats.in_use == 2
        pool.max_connections = 1
        assert pool.max_connections == 1
        # Shrinking never takes a connection from its borrower: the pool is over
        # capacity until they come back, and closes what it cannot keep.
        await pool.release(held)
        assert pool.stats.in_use == 1
        await ws_server.wait_until(lambda: ws_server.open_connections == 1)
        assert pool.stats.idle == 0
        with pytest.raises(ValueError, match="max_connections"):
            pool.max_connections = 0


async def test_repr_shows_state_and_gauges(ws_server: WSServer) -> None:
    pool: WebSocketPool[AsyncWebSocketSession] = open_pool(ws_server.url, max_connections=3)
    assert "not started" in repr(pool)
    async with pool:
        async with pool.connection():
            text = repr(pool)
            assert "1 in use" in text
            assert "0 idle" in text
            assert "max_connections=3" in text
        assert "1 idle" in repr(pool)
    assert "closed" in repr(pool)


async def test_each_waiter_gets_its_own_acquire_timeout(ws_server: WSServer) -> None:
    waited: dict[str, float] = {}
    async with open_pool(
        ws_server.url, max_connections=1, min_connections=1, acquire_timeout=0.2
    ) as pool:
        await pool.wait_ready(timeout=5)
        held = await pool.acquire()

        async def waiter(name: str) -> None:
            started = anyio.current_time()
            with pytest.raises(PoolTimeout):
                await pool.acquire()
            waited[name] = anyio.current_time() - started

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter, "first")
            await anyio.sleep(0.1)  # the second queues later, and so times out later
            tg.start_soon(waiter, "second")
        assert pool.stats.acquire_timeouts == 2
        assert pool.stats.waiting == 0
        await pool.release(held)
    # each waited its whole acquire_timeout (timer resolution aside), not the head's
    assert 0.18 <= waited["first"] < 2
    assert 0.18 <= waited["second"] < 2


async def test_max_waiting_turns_away_exactly_the_one_too_many(ws_server: WSServer) -> None:
    async with open_pool(ws_server.url, max_connections=1, max_waiting=3) as pool:
        held = await pool.acquire()
        waiting: list[anyio.CancelScope] = []

        async def wait_for_one(scope: anyio.CancelScope) -> None:
            with scope:
                await pool.acquire()

        async with anyio.create_task_group() as tg:
            for _ in range(3):
                scope = anyio.CancelScope()
                waiting.append(scope)
                tg.start_soon(wait_for_one, scope)
            await until(lambda: pool.stats.waiting == 3)
            with pytest.raises(PoolOverloaded, match="max_waiting=3"):
                await pool.acquire()
            assert pool.stats.overloaded == 1
            assert pool.stats.waiting == 3
            for scope in waiting:
                scope.cancel()
        await pool.release(held)
        # with room to open a connection, nobody waits for capacity
        async with open_pool(ws_server.url, max_connections=2, max_waiting=0) as other:
            async with other.connection(), other.connection():
                with pytest.raises(PoolOverloaded):
                    await other.acquire()


@pytest.mark.parametrize("max_connecting", [1, 4])
async def test_max_connecting_bounds_the_handshakes_in_flight(
    ws_server: WSServer, max_connecting: int
) -> None:
    # A cold start: 40 borrowers on an empty pool of 40, against a server that
    # takes 20 ms to answer each upgrade. The server counts the upgrades it has
    # not answered yet: never more than max_connecting, and every borrower served.
    ws_server.handshake_delay = 0.02
    served = 0

    async def borrow(pool: WebSocketPool[Any]) -> None:
        nonlocal served
        async with pool.connection() as ws:
            await ws.send_text("x")
            assert await ws.receive_text() == "x"
            served += 1

    with anyio.fail_after(10):
        async with open_pool(
            ws_server.url, max_connections=40, max_connecting=max_connecting
        ) as pool:
            async with anyio.create_task_group() as tg:
                for _ in range(40):
                    tg.start_soon(borrow, pool)
    assert served == 40
    assert ws_server.max_upgrading == max_connecting


async def test_a_loop_whose_clock_was_replaced_still_drives_acquire_timeout(
    anyio_backend: tuple[str, object],
) -> None:
    # A test harness may give the asyncio loop a clock of its own (virtual
    # time): the pool's deadlines must be on that clock, not on time.monotonic.
    if anyio_backend[0] != "asyncio":
        pytest.skip("replacing the loop's clock is an asyncio affair")
    import asyncio

    loop = asyncio.get_running_loop()
    real_time = loop.time
    loop.time = lambda: real_time() + 10_000.0  # type: ignore[method-assign]
    try:

        @asynccontextmanager
        async def resource() -> AsyncIterator[object]:
            yield object()

        async with open_pool(connect=resource, max_connections=1, acquire_timeout=5) as pool:
            held = await pool.acquire()
            got: list[object] = []

            async def borrow() -> None:
                got.append(await pool.acquire())

            async with anyio.create_task_group() as tg:
                tg.start_soon(borrow)
                await anyio.wait_all_tasks_blocked()
                await pool.release(held)
            assert got == [held]
    finally:
        del loop.time
