"""The third outside review of the lending path: each test is a break it found.

Written by a reviewer who had not seen the code, against SPEC.md, after the
fixes of tests/test_hot_path_review.py and tests/test_lease_review2.py. Each
test says what is promised and what the pool did instead; each failed on the
code it was written against, and passes since the fix. Three had one cause: a
cancelled waiter stays queued until its task runs, and only the hand-off
skipped it; the queue's other readers now skip it too.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc
import anyio.lowlevel
import pytest

from anyio_wspool import PoolOverloaded, open_pool

from ._fake import Connector, Resource
from ._util import until
from ._wsserver import WSServer

pytestmark = pytest.mark.anyio


# -- make room for a new_connection() borrower that was cancelled ----------------------


async def test_a_connection_given_back_is_not_closed_for_a_cancelled_new_borrower() -> None:
    # Promised (SPEC guarantee 6): "a cancelled waiter leaves no trace"; the
    # previous review's fix: a hand-off "learns at once whether its waiter was
    # cancelled" and passes the connection on to the next waiter; a cancelled
    # new_connection() borrower "closes no idle connection to make room"
    # (tests/test_lease_review2.py); guarantee 3, FIFO.
    # What happened (every backend): a new_connection() borrower F waits at a
    # full pool, a plain borrower P behind it. F's scope is cancelled, and in
    # the same step the block holding the only connection ends. F's wake-up is
    # cancelled at once (asyncio: the task's cancellation cancels its future;
    # trio: the park is aborted), but F is still first in the queue until its
    # task runs, and _put_back's make-room branch (first_needing_room) does not
    # look at that: it closes the healthy connection (Reason.MAKE_ROOM) for F,
    # who then leaves. P, who could have had that connection at once, waits
    # for a new one to be opened.
    connector = Connector()
    got: list[Resource] = []
    async with open_pool(connect=connector, max_connections=1) as pool:
        scope = anyio.CancelScope()

        async def fresh() -> None:
            with scope:
                async with pool.new_connection():
                    got.append(Resource())  # (never: it was cancelled while it waited)

        async def plain() -> None:
            async with pool.connection() as resource:
                got.append(resource)

        async with anyio.create_task_group() as tg:
            async with pool.connection() as first:
                tg.start_soon(fresh)
                await until(lambda: pool.stats.waiting == 1)
                tg.start_soon(plain)
                await until(lambda: pool.stats.waiting == 2)
                scope.cancel()  # F is cancelled ...
            # ... and, in the same step, the connection comes back.
        assert scope.cancelled_caught
        assert connector.closed == [], f"closed for a cancelled borrower: {connector.closed}"
        assert got == [first], f"the plain borrower behind it got {got}, not {first}"
        assert len(connector.opened) == 1


# -- check_on_acquire and FIFO, with acquire_timeout=None ----------------------------------


async def test_a_borrower_whose_ping_failed_does_not_pass_an_earlier_waiter_without_timeout(
    ws_server: WSServer,
) -> None:
    # Promised (SPEC guarantee 3): "waiting borrowers are served first come,
    # first served; a borrower whose check_on_acquire ping fails keeps its
    # place" -- its place, not a better one. The change under review: such a
    # borrower goes "ahead of waiters with a deadline not earlier than its
    # own", i.e. of those who came after it; acquire_timeout=None means
    # "waits forever" and changes nothing about the order.
    # What happened: with acquire_timeout=None every waiter's deadline is
    # math.inf, so WaiterQueue.add(first=True) moves *every* waiter behind the
    # borrower whose ping failed, those who were there before it included (a
    # new_connection() borrower, who waits while an idle connection is taken by
    # a plain borrower after it). The first connection that opens goes to the
    # later borrower. With acquire_timeout=30 the same run serves F first.
    order: list[str] = []
    with anyio.fail_after(20):
        async with open_pool(
            ws_server.url,
            max_connections=2,
            check_on_acquire=True,
            acquire_timeout=None,
            connect_timeout=0.5,
            close_timeout=2.5,
            keepalive_ping_interval_seconds=None,
        ) as pool:
            held = await pool.acquire()
            idle = await pool.acquire()
            await pool.release(idle)
            assert pool.stats.idle == 1
            # Both stop answering: pings, and the close frame of `held`, whose
            # closing then takes close_timeout (it makes room for F meanwhile).
            ws_server.freeze()
            await pool.release(held, discard=True)
            assert pool.stats.closing == 1

            async def fresh() -> None:
                async with pool.new_connection():
                    order.append("F")

            async def plain() -> None:
                async with pool.connection():
                    order.append("B")

            async with anyio.create_task_group() as tg:
                tg.start_soon(fresh)  # F comes first: waits for the room being made
                await until(lambda: pool.stats.waiting == 1)
                assert pool.stats.idle == 1
                tg.start_soon(plain)  # B comes after F, takes the idle one and pings it
                await until(lambda: pool.stats.idle == 0)
                # B's ping fails after connect_timeout; B queues again; then the
                # closing connections end and new ones open, one at a time.
    assert order == ["F", "B"], f"served in the order {order}; F came first"


# -- admission counts a cancelled waiter ----------------------------------------------------


async def test_a_cancelled_waiter_does_not_count_against_max_waiting() -> None:
    # Promised (SPEC, max_waiting): "at most this many borrowers wait for
    # capacity (...); one more fails at once with PoolOverloaded"; guarantee
    # 6: "a cancelled waiter leaves no trace"; the change under review: a
    # hand-off "learns at once whether its waiter was cancelled" (its wake-up
    # is cancelled with it, on every backend) and skips it.
    # What happened (every backend): with max_waiting=1, the one waiter is
    # cancelled; a borrower that asks in the same step is refused with
    # PoolOverloaded, because _enqueue's admission counts len(waiters), and
    # the cancelled waiter stays in the queue until its task runs, although
    # the pool can tell (as the hand-off does) that it is gone. The borrower
    # would have been the only one waiting, and the connection comes back
    # right after. (acquire_timeout=0 miscounts the same way: a borrower is
    # refused with PoolTimeout although the connection being opened for a
    # cancelled waiter would serve it.)
    connector = Connector()
    refused: list[BaseException] = []
    got: list[Resource] = []
    async with open_pool(connect=connector, max_connections=1, max_waiting=1) as pool:
        scope = anyio.CancelScope()
        done = anyio.Event()

        async def hold(*, task_status: anyio.abc.TaskStatus[None]) -> None:
            async with pool.connection():
                task_status.started()
                await done.wait()

        async def cancelled_waiter() -> None:
            with scope:
                async with pool.connection() as resource:
                    got.append(resource)  # (never: cancelled while it waited)

        async with anyio.create_task_group() as tg:
            await tg.start(hold)
            tg.start_soon(cancelled_waiter)
            await until(lambda: pool.stats.waiting == 1)
            scope.cancel()  # the only waiter leaves ...
            done.set()  # ... and the connection is about to come back
            try:
                with anyio.fail_after(5):
                    async with pool.connection() as resource:
                        got.append(resource)
            except PoolOverloaded as error:
                refused.append(error)
        assert scope.cancelled_caught
        assert refused == [], f"refused because of a cancelled waiter: {refused}"
        assert got == connector.opened[:1]
        assert pool.stats.overloaded == 0


# -- a connect error whose borrower was cancelled in the same step ---------------------------


async def test_a_connect_error_is_logged_when_its_borrower_was_cancelled_meanwhile(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Promised (SPEC guarantee 5): "no error of a background task reaches the
    # user's scope (...); it is logged, counted, and given to the borrower
    # that needed the connection"; the change under review: "_fail_first gives
    # a connect error to the first waiter still there". When no borrower is
    # waiting, the pool logs it ("could not open a connection to ...") and
    # backs off.
    # What happened (every backend): the only borrower is cancelled in the same
    # step as its connection attempt fails (here the connector itself cancels
    # it, a user callback; on trio another task doing so in that step has the
    # same effect whenever trio runs the host task first). The borrower is
    # still in the queue, so _connect_failed takes the "waiters" branch and
    # _fail_first finds nobody still there: the error is given to no one, not
    # logged (not even at DEBUG), and no background back-off is started. It
    # vanishes; only stats.connect_failures shows that something failed.
    caplog.set_level(logging.DEBUG, logger="anyio_wspool")
    scope = anyio.CancelScope()

    @asynccontextmanager
    async def connect() -> AsyncIterator[Resource]:
        await anyio.lowlevel.checkpoint()
        scope.cancel()  # the borrower it is opened for gives up, in this very step
        raise ConnectionRefusedError("handshake refused by 127.0.0.1")
        yield Resource()  # type: ignore[unreachable]  # (makes this an async generator)

    async with open_pool(connect=connect, connect_attempts=1) as pool:
        with scope:
            async with pool.connection():
                pytest.fail("lent a connection that failed to open")
        assert scope.cancelled_caught
        await until(lambda: pool.stats.connecting == 0 and pool.stats.closing == 0)
        assert pool.stats.connect_failures == 1
    logged = [r for r in caplog.records if "handshake refused" in r.getMessage()]
    assert logged, "the connect error was given to nobody and logged nowhere: " + repr(
        [r.getMessage() for r in caplog.records]
    )
