"""The front door: :func:`open_pool`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar, Unpack, cast, overload

import httpx
from httpx_ws import AsyncWebSocketSession

from ._options import PoolOptions, WsOptions
from ._pool import WebSocketPool

__all__ = ("open_pool",)

R = TypeVar("R")


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
    client: httpx.AsyncClient | None = None,
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
        **options: the pool's options, and for a pool given ``uri`` httpx-ws's
            (``headers``, ``subprotocols``, ``max_message_size_bytes``, ...);
            the README's option table lists each with its default.

    Examples:
        async with open_pool("wss://example.com/ws", max_connections=8) as pool:
            async with pool.connection() as ws:
                await ws.send_text("ping")
                print(await ws.receive_text())
    """
    # The arguments were typed by the overloads above; WebSocketPool checks them.
    make = cast(Callable[..., WebSocketPool[Any]], WebSocketPool)
    return make(uri, connect=connect, close=close, client=client, **options)
