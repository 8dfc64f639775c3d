"""A pool of reusable WebSocket connections for asyncio, uvloop and trio.

Built on AnyIO and httpx-ws: what the pool lends is an
``httpx_ws.AsyncWebSocketSession``, so code written for httpx-ws keeps working.

Examples:
    Switching from ``aconnect_ws`` changes one line at each call site:

        async with open_pool("wss://example.com/ws") as pool:
            async with pool.connection() as ws:
                await ws.send_text("hello")
                print(await ws.receive_text())
"""

from __future__ import annotations

from ._api import open_pool as open_pool
from ._api import open_pool_group as open_pool_group
from ._errors import PoolClosed as PoolClosed
from ._errors import PoolError as PoolError
from ._errors import PoolOverloaded as PoolOverloaded
from ._errors import PoolTimeout as PoolTimeout
from ._errors import PoolUnavailable as PoolUnavailable
from ._events import AcquiredEvent as AcquiredEvent
from ._events import CircuitClosedEvent as CircuitClosedEvent
from ._events import CircuitOpenedEvent as CircuitOpenedEvent
from ._events import ConnectedEvent as ConnectedEvent
from ._events import ConnectFailedEvent as ConnectFailedEvent
from ._events import PoolEvent as PoolEvent
from ._events import ReleasedEvent as ReleasedEvent
from ._events import RetiredEvent as RetiredEvent
from ._group import WebSocketPoolGroup as WebSocketPoolGroup
from ._pool import WebSocketPool as WebSocketPool
from ._redis import RedisCapacity as RedisCapacity
from ._stats import PoolStats as PoolStats

__all__ = (
    "AcquiredEvent",
    "CircuitClosedEvent",
    "CircuitOpenedEvent",
    "ConnectFailedEvent",
    "ConnectedEvent",
    "PoolClosed",
    "PoolError",
    "PoolEvent",
    "PoolOverloaded",
    "PoolStats",
    "PoolTimeout",
    "PoolUnavailable",
    "RedisCapacity",
    "ReleasedEvent",
    "RetiredEvent",
    "WebSocketPool",
    "WebSocketPoolGroup",
    "open_pool",
    "open_pool_group",
)

__version__ = "0.1.0"
