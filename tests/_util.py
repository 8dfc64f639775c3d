"""Small helpers shared by the tests."""

from __future__ import annotations

import anyio
from httpx_ws import AsyncWebSocketSession


async def wait_closed(ws: AsyncWebSocketSession, limit: float = 5.0) -> None:
    """Wait until the client side of ``ws`` has noticed that it is closed.

    httpx-ws sets the session's ``_should_close`` event when its reader sees the
    end of the connection; a server-side counter changes before that.
    """
    with anyio.fail_after(limit):
        await ws._should_close.wait()
