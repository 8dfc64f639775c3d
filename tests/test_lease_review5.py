"""The break found by the fifth outside review of issue 18 (the cancellation check).

A borrower whose scope was cancelled is cancelled before anything else, as
anyio's own primitives do (a closed memory stream's ``receive()`` raises the
cancellation, not ``ClosedResourceError``): at a pool that is closed or not
open yet it used to get ``PoolClosed``, which escaped its cancelled scope (and
came out of a task group being shut down as an ``ExceptionGroup``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from anyio_wspool import PoolClosed, WebSocketPool, open_pool, open_pool_group

from ._fake import Connector

pytestmark = pytest.mark.anyio

UNUSED = "ws://127.0.0.1:9/never"  # a group refuses before it would connect


async def _enter(pool: WebSocketPool[Any]) -> None:
    async with pool.connection():
        pytest.fail("a closed pool lent a connection")


async def _enter_new(pool: WebSocketPool[Any]) -> None:
    async with pool.new_connection():
        pytest.fail("a closed pool lent a connection")


BORROWS: dict[str, Callable[[WebSocketPool[Any]], Awaitable[object]]] = {
    "connection": _enter,
    "new_connection": _enter_new,
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
