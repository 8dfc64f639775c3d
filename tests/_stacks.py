"""The two HTTP stacks the WebSocket tests run on: httpx + httpx-ws, and httpx2.

The ``stack`` fixture (``conftest.py``) runs a test once on each. A test
module that opens its pools with this module's :func:`open_pool` gets, on
httpx2, a pool over an ``httpx2.AsyncClient`` of the test's own (the pool
never closes a client it is given, so this module does, after the pool).
The error names here are each stack's type, as tuples, for ``pytest.raises``
and ``except`` clauses written once for both.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

import anyio
import httpx
import httpx2
import httpx2.websockets as ws2
import httpx_ws

import anyio_wspool
from anyio_wspool import WebSocketPool

__all__ = (
    "STACKS",
    "ConnectError",
    "ConnectTimeout",
    "WebSocketDisconnect",
    "WebSocketSession",
    "WebSocketUpgradeError",
    "current",
    "open_pool",
    "use",
)

STACKS = ("httpx", "httpx2")

ConnectError = (httpx.ConnectError, httpx2.ConnectError)
ConnectTimeout = (httpx.ConnectTimeout, httpx2.ConnectTimeout)
WebSocketDisconnect = (httpx_ws.WebSocketDisconnect, ws2.WebSocketDisconnect)
WebSocketUpgradeError = (httpx_ws.WebSocketUpgradeError, ws2.WebSocketUpgradeError)
WebSocketSession = (httpx_ws.AsyncWebSocketSession, ws2.AsyncWebSocketSession)

_current = "httpx"


def use(stack: str) -> None:
    """Make ``stack`` the one :func:`open_pool` connects through (the fixture's job)."""
    global _current
    assert stack in STACKS, stack
    _current = stack


def current() -> str:
    return _current


class _PoolOverHttpx2(WebSocketPool[Any]):
    """A pool over an httpx2 client of its own, closed after the pool."""

    def __init__(self, uri: Any, **options: Any) -> None:
        # Sized like the pool's own httpx client: the pool's capacity is the limit.
        self._test_client = httpx2.AsyncClient(
            limits=httpx2.Limits(max_connections=None, max_keepalive_connections=0),
            timeout=httpx2.Timeout(options.get("connect_timeout", 10.0)),
        )
        super().__init__(uri, client=self._test_client, **options)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await super().__aexit__(exc_type, exc, tb)
        finally:
            with anyio.CancelScope(shield=True):
                await self._test_client.aclose()


def open_pool(uri: Any = None, **options: Any) -> Any:
    """``anyio_wspool.open_pool`` through the current stack's client (see the module doc)."""
    if _current == "httpx2" and uri is not None and "client" not in options:
        return _PoolOverHttpx2(uri, **options)
    return anyio_wspool.open_pool(uri, **options)
