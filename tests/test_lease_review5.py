"""The break found by the fifth outside review of issue 18 (the cancellation check).

A borrower whose scope was cancelled is cancelled before anything else, as
anyio's own primitives do (a closed memory stream's ``receive()`` raises the
cancellation, not ``ClosedResourceError``): at a pool that is closed or not
open yet it used to get ``PoolClosed``, which escaped its cancelled scope (and
came out of a task group being shut down as an ``ExceptionGroup``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from anyio_wspool import PoolClosed, WebSocketPool, open_pool, open_pool_group

from ._fake import Connector

pytestmark = pytest.mark.anyio

UNUSED = "ws://127.0.0.1:9/never"  # a group refuses before it would connect


async def _enter(lease: AbstractAsyncContextManager[object]) -> None:
    async with lease:
        pytest.fail("a closed pool lent a connection")


BORROWS: dict[str, Callable[[WebSocketPool[Any]], Awaitable[object]]] = {
    "connection": lambda pool: _enter(pool.connection()),
    "new_connection": lambda pool: _enter(pool.new_connection()),
    "acquire": lambda pool: pool.acquire(),
    "acquire_new": lambda pool: pool.acquire_new(),
    "wait_ready": lambda pool: pool.wait_ready(1),
}


async def _pool(when: str) -> WebSocketPool[Any]:
    pool = open_pool(connect=Connector())
    if when == "closed":
        async with pool:
            await pool.aclose()
    return pool


@pytest.mark.parametrize("when", ["closed", "not opened"])
@pytest.mark.parametrize("borrow", sorted(BORROWS))
async def test_a_cancelled_borrower_at_a_closed_pool_is_cancelled(when: str, borrow: str) -> None:
    pool = await _pool(when)
    with anyio.CancelScope() as scope:
        scope.cancel()
        await BORROWS[borrow](pool)
    assert scope.cancelled_caught
    # Not cancelled, it gets PoolClosed as before; in a shielded scope too.
    with pytest.raises(PoolClosed):
        await BORROWS[borrow](pool)
    with anyio.CancelScope() as outer:
        outer.cancel()
        with anyio.CancelScope(shield=True), pytest.raises(PoolClosed):
            await BORROWS[borrow](pool)


@pytest.mark.parametrize("when", ["closed", "not opened"])
@pytest.mark.parametrize("borrow", ["connection", "acquire", "pool"])
async def test_a_cancelled_borrower_at_a_closed_group_is_cancelled(when: str, borrow: str) -> None:
    group = open_pool_group()
    if when == "closed":
        async with group:
            await group.aclose()

    async def lend() -> None:
        if borrow == "connection":
            async with group.connection(UNUSED):
                pytest.fail("a closed group lent a connection")
        elif borrow == "acquire":
            await group.acquire(UNUSED)
        else:
            await group.pool(UNUSED)

    with anyio.CancelScope() as scope:
        scope.cancel()
        await lend()
    assert scope.cancelled_caught
    with pytest.raises(PoolClosed):
        await lend()


# -- what held: the pool's check agrees with anyio's across the ways to lend ---------------

#: stats that a cancelled borrower must leave as they were
_TRACES = (
    "waiting",
    "in_use",
    "idle",
    "connecting",
    "acquired",
    "acquire_timeouts",
    "overloaded",
    "opened",
    "closed",
    "discarded",
    "unavailable",
)


def _traces(pool: WebSocketPool[Any]) -> dict[str, object]:
    stats = pool.stats
    return {name: getattr(stats, name) for name in _TRACES}


async def _in_shape(shape: str, operation: Callable[[], Awaitable[object]]) -> bool:
    """Run ``operation`` inside scopes of ``shape``; whether a cancellation stopped it."""
    stopped = True
    async with AsyncExitStack() as stack:
        if shape == "cancelled":
            stack.enter_context(anyio.CancelScope()).cancel()
        elif shape == "outer cancelled":
            stack.enter_context(anyio.CancelScope()).cancel()
            stack.enter_context(anyio.CancelScope())
        elif shape == "shielded in cancelled":
            stack.enter_context(anyio.CancelScope()).cancel()
            stack.enter_context(anyio.CancelScope(shield=True))
        elif shape == "plain in shielded in cancelled":
            stack.enter_context(anyio.CancelScope()).cancel()
            stack.enter_context(anyio.CancelScope(shield=True))
            stack.enter_context(anyio.CancelScope())
        elif shape == "cancelled in shielded":
            stack.enter_context(anyio.CancelScope(shield=True))
            stack.enter_context(anyio.CancelScope()).cancel()
        elif shape == "shield set after the cancel":
            stack.enter_context(anyio.CancelScope()).cancel()
            stack.enter_context(anyio.CancelScope()).shield = True
        elif shape == "shield unset after the cancel":
            stack.enter_context(anyio.CancelScope()).cancel()
            stack.enter_context(anyio.CancelScope(shield=True)).shield = False
        elif shape == "move_on_after(0)":
            stack.enter_context(anyio.move_on_after(0))
        elif shape == "task group cancelled":
            group = await stack.enter_async_context(anyio.create_task_group())
            group.cancel_scope.cancel()
        elif shape == "shielded task group in cancelled":
            stack.enter_context(anyio.CancelScope()).cancel()
            stack.enter_context(anyio.CancelScope(shield=True))
            await stack.enter_async_context(anyio.create_task_group())
        else:
            assert shape == "none", shape
        await operation()
        stopped = False
    return stopped


SHAPES = (
    "none",
    "cancelled",
    "outer cancelled",
    "shielded in cancelled",
    "plain in shielded in cancelled",
    "cancelled in shielded",
    "shield set after the cancel",
    "shield unset after the cancel",
    "move_on_after(0)",
    "task group cancelled",
    "shielded task group in cancelled",
)
OPTIONS: dict[str, dict[str, Any]] = {
    "default": {},
    "acquire_timeout=0": {"acquire_timeout": 0},
    "max_waiting=0": {"max_waiting": 0},
    "on_event": {"on_event": lambda event: None},
}


@pytest.mark.parametrize("options", sorted(OPTIONS))
@pytest.mark.parametrize("state", ["empty", "idle", "busy", "busy, one waiting"])
@pytest.mark.parametrize("lend", ["connection", "new_connection", "acquire", "acquire_new"])
async def test_a_borrower_is_cancelled_exactly_where_anyio_cancels(
    lend: str, state: str, options: str
) -> None:
    # For each shape of scopes: the borrower is cancelled if and only if
    # anyio's own check would cancel it there, and then leaves no trace.
    busy = state.startswith("busy")
    for shape in SHAPES:
        cancelled = await _in_shape(shape, anyio.lowlevel.checkpoint_if_cancelled)
        if busy and not cancelled:
            continue  # (it would wait for the held connection: not this test's)
        connector = Connector()
        with anyio.fail_after(10):
            async with (
                open_pool(
                    connect=connector, max_connections=1 if busy else 4, **OPTIONS[options]
                ) as pool,
                anyio.create_task_group() as tg,
            ):
                held = None
                if state == "idle":
                    await pool.release(await pool.acquire())
                elif busy:
                    held = await pool.acquire()
                    if state == "busy, one waiting" and options == "default":

                        async def wait_once() -> None:
                            await pool.release(await pool.acquire())

                        tg.start_soon(wait_once)
                        while pool.stats.waiting != 1:  # (bounded by fail_after)
                            await anyio.lowlevel.checkpoint()
                before, opened = _traces(pool), len(connector.opened)

                async def borrow() -> None:
                    if lend == "connection":
                        async with pool.connection():
                            pass
                    elif lend == "new_connection":
                        async with pool.new_connection():
                            pass
                    elif lend == "acquire":
                        await pool.release(await pool.acquire())
                    else:
                        await pool.release(await pool.acquire_new())

                assert await _in_shape(shape, borrow) is cancelled, shape
                if cancelled:  # (a connection opened for it would show as connecting)
                    assert _traces(pool) == before, shape
                    assert len(connector.opened) == opened, shape
                if held is not None:
                    await pool.release(held)
