"""The generic core: any resource opened by a connector (livekit's connect/close pair)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio
import pytest
from anyio import wait_all_tasks_blocked
from anyio.abc import TaskGroup

from anyio_wspool import PoolClosed, PoolTimeout, open_pool

from ._fake import Connector, Resource, enter_in
from ._util import until

pytestmark = pytest.mark.anyio


async def test_generic_connector_lends_and_reuses_a_resource() -> None:
    connector = Connector()
    async with open_pool(connect=connector, max_connections=2) as pool:
        async with pool.connection() as first:
            assert isinstance(first, Resource)
        async with pool.connection() as second:
            assert second is first
        assert pool.uri is None
        assert "connector" in repr(pool)
    assert connector.opened == connector.closed == [first]
    assert first.closed


async def test_connect_and_close_pair() -> None:
    closed: list[Resource] = []

    async def connect() -> Resource:
        await anyio.lowlevel.checkpoint()
        return Resource()

    async def close(resource: Resource) -> None:
        await anyio.lowlevel.checkpoint()
        resource.closed = True
        closed.append(resource)

    async with open_pool(connect=connect, close=close) as pool:
        async with pool.connection() as a, pool.connection() as b:
            assert a is not b
        assert pool.stats.idle == 2
    assert sorted(r.id for r in closed) == sorted([a.id, b.id])


async def test_connector_error_reaches_the_borrower_with_its_type() -> None:
    connector = Connector(fail=3)
    async with open_pool(connect=connector, retry_backoff=0.001) as pool:
        with pytest.raises(ConnectionRefusedError, match="refused"):
            await pool.acquire()
        assert pool.stats.connect_failures == 3
        async with pool.connection() as resource:
            assert not resource.closed


async def test_connector_that_returns_no_context_manager_is_reported() -> None:
    def not_a_manager() -> AbstractAsyncContextManager[int]:
        return 42  # type: ignore[return-value]

    async with open_pool(connect=not_a_manager) as pool:
        with pytest.raises(TypeError, match="async context manager"):
            await pool.acquire()


async def test_slow_connector_is_bounded_by_connect_timeout() -> None:
    @asynccontextmanager
    async def never() -> AsyncIterator[Resource]:
        await anyio.sleep_forever()
        yield Resource()  # pragma: no cover

    async with open_pool(connect=never, connect_timeout=0.05, connect_attempts=1) as pool:
        with pytest.raises(TimeoutError, match="took longer than") as info:
            await pool.acquire()
        assert not isinstance(info.value, PoolTimeout)
        assert pool.stats.acquire_timeouts == 0  # a connect timeout, not a PoolTimeout


async def test_close_callback_is_bounded_and_runs_on_cancellation() -> None:
    closed: list[Resource] = []

    async def connect() -> Resource:
        return Resource()

    async def slow_close(resource: Resource) -> None:
        closed.append(resource)
        await anyio.sleep_forever()

    with anyio.fail_after(5):
        async with open_pool(connect=connect, close=slow_close, close_timeout=0.05) as pool:
            async with pool.connection():
                pass
    assert len(closed) == 1


async def test_capacity_bounds_a_generic_pool_too() -> None:
    connector = Connector()
    peak = 0
    active = 0
    async with open_pool(connect=connector, max_connections=3) as pool:

        async def borrower() -> None:
            nonlocal peak, active
            async with pool.connection():
                active += 1
                peak = max(peak, active)
                await anyio.lowlevel.checkpoint()
                active -= 1

        async with anyio.create_task_group() as tg:
            for _ in range(30):
                tg.start_soon(borrower)
    assert peak <= 3
    assert len(connector.opened) <= 3
    assert {r.id for r in connector.closed} == {r.id for r in connector.opened}


async def test_many_waiters_share_failures_without_a_storm() -> None:
    # 20 borrowers, a server that refuses everything: the connection attempts
    # in flight never exceed the capacity, and every borrower gets the error.
    attempts_in_flight = 0
    peak = 0

    @asynccontextmanager
    async def refused() -> AsyncIterator[Resource]:
        nonlocal attempts_in_flight, peak
        attempts_in_flight += 1
        peak = max(peak, attempts_in_flight)
        try:
            await wait_all_tasks_blocked()
            if attempts_in_flight:
                raise ConnectionRefusedError("down")
        finally:
            attempts_in_flight -= 1
        yield Resource()  # pragma: no cover

    errors: list[BaseException] = []
    async with open_pool(connect=refused, max_connections=4, retry_backoff=0.001) as pool:

        async def borrower() -> None:
            try:
                await pool.acquire()
            except ConnectionRefusedError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(borrower)
        assert pool.stats.waiting == 0
    assert len(errors) == 20
    assert peak <= 4


async def test_a_resource_that_dies_in_the_background_is_contained(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Like an httpx-ws session whose reader task crashes: the resource's own
    # task group raises into the task hosting it.
    crash = anyio.Event()

    @asynccontextmanager
    async def fragile() -> AsyncIterator[Resource]:
        async def background() -> None:
            await crash.wait()
            raise KeyError("the reader crashed")

        async with anyio.create_task_group() as tg:
            tg.start_soon(background)
            yield Resource()
            tg.cancel_scope.cancel()

    async with open_pool(connect=fragile, max_connections=2) as pool:
        async with pool.connection() as first:
            pass
        crash.set()
        with anyio.fail_after(5):
            while pool.stats.idle:
                await wait_all_tasks_blocked()
        assert pool.stats.closed == 1
        crash = anyio.Event()  # the next resource does not crash
        async with pool.connection() as second:
            assert second is not first
    assert any("failed in the background" in r.getMessage() for r in caplog.records)


async def test_a_connection_opened_for_a_cancelled_borrower_is_kept() -> None:
    gate = anyio.Event()
    opened: list[Resource] = []

    @asynccontextmanager
    async def slow() -> AsyncIterator[Resource]:
        await gate.wait()
        resource = Resource()
        opened.append(resource)
        yield resource

    async with open_pool(connect=slow) as pool:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(pool.acquire)
                await wait_all_tasks_blocked()
                assert pool.stats.connecting == 1
                scope.cancel()
        assert pool.stats.waiting == 0
        gate.set()
        with anyio.fail_after(5):
            while not pool.stats.idle:
                await wait_all_tasks_blocked()
        assert pool.stats.in_use == 0
        async with pool.connection() as resource:
            assert resource is opened[0]
    assert len(opened) == 1


class GatedConnector(Connector):
    """A :class:`Connector` whose openings after the first ``free`` ones wait for ``gate``."""

    def __init__(self, free: int = 1) -> None:
        super().__init__()
        self.gate = anyio.Event()
        self.calls = 0
        self.free = free

    @asynccontextmanager
    async def __call__(self) -> AsyncIterator[Resource]:
        self.calls += 1
        if self.calls > self.free:
            await self.gate.wait()
        async with super().__call__() as resource:
            yield resource


@pytest.mark.parametrize("lease", ["acquire", "connection"])
async def test_a_borrower_queued_behind_a_fresh_one_takes_the_idle_connection(lease: str) -> None:
    # An idle connection, and a borrower that asked for a new one waits for
    # its handshake at the head of the queue. A plain borrower that comes
    # next takes the idle connection at once: the first one does not want it,
    # so nobody is passed over, and it is not closed to make room.
    connector = GatedConnector()
    async with open_pool(connect=connector, max_connections=2) as pool:
        async with pool.connection() as idle:
            pass
        got: list[Resource] = []

        async def fresh() -> None:
            async with pool.new_connection() as new:
                got.append(new)

        async def plain() -> None:
            if lease == "acquire":
                resource = await pool.acquire()
                got.append(resource)
                await pool.release(resource)
            else:
                async with pool.connection() as resource:
                    got.append(resource)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(fresh)
                await wait_all_tasks_blocked()
                assert pool.stats.waiting == 1
                tg.start_soon(plain)
                await wait_all_tasks_blocked()
                assert got == [idle]  # served without waiting for the handshake
                assert not idle.closed
                connector.gate.set()
            assert len(got) == 2
            assert got[1] is not idle
            assert connector.calls == 2


async def test_two_borrowers_of_new_connections_at_a_full_pool_are_both_served() -> None:
    # A full pool, two borrowers asking for new connections. Each connection
    # given back makes room for the first of them whose new connection is not
    # being opened yet: neither has to wait for the other to finish.
    connector = GatedConnector(free=2)
    async with open_pool(connect=connector, max_connections=2) as pool:
        first, second = await pool.acquire(), await pool.acquire()
        got: list[Resource] = []

        async def fresh() -> None:
            resource = await pool.acquire_new()
            got.append(resource)  # held until the end

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(fresh)
                await wait_all_tasks_blocked()
                tg.start_soon(fresh)
                await wait_all_tasks_blocked()
                assert pool.stats.waiting == 2
                await pool.release(first)  # room for the first one's new connection
                await wait_all_tasks_blocked()
                assert pool.stats.connecting == 1  # its handshake waits for the gate
                await pool.release(second)  # room for the second one's
                await wait_all_tasks_blocked()
                assert second.closed
                connector.gate.set()
            assert len(got) == 2
            assert first.closed
            assert second.closed
            assert {first, second}.isdisjoint(got)
            assert pool.stats.in_use == 2


# -- one pool.connection() object ---------------------------------------------------------


async def _queue_behind(pool: Any, holder: Resource, tg: TaskGroup) -> None:
    """Queue one borrower at ``pool`` (full: ``holder`` is lent), so that the next one waits too."""

    async def first_waiter() -> None:
        async with pool.connection() as resource:
            assert resource is holder

    tg.start_soon(first_waiter)
    await until(lambda: pool.stats.waiting == 1)


async def test_a_connection_block_object_refuses_a_second_entry_while_in_use() -> None:
    async with open_pool(connect=Connector(), max_connections=1) as pool:
        holder = await pool.acquire()
        lease = pool.connection()
        outcome: list[object] = []

        async def borrow() -> None:
            async with lease as resource:
                outcome.append(resource)

        async with anyio.create_task_group() as tg:
            await _queue_behind(pool, holder, tg)
            tg.start_soon(borrow)  # queues behind the first waiter: a busy pool
            await until(lambda: pool.stats.waiting == 2)
            with pytest.raises(RuntimeError, match="already in use"):
                await lease.__aenter__()  # while it waits
            assert pool.stats.waiting == 2
            await pool.release(holder)
        assert outcome == [holder]  # served once, after the first waiter
        async with lease as resource:  # usable again once its block ended
            assert resource is holder
            with pytest.raises(RuntimeError, match="already in use"):
                await lease.__aenter__()  # while it holds a connection
        assert pool.stats.in_use == 0


async def test_a_connection_block_object_is_usable_again_after_a_timeout() -> None:
    async with open_pool(connect=Connector(), max_connections=1, acquire_timeout=0.5) as pool:
        holder = await pool.acquire()
        lease = pool.connection()

        async def first_waiter() -> None:
            with pytest.raises(PoolTimeout):
                await pool.acquire()

        async with anyio.create_task_group() as tg:
            tg.start_soon(first_waiter)  # it times out too
            await until(lambda: pool.stats.waiting == 1)
            with pytest.raises(PoolTimeout):
                async with lease:  # a busy pool: it queues itself
                    pytest.fail("lent a connection at a full pool")
        assert pool.stats.waiting == 0
        await pool.release(holder)
        async with lease as resource:
            assert resource is holder
        assert pool.stats.in_use == 0
        assert pool.stats.acquire_timeouts == 2


async def test_a_connection_block_object_is_usable_again_after_a_cancelled_wait() -> None:
    async with open_pool(connect=Connector(), max_connections=1) as pool:
        holder = await pool.acquire()
        lease = pool.connection()
        async with anyio.create_task_group() as tg:
            await _queue_behind(pool, holder, tg)
            scope = anyio.CancelScope()
            tg.start_soon(enter_in, lease, scope)  # a busy pool: it queues itself
            await until(lambda: pool.stats.waiting == 2)
            scope.cancel()
            await until(lambda: pool.stats.waiting == 1)
            await pool.release(holder)  # to the first waiter
        assert pool.stats.waiting == 0
        async with lease as resource:
            assert resource is holder
        assert pool.stats.in_use == 0


async def test_lease_counters_keep_the_leases_of_closed_connections() -> None:
    connector = Connector()
    async with open_pool(connect=connector, max_connections=1) as pool:
        for _ in range(3):
            async with pool.connection():
                pass
        first = await pool.acquire()
        await pool.release(first, discard=True)  # its 4th lease; then it closes
        await until(lambda: connector.closed == [first])
        for _ in range(2):
            async with pool.connection() as second:
                assert second is not first
        stats = pool.stats
        assert (stats.acquired, stats.reused) == (6, 4)  # 4 + 2 leases; 3 + 1 reused
    stats = pool.stats
    assert (stats.acquired, stats.reused) == (6, 4)


# -- a connection given back at a busy pool -----------------------------------------------
#
# At a busy pool a connection given back goes straight to the first waiter,
# with as few checks as the pool's options allow; these are the cases where it
# must not.


async def _waiter(pool: Any, got: list[Resource]) -> None:
    async with pool.connection() as resource:
        got.append(resource)


async def test_a_connection_given_back_after_invalidate_is_not_handed_to_a_waiter() -> None:
    connector = Connector()
    got: list[Resource] = []
    async with open_pool(connect=connector, max_connections=1) as pool:
        async with anyio.create_task_group() as tg:
            async with pool.connection() as first:
                tg.start_soon(_waiter, pool, got)
                await until(lambda: pool.stats.waiting == 1)
                pool.invalidate()
        assert got != [first]
        assert len(got) == 1
    assert connector.opened == [first, got[0]]
    assert first.closed


async def test_a_connection_given_back_to_a_shrunk_pool_is_not_handed_to_a_waiter() -> None:
    connector = Connector()
    got: list[Resource] = []
    async with open_pool(connect=connector, max_connections=2) as pool:
        held = await pool.acquire()
        async with anyio.create_task_group() as tg:
            async with pool.connection() as first:
                tg.start_soon(_waiter, pool, got)
                await until(lambda: pool.stats.waiting == 1)
                pool.max_connections = 1  # two are open: one too many
            await until(lambda: first.closed)
            assert got == []
            assert pool.stats.waiting == 1
            await pool.release(held)
        assert got == [held]
    assert connector.opened == [held, first]


async def test_an_expired_connection_given_back_is_not_handed_to_a_waiter() -> None:
    connector = Connector()
    got: list[Resource] = []
    async with open_pool(
        connect=connector, max_connections=1, max_lifetime=0.1, cleanup_interval=60
    ) as pool:
        async with anyio.create_task_group() as tg:
            async with pool.connection() as first:
                tg.start_soon(_waiter, pool, got)
                await until(lambda: pool.stats.waiting == 1)
                await anyio.sleep(0.15)  # past its lifetime (no sweep runs in time)
        assert got != [first]
        assert len(got) == 1
    assert connector.opened == [first, got[0]]


async def test_a_connection_given_back_goes_to_a_plain_waiter_behind_a_fresh_one() -> None:
    connector = GatedConnector(free=1)
    plain: list[Resource] = []
    fresh: list[Resource] = []
    async with open_pool(connect=connector, max_connections=2) as pool:
        async with anyio.create_task_group() as tg:
            async with pool.connection() as first:
                tg.start_soon(_new_waiter, pool, fresh)  # its handshake waits for the gate
                await until(lambda: pool.stats.connecting == 1)
                tg.start_soon(_waiter, pool, plain)
                await until(lambda: pool.stats.waiting == 2)
            await until(lambda: plain == [first])  # not the first in line: it wants a new one
            assert fresh == []
            connector.gate.set()
        assert len(fresh) == 1
        assert fresh[0] is not first
    assert connector.opened == [first, fresh[0]]


async def _new_waiter(pool: Any, got: list[Resource]) -> None:
    async with pool.new_connection() as resource:
        got.append(resource)


async def test_shrinking_does_not_count_a_connection_already_closing() -> None:
    # Three idle connections at max_connections=3; one is being closed (its
    # close waits). Shrinking to 2 leaves two open connections: the one closing
    # is already on its way out, so no idle one is closed in its place.
    release_close = anyio.Event()
    connector = Connector()

    @asynccontextmanager
    async def slow_close() -> AsyncIterator[Resource]:
        async with connector() as resource:
            try:
                yield resource
            finally:
                if resource is doomed[0]:
                    with anyio.CancelScope(shield=True):
                        await release_close.wait()

    doomed: list[Resource] = []
    async with open_pool(connect=slow_close, max_connections=3) as pool:
        held = [await pool.acquire() for _ in range(3)]
        doomed.append(held[0])
        await pool.release(held[0], discard=True)
        for resource in held[1:]:
            await pool.release(resource)
        await until(lambda: pool.stats.closing == 1)
        pool.max_connections = 2
        assert pool.stats.idle == 2
        assert pool.stats.closing == 1
        release_close.set()
        await until(lambda: pool.stats.closing == 0)
        assert pool.stats.idle == 2
        assert connector.closed == doomed


async def _raises_at(check: Any, shape: str) -> bool:
    """Whether ``check()`` raises a cancellation in cancel scopes of ``shape``."""
    reached = False
    if shape == "none":
        await check()
        reached = True
    elif shape == "outer cancelled":
        with anyio.CancelScope() as outer:
            outer.cancel()
            with anyio.CancelScope():
                await check()
                reached = True
    elif shape == "shielded inside a cancelled one":
        with anyio.CancelScope() as outer:
            outer.cancel()
            with anyio.CancelScope(shield=True):
                await check()
                reached = True
    elif shape == "cancelled inside a shielded one":
        with anyio.CancelScope(shield=True), anyio.CancelScope() as inner:
            inner.cancel()
            await check()
            reached = True
    elif shape == "deadline passed":
        with anyio.move_on_after(-1):
            await check()
            reached = True
    return not reached


SHAPES = [
    ("none", False),
    ("outer cancelled", True),
    ("shielded inside a cancelled one", False),
    ("cancelled inside a shielded one", True),
    ("deadline passed", True),
]


@pytest.mark.parametrize(("shape", "raises"), SHAPES)
async def test_the_pool_cancellation_check_agrees_with_anyio(
    anyio_backend_name: str, shape: str, raises: bool
) -> None:
    # The lending path's cancellation check is bound when the pool opens; on
    # asyncio it is a quicker test in front of anyio's own (which it reads
    # anyio's state for): it must raise exactly where anyio's raises.
    async with open_pool(connect=Connector()) as pool:
        cancel_check = pool._cancel_check
        if anyio_backend_name == "asyncio":
            assert cancel_check.__name__ == "cancel_check", (
                "anyio's asyncio state is not what the quick check reads: it fell back to "
                "anyio's own check (correct, but a microsecond more a lease)"
            )
        synchronous: list[bool] = []

        async def check() -> None:
            # As the pool makes it: await the check only if the test returned one.
            awaitable = cancel_check()
            synchronous.append(awaitable is None)
            if awaitable is not None:
                await awaitable

        assert await _raises_at(anyio.lowlevel.checkpoint_if_cancelled, shape) is raises
        assert await _raises_at(check, shape) is raises
        if anyio_backend_name == "asyncio":
            # The quick test answers alone exactly when there is nothing to raise.
            assert synchronous == [not raises]
        # And the pool lends as usual afterwards (no cancellation left behind).
        async with pool.connection():
            pass


@pytest.mark.parametrize("lease", ["connection", "acquire"])
async def test_a_borrower_handed_a_connection_as_the_pool_closes_gets_pool_closed(
    lease: str,
) -> None:
    # A connection is handed to the waiting borrower, and the pool closes in
    # the same step, before the borrower's task runs. It was still waiting
    # when aclose() began, so it gets PoolClosed like every waiting borrower,
    # not a connection being closed; its lease is not counted.
    outcome: list[str] = []
    async with open_pool(connect=Connector(), max_connections=1) as pool:
        held = await pool.acquire()

        async def borrower() -> None:
            try:
                if lease == "connection":
                    async with pool.connection():
                        outcome.append("lent")
                else:
                    await pool.acquire()
                    outcome.append("lent")
            except PoolClosed:
                outcome.append("closed")

        async with anyio.create_task_group() as tg:
            tg.start_soon(borrower)
            await until(lambda: pool.stats.waiting == 1)
            await pool.release(held)  # handed to the borrower (it has not run yet)
            assert pool.stats.waiting == 0
            await pool.aclose()
    assert outcome == ["closed"]
    assert pool.stats.acquired == 1
