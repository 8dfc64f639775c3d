"""The front doors: :func:`open_pool` and :func:`open_pool_group`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, TypeVar, Unpack, cast, overload

import httpx
from httpx_ws import AsyncWebSocketSession

from ._group import WebSocketPoolGroup, make_group
from ._httpx_ws import httpx_library
from ._options import PoolOptions, WsOptions
from ._pool import WebSocketPool

if TYPE_CHECKING:
    import httpx2
    from httpx2.websockets import AsyncWebSocketSession as Httpx2Session

__all__ = ("open_pool", "open_pool_group")

R = TypeVar("R")


@overload
def open_pool(
    uri: str | httpx.URL,
    *,
    client: httpx2.AsyncClient,
    **options: Unpack[WsOptions],
) -> WebSocketPool[Httpx2Session]: ...


@overload
def open_pool(
    uri: str | httpx.URL,
    *,
    client: httpx.AsyncClient | None = None,
    **options: Unpack[WsOptions],
) -> WebSocketPool[AsyncWebSocketSession]: ...


@overload
def open_pool(
    uri: None = None,
    *,
    connect: Callable[[], AbstractAsyncContextManager[R]],
    **options: Unpack[PoolOptions],
) -> WebSocketPool[R]: ...


@overload
def open_pool(
    uri: None = None,
    *,
    connect: Callable[[], Awaitable[R]],
    close: Callable[[R], Awaitable[object]],
    **options: Unpack[PoolOptions],
) -> WebSocketPool[R]: ...


def open_pool(
    uri: str | httpx.URL | None = None,
    *,
    connect: Callable[[], Any] | None = None,
    close: Callable[[Any], Awaitable[object]] | None = None,
    client: httpx.AsyncClient | httpx2.AsyncClient | None = None,
    **options: Any,
) -> WebSocketPool[Any]:
    """Create a pool; use the result as an async context manager.

    Every option is validated here, before any connection is attempted: a
    wrong type or value raises ``TypeError`` or ``ValueError`` naming the
    option. Entering the pool starts its task group; leaving it closes every
    connection and ends every task it started, on success, on error and on
    cancellation.

    Args:
        uri: ``ws://``, ``wss://``, ``http://`` or ``https://`` URL to connect to.
        connect: instead of ``uri``, a zero-argument callable returning an async
            context manager that yields the resource (or, with ``close``, an
            async callable returning the resource).
        close: with ``connect``, an async callable that closes a resource.
        client: an ``httpx.AsyncClient`` to connect through (never closed by
            the pool); by default the pool makes one and closes it at the end.
            An ``httpx2.AsyncClient`` makes the pool connect with httpx2's own
            WebSockets and lend ``httpx2.websockets.AsyncWebSocketSession``
            objects (the ``anyio-wspool[httpx2]`` extra).
        **options: the pool's options, and for a pool given ``uri`` httpx-ws's
            (``headers``, ``subprotocols``, ``max_message_size_bytes``, ...);
            the documentation's option table (also in the README) gives each
            one's default and meaning. ``shared_capacity=RedisCapacity(...)``
            adds a limit shared with every pool, in any process, that uses
            the same Redis and key (the ``anyio-wspool[redis]`` extra).

    Raises:
        TypeError, ValueError: an argument or option of the wrong type or value
            (the message names it, never a secret it holds).

    Examples:
        async with open_pool("wss://example.com/ws", max_connections=8) as pool:
            async with pool.connection() as ws:
                await ws.send_text("ping")
                print(await ws.receive_text())
    """
    # The arguments were typed by the overloads above; WebSocketPool checks them.
    make = cast(Callable[..., WebSocketPool[Any]], WebSocketPool)
    return make(uri, connect=connect, close=close, client=client, **options)


@overload
def open_pool_group(
    *,
    client: httpx2.AsyncClient,
    max_connections_per_key: int | None = None,
    **options: Unpack[WsOptions],
) -> WebSocketPoolGroup[Httpx2Session]: ...


@overload
def open_pool_group(
    *,
    client: httpx.AsyncClient | None = None,
    max_connections_per_key: int | None = None,
    **options: Unpack[WsOptions],
) -> WebSocketPoolGroup[AsyncWebSocketSession]: ...


def open_pool_group(
    *,
    client: httpx.AsyncClient | httpx2.AsyncClient | None = None,
    max_connections_per_key: int | None = None,
    **options: Any,
) -> WebSocketPoolGroup[Any]:
    """Create a group of pools, one per URI (or per key); use it as an async context manager.

    Each pool is created the first time its URI (or key) is used, with the
    options given here; ``max_connections`` (default 50) caps the group as a
    whole and ``max_connections_per_key`` (default: the same) each pool. At
    the group's cap, a borrower that needs a new connection gets room by the
    closing of the connection of another key that has been idle longest, or
    waits for one of any key to close. Every option is validated here.

    Args:
        client: an ``httpx.AsyncClient`` (or ``httpx2.AsyncClient``) that every
            pool of the group connects through (never closed by the group).
        max_connections_per_key: the capacity of each key's pool.
        **options: the pools' options, as for :func:`open_pool`. With
            ``shared_capacity``, the group's pools share the process's slots of
            that limit, and at the shared limit an idle connection of another
            key is closed for a key that waits.

    Raises:
        TypeError, ValueError: an option of the wrong type or value.

    Examples:
        async with open_pool_group(max_connections=20, max_connections_per_key=8) as group:
            async with group.connection("wss://stt.example/ws") as ws:
                await ws.send_text("hello")
            async with group.connection("wss://tts.example/ws") as ws:
                await ws.send_text("hello")
    """
    pool_options: dict[str, Any] = dict(options)
    max_connections = pool_options.pop("max_connections", 50)

    def make_pool(uri: str | httpx.URL, capacity: int) -> WebSocketPool[Any]:
        make = cast(Callable[..., WebSocketPool[Any]], WebSocketPool)
        # (shared_capacity is the group's: its pools share its slots.)
        own = {name: value for name, value in pool_options.items() if name != "shared_capacity"}
        return make(uri, client=client, **{**own, "max_connections": capacity})

    lib = httpx_library(client)
    return make_group(max_connections, max_connections_per_key, make_pool, pool_options, lib)
