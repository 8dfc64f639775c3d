"""The connector of ``open_pool(uri)``: httpx-ws sessions over an httpx client.

It owns the client's life (made for the pool and closed with it, or given and
never closed; either way checked to allow as many connections as the pool),
keeps the URI's secrets out of httpx's own log records while the pool is open,
and opens each connection with httpx-ws's ``aconnect_ws`` and the hardened
session class of :mod:`._session`, through which it reads, parks and unparks
each session.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, cast

import anyio
import httpx
from httpx_ws import AsyncWebSocketSession, aconnect_ws
from wsproto.events import BytesMessage, TextMessage

from ._connector import Connector, Sink
from ._redact import RedactorHandle, install_log_redactor, redact_url, scrub_error
from ._session import HardenedSession, hardened_session_class

#: the loggers whose records may carry a secret: httpx's (and httpx2's) request
#: log, httpcore's (and httpcore2's) trace
_REDACTED_LOGGERS = tuple(
    f"{name}{suffix}"
    for name, suffixes in (
        ("httpx", ("", "2")),
        (
            "httpcore",
            (
                ".connection",
                ".http11",
                ".http2",
                ".proxy",
                "2.connection",
                "2.http11",
                "2.http2",
                "2.proxy",
            ),
        ),
    )
    for suffix in suffixes
)

__all__ = (
    "HttpxWsConnector",
    "check_httpx_option",
    "check_uri",
    "client_connection_limit",
    "httpx_library",
)

_SCHEMES = frozenset({"ws", "wss", "http", "https"})

# RFC 9110 field names and values, as h11 checks them when the request is
# written: a value h11 refuses would come back in its error text, so the same
# rule is applied when the pool is created, with errors that never show it.
_HEADER_NAME = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
_HEADER_VALUE = re.compile(rb"(?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?")


def _check_headers(value: Any, lib: Any) -> Any:
    try:
        headers = lib.Headers(value)
    except Exception:
        raise TypeError(
            "headers must be a mapping, or a list of (name, value) pairs, of str or "
            "bytes (ASCII for str); the values are not shown"
        ) from None
    for name, field in headers.raw:
        if not _HEADER_NAME.fullmatch(name):
            raise ValueError(f"headers: {name!r} is not a legal HTTP header name")
        if not _HEADER_VALUE.fullmatch(field):
            raise ValueError(
                f"headers: the value of {name.decode('ascii')!r} is not a legal HTTP "
                "header value (a line break, a control character, or whitespace at "
                "either end); the value is not shown"
            )
    return headers


def _check_auth(value: Any, lib: Any) -> object:
    if value is None or isinstance(value, lib.Auth) or callable(value):
        return value
    if (
        isinstance(value, tuple)
        and len(value) == 2
        and all(isinstance(part, str | bytes) for part in value)
    ):
        return value
    raise TypeError(
        f"auth must be an {lib.__name__}.Auth, a (username, password) tuple or a callable, "
        f"got a {type(value).__name__} (not shown); for a bearer token pass "
        "headers={'Authorization': 'Bearer ...'}"
    )


def _check_cookies(value: Any, lib: Any) -> object:
    if value is None:
        return None
    try:
        cookies = lib.Cookies(value)
        pairs = [(cookie.name, cookie.value or "") for cookie in cookies.jar]
    except Exception:
        raise TypeError(
            f"cookies must be an {lib.__name__}.Cookies, a CookieJar or a mapping of str to str; "
            "the values are not shown"
        ) from None
    for name, field in pairs:
        if not _HEADER_VALUE.fullmatch(f"{name}={field}".encode("latin-1", "replace")) or (
            ";" in field
        ):
            raise ValueError(
                f"cookies: the value of cookie {name!r} cannot be sent in a Cookie header; "
                "the value is not shown"
            )
    return value


def check_httpx_option(name: str, value: Any, lib: Any = httpx) -> object:
    """Check an option passed on to httpx, never showing its value in the error.

    ``headers``, ``auth``, ``cookies``, ``params``, ``timeout`` and
    ``extensions`` are checked the way httpx (or httpx2, as ``lib``) and h11
    would check them at the first handshake, so that no error text of theirs
    can echo a secret later.
    """
    if name == "headers":
        return None if value is None else _check_headers(value, lib)
    if name == "auth":
        return _check_auth(value, lib)
    if name == "cookies":
        return _check_cookies(value, lib)
    if name == "params":
        try:
            return None if value is None else lib.QueryParams(value)
        except Exception:
            raise TypeError(
                "params must be a mapping or a list of pairs of str (or numbers); "
                "the values are not shown"
            ) from None
    if name == "timeout":
        try:
            return lib.Timeout(value)
        except Exception:
            raise TypeError(
                f"timeout must be an {lib.__name__}.Timeout, a number of seconds, or None"
            ) from None
    if name == "extensions":
        if not isinstance(value, dict):
            raise TypeError(f"extensions must be a dict, got a {type(value).__name__}")
        return value
    return value


def check_uri(uri: object) -> httpx.URL:
    """``uri`` as an ``httpx.URL``, or a ``TypeError``/``ValueError`` that masks its secrets."""
    if not isinstance(uri, str | httpx.URL):
        raise TypeError(f"uri must be a str or httpx.URL, got {type(uri).__name__}")
    try:
        url = httpx.URL(uri)
    except httpx.InvalidURL as exc:
        raise ValueError(f"uri {redact_url(uri)!r} is not a valid URL: {exc}") from None
    if url.scheme not in _SCHEMES:
        raise ValueError(
            f"uri {redact_url(uri)!r} has scheme {url.scheme!r}; "
            "expected one of ws://, wss://, http://, https://"
        )
    if not url.host:
        raise ValueError(f"uri {redact_url(uri)!r} has no host")
    if url.port is not None and not 0 < url.port < 65536:
        raise ValueError(f"uri {redact_url(uri)!r} has port {url.port}; expected 1 to 65535")
    return url


def client_connection_limit(client: httpx.AsyncClient) -> int | None:
    """How many connections ``client`` may open at once, when that can be told."""
    pool = getattr(getattr(client, "_transport", None), "_pool", None)
    limit = getattr(pool, "_max_connections", None)
    return limit if isinstance(limit, int) else None


def httpx_library(client: object) -> Any:
    """The httpx of ``client``: ``httpx``, or ``httpx2`` for an ``httpx2.AsyncClient``.

    Raises:
        ImportError: an httpx2 client, without httpx2's WebSocket support.
    """
    if client is not None and type(client).__module__.partition(".")[0] == "httpx2":
        from . import _httpx2  # an ImportError here names the extra

        return _httpx2.LIB
    return httpx


class HttpxWsConnector(Connector[HardenedSession]):
    """``open_pool(uri)``: httpx-ws sessions, or httpx2's, hardened (see :mod:`._session`)."""

    def __init__(
        self,
        url: httpx.URL,
        client: object,
        options: dict[str, Any],
        *,
        connect_timeout: float,
        close_timeout: float,
    ) -> None:
        lib = httpx_library(client)
        if client is not None and not isinstance(client, lib.AsyncClient):
            raise TypeError(
                "client must be an httpx.AsyncClient or an httpx2.AsyncClient, "
                f"got {type(client)!r}"
            )
        self._lib = lib
        self.url = url
        self.target = self.uri = redact_url(url)
        self._given_client = client
        self._client: Any = client
        self._connect_timeout = connect_timeout
        self._close_timeout = close_timeout
        options = dict(options)
        headers = options.pop("headers", None)
        # Copied now and again for every handshake: httpx-ws adds its upgrade
        # headers to the dict it is given, and the caller's must stay untouched.
        self._headers = lib.Headers(headers) if headers is not None else lib.Headers()
        self._session_class: type[HardenedSession]
        if lib is httpx:
            self._session_class = hardened_session_class(
                options.pop("session_class", AsyncWebSocketSession)
            )
        else:
            from . import _httpx2

            self._session_class = _httpx2.hardened_session_class(
                options.pop("session_class", _httpx2.BaseSession)
            )
        self._options = options
        self._redactors: list[RedactorHandle] = []

    # -- the client's life --------------------------------------------------

    def check_capacity(self, max_connections: int) -> None:
        if self._given_client is None:
            return  # the pool's own client has no limit of its own
        limit = client_connection_limit(self._given_client)
        if limit is not None and limit < max_connections:
            lib = self._lib.__name__
            raise ValueError(
                f"the given {lib}.AsyncClient allows at most {limit} connections "
                f"({lib}.Limits.max_connections) but max_connections={max_connections}: "
                "each open WebSocket holds one of the client's connections for its whole "
                f"life. Give the client limits={lib}.Limits(max_connections={max_connections}) "
                "or more, or lower max_connections."
            )

    async def start(self) -> None:
        # httpx logs each request's full URL at INFO (the upgrade's too), and
        # httpcore's DEBUG trace quotes the errors of h11, header values included.
        self._redactors = [install_log_redactor(name) for name in _REDACTED_LOGGERS]
        if self._given_client is None:
            client = httpx.AsyncClient(
                # The pool's limiter bounds the connections; the client's own
                # limit would only get in the way of a resize.
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=0),
                timeout=httpx.Timeout(self._connect_timeout),
            )
            try:
                await client.__aenter__()
            except BaseException:
                self._remove_redactors()
                raise
            self._client = client

    async def aclose(self) -> None:
        try:
            if self._given_client is None and self._client is not None:
                client, self._client = self._client, None
                with anyio.CancelScope(shield=True), anyio.move_on_after(self._close_timeout):
                    await client.aclose()
        finally:
            self._remove_redactors()

    def _remove_redactors(self) -> None:
        redactors, self._redactors = self._redactors, []
        for redactor in redactors:
            redactor.remove()

    def scrub(self, error: Exception) -> None:
        scrub_error(error)

    # -- connecting -----------------------------------------------------------

    def open(self) -> AbstractAsyncContextManager[HardenedSession]:
        assert self._client is not None, "the pool has not started this connector"
        if self._lib is not httpx:
            from . import _httpx2

            return cast(
                AbstractAsyncContextManager[HardenedSession],
                _httpx2.open_session(
                    self._client,
                    str(self.url),
                    self._headers.copy(),
                    cast(type[_httpx2.PooledHttpx2Session], self._session_class),
                    self._options,
                ),
            )
        # Every session is of a hardened class (session_class below).
        return cast(
            AbstractAsyncContextManager[HardenedSession],
            aconnect_ws(
                str(self.url),
                self._client,
                headers=self._headers.copy(),
                session_class=cast(type[AsyncWebSocketSession], self._session_class),
                **self._options,
            ),
        )

    def is_transient(self, error: Exception) -> bool:
        if self._lib is not httpx:
            from . import _httpx2

            return _httpx2.is_transient(error)
        return super().is_transient(error)

    def timeout_error(self, seconds: float) -> Exception:
        error: Exception = self._lib.ConnectTimeout(
            f"the WebSocket handshake with {self.target} took longer than "
            f"connect_timeout={seconds:g} s"
        )
        return error

    def describe(self, event: object) -> str:
        if isinstance(event, TextMessage):
            return f"a {len(event.data)}-character text message"
        if isinstance(event, BytesMessage):
            return f"a {len(event.data)}-byte binary message"
        return super().describe(event)

    # -- lending ----------------------------------------------------------------

    def attach(self, resource: HardenedSession, on_dead: Callable[[], None]) -> None:
        resource.pool_attach(on_dead, self._close_timeout)

    def usable(self, resource: HardenedSession) -> bool:
        return resource.pool_usable

    def closed_error(self, resource: HardenedSession) -> Exception:
        return resource.pool_closed_error()

    def close_code(self, resource: HardenedSession) -> int | None:
        return resource.pool_close_code

    def park(self, resource: HardenedSession, sink: Sink) -> None:
        resource.pool_park(sink)

    def unpark(self, resource: HardenedSession) -> None:
        resource.pool_unpark()

    async def ping(self, resource: HardenedSession) -> None:
        pong = await resource.ping()
        await pong.wait()
