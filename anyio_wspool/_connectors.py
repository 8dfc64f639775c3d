"""What the generic pool core needs to know about a kind of resource.

The core (:mod:`anyio_wspool._pool`) lends any resource that a connector opens.
A :class:`ResourceOps` adapts one kind of resource to it: how to open one, how
to tell whether it is still usable, and how to hand it between the pool and a
borrower. :class:`GenericOps` serves ``open_pool(connect=...)``;
:class:`HttpxWsOps` serves ``open_pool(uri)`` with httpx-ws sessions.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Generic, TypeVar

import anyio
import httpx
from httpx_ws import (
    AsyncWebSocketSession,
    WebSocketDisconnect,
    WebSocketNetworkError,
    aconnect_ws,
)

from ._redact import redact_url
from ._session import PooledWebSocketSession, Sink, hardened_session_class

__all__ = (
    "GenericOps",
    "HttpxWsOps",
    "ResourceOps",
    "check_uri",
    "client_connection_limit",
    "is_transient",
)

R = TypeVar("R")

_SCHEMES = frozenset({"ws", "wss", "http", "https"})


class ResourceOps(Generic[R]):
    """The default behaviour: a resource is usable until the pool closes it."""

    #: how the pool names where it connects, secrets masked (for repr and messages)
    target: str = "connector"

    def open(self) -> AbstractAsyncContextManager[R]:
        raise NotImplementedError

    def connect_timeout_error(self, seconds: float) -> Exception:
        return TimeoutError(f"connecting to {self.target} took longer than {seconds:g} s")

    def attach(self, resource: R, on_dead: Callable[[], None], close_timeout: float) -> None:
        """Called once after the resource is opened, before it is first lent."""

    def usable(self, resource: R) -> bool:
        return True

    def park(self, resource: R, sink: Sink) -> None:
        """The resource goes back to the pool: unread and later messages go to ``sink``."""

    def unpark(self, resource: R) -> None:
        """The resource is about to be lent."""

    async def ping(self, resource: R) -> None:
        """Return when the resource answered a ping (``check_on_acquire``)."""
        raise NotImplementedError


class GenericOps(ResourceOps[R]):
    """``open_pool(connect=...)``, with or without ``close=``."""

    def __init__(
        self,
        connect: Callable[[], Any],
        close: Callable[[R], Awaitable[object]] | None,
        close_timeout: float,
    ) -> None:
        self._connect = connect
        self._close = close
        self._close_timeout = close_timeout
        self.target = f"connector {getattr(connect, '__qualname__', type(connect).__name__)}"

    def open(self) -> AbstractAsyncContextManager[R]:
        if self._close is not None:
            return self._paired()
        manager = self._connect()
        if not (hasattr(manager, "__aenter__") and hasattr(manager, "__aexit__")):
            raise TypeError(
                "connect() must return an async context manager yielding the resource "
                f"(or pass close= as well and return the resource itself), got {manager!r}"
            )
        return manager  # type: ignore[no-any-return]

    @contextlib.asynccontextmanager
    async def _paired(self) -> AsyncIterator[R]:
        assert self._close is not None
        resource: R = await self._connect()
        try:
            yield resource
        finally:
            # The close callback gets its own bounded time even when the host
            # task is being cancelled: a resource is never left open silently.
            with anyio.CancelScope(shield=True), anyio.move_on_after(self._close_timeout):
                await self._close(resource)


def check_uri(uri: object) -> httpx.URL:
    if not isinstance(uri, str | httpx.URL):
        raise TypeError(f"uri must be a str or httpx.URL, got {type(uri).__name__}")
    try:
        url = httpx.URL(uri)
    except httpx.InvalidURL as exc:
        raise ValueError(f"uri {redact_url(str(uri))!r} is not a valid URL: {exc}") from None
    if url.scheme not in _SCHEMES:
        raise ValueError(
            f"uri {redact_url(str(uri))!r} has scheme {url.scheme!r}; "
            "expected one of ws://, wss://, http://, https://"
        )
    if not url.host:
        raise ValueError(f"uri {redact_url(str(uri))!r} has no host")
    return url


def client_connection_limit(client: httpx.AsyncClient) -> int | None:
    """How many connections ``client`` may open at once, when that can be told."""
    pool = getattr(getattr(client, "_transport", None), "_pool", None)
    limit = getattr(pool, "_max_connections", None)
    return limit if isinstance(limit, int) else None


class HttpxWsOps(ResourceOps[AsyncWebSocketSession]):
    """``open_pool(uri)``: httpx-ws sessions, hardened (see :mod:`._session`)."""

    def __init__(self, url: httpx.URL, options: dict[str, Any]) -> None:
        self.url = url
        self.target = redact_url(url)
        options = dict(options)
        headers = options.pop("headers", None)
        # Copied now and again for every handshake: httpx-ws adds its upgrade
        # headers to the dict it is given, and the caller's must stay untouched.
        self._headers = httpx.Headers(headers) if headers is not None else httpx.Headers()
        self._session_class = hardened_session_class(
            options.pop("session_class", AsyncWebSocketSession)
        )
        self._options = options
        self.client: httpx.AsyncClient | None = None

    def open(self) -> AbstractAsyncContextManager[AsyncWebSocketSession]:
        assert self.client is not None
        return aconnect_ws(
            str(self.url),
            self.client,
            headers=self._headers.copy(),
            session_class=self._session_class,
            **self._options,
        )

    def connect_timeout_error(self, seconds: float) -> Exception:
        return httpx.ConnectTimeout(
            f"the WebSocket handshake with {self.target} took longer than "
            f"connect_timeout={seconds:g} s"
        )

    def attach(
        self, resource: AsyncWebSocketSession, on_dead: Callable[[], None], close_timeout: float
    ) -> None:
        assert isinstance(resource, PooledWebSocketSession)
        resource.pool_attach(on_dead, close_timeout)

    def usable(self, resource: AsyncWebSocketSession) -> bool:
        return resource.pool_usable  # type: ignore[attr-defined, no-any-return]

    def park(self, resource: AsyncWebSocketSession, sink: Sink) -> None:
        resource.pool_park(sink)  # type: ignore[attr-defined]

    def unpark(self, resource: AsyncWebSocketSession) -> None:
        resource.pool_unpark()  # type: ignore[attr-defined]

    async def ping(self, resource: AsyncWebSocketSession) -> None:
        pong = await resource.ping()
        await pong.wait()


#: close codes after which a new connection may succeed (RFC 6455 §7.4.1)
_RETRYABLE_CLOSE_CODES = frozenset({1001, 1006, 1011, 1012, 1013})


def is_transient(error: BaseException) -> bool:
    """Whether a failed connection attempt is worth another try.

    Network failures, timeouts and a 5xx answer to the upgrade are; a 4xx answer
    (refused, unauthorised, not found), a bad URL or a programming error are not.
    """
    response = getattr(error, "response", None)
    status = getattr(response, "status_code", None)
    if isinstance(status, int):
        return status >= 500
    if isinstance(error, httpx.UnsupportedProtocol | httpx.InvalidURL):
        return False
    if isinstance(error, WebSocketDisconnect):
        return error.code in _RETRYABLE_CLOSE_CODES
    return isinstance(error, OSError | TimeoutError | httpx.TransportError | WebSocketNetworkError)
