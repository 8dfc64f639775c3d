"""Small helpers shared by the tests."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import anyio.lowlevel
from httpx_ws import AsyncWebSocketSession


async def wait_closed(ws: AsyncWebSocketSession, limit: float = 5.0) -> None:
    """Wait until the client side of ``ws`` has noticed that it is closed.

    httpx-ws sets the session's ``_should_close`` event when its reader sees the
    end of the connection; a server-side counter changes before that.
    """
    with anyio.fail_after(limit):
        await ws._should_close.wait()


async def until(predicate: Callable[[], bool], limit: float = 5.0) -> None:
    """Let the event loop run (I/O included) until ``predicate()`` holds.

    For conditions on the client side that nothing signals (a pool's gauges):
    each round lets every task run and the loop poll its sockets once.
    """
    with anyio.fail_after(limit):
        while not predicate():
            await anyio.wait_all_tasks_blocked()
            await anyio.lowlevel.checkpoint()
