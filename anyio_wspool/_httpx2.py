"""httpx2: the same pool over httpx2's own WebSockets (``httpx2.websockets``).

httpx2 carries httpx-ws's design inside it, so the pool's hardened session
(:mod:`._session`) applies to it as it is, with httpx2's exception types and
httpcore2's I/O errors as its :class:`~._session.Flavour`. This module is
imported only when a pool is given an ``httpx2.AsyncClient``: httpx2 is an
optional extra, never a requirement of ``import anyio_wspool``.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio

try:
    import httpcore2
    import httpx2
    import httpx2.websockets as ws2
except ImportError as exc:  # pragma: no cover (the extra is installed for the tests)
    raise ImportError(
        "an httpx2.AsyncClient needs httpx2 with its WebSocket support: "
        "pip install 'anyio-wspool[httpx2]' (which brings httpx2[ws])"
    ) from exc

from ._session import Flavour, HardenedSession
from ._transient import RETRYABLE_CLOSE_CODES

__all__ = (
    "HTTPX2",
    "LIB",
    "BaseSession",
    "PooledHttpx2Session",
    "hardened_session_class",
    "is_transient",
    "open_session",
)

#: httpx2 + httpx2.websockets, on httpcore2
HTTPX2 = Flavour(
    disconnect=ws2.WebSocketDisconnect,
    network_error=ws2.WebSocketNetworkError,
    upgrade_error=ws2.WebSocketUpgradeError,
    base_error=ws2.HTTPXWSException,
    io_errors=(httpcore2.ReadError, httpcore2.WriteError, anyio.ClosedResourceError),
    write_errors=(httpcore2.WriteError, anyio.ClosedResourceError),
)


#: httpx2 itself, and its session class (for the connector, which imports this module lazily)
LIB = httpx2
BaseSession = ws2.AsyncWebSocketSession


class PooledHttpx2Session(HardenedSession, ws2.AsyncWebSocketSession):
    """An ``httpx2.websockets.AsyncWebSocketSession`` fit for a pool (see :mod:`._session`)."""

    flavour = HTTPX2


#: the options of httpx2's WebSocket client itself; the others go with each handshake
_CLIENT_OPTIONS = frozenset(
    {
        "max_message_size_bytes",
        "queue_size",
        "keepalive_ping_interval_seconds",
        "keepalive_ping_timeout_seconds",
    }
)


def open_session(
    client: httpx2.AsyncClient,
    url: str,
    headers: httpx2.Headers,
    session_class: type[PooledHttpx2Session],
    options: Mapping[str, Any],
) -> AbstractAsyncContextManager[PooledHttpx2Session]:
    """One handshake through ``client``, yielding a hardened httpx2 session."""
    websockets = ws2.AsyncWebSocketClient(
        client,
        session_class=session_class,
        **{name: value for name, value in options.items() if name in _CLIENT_OPTIONS},
    )
    handshake = {name: value for name, value in options.items() if name not in _CLIENT_OPTIONS}
    session: AbstractAsyncContextManager[PooledHttpx2Session] = websockets.connect(
        url, headers=headers, **handshake
    )
    return session


def is_transient(error: BaseException) -> bool:
    """httpx2's version of the retry rule of :mod:`._transient`."""
    response = getattr(error, "response", None)
    status = getattr(response, "status_code", None)
    if isinstance(status, int):
        return status >= 500
    if isinstance(
        error, httpx2.UnsupportedProtocol | httpx2.InvalidURL | httpx2.LocalProtocolError
    ):
        return False
    if isinstance(error, ws2.WebSocketDisconnect):
        return error.code in RETRYABLE_CLOSE_CODES
    return isinstance(
        error, OSError | TimeoutError | httpx2.TransportError | ws2.WebSocketNetworkError
    )


def hardened_session_class(cls: Any) -> type[PooledHttpx2Session]:
    """The class the pool instantiates for a user's httpx2 ``session_class``."""
    if not (isinstance(cls, type) and issubclass(cls, ws2.AsyncWebSocketSession)):
        raise TypeError(
            "with an httpx2 client, session_class must be a subclass of "
            f"httpx2.websockets.AsyncWebSocketSession, got {cls!r}"
        )
    if issubclass(cls, PooledHttpx2Session):
        return cls
    if cls is ws2.AsyncWebSocketSession:
        return PooledHttpx2Session
    made = _hardened.get(cls)
    if made is None:
        made = type(f"Pooled{cls.__name__}", (PooledHttpx2Session, cls), {})
        _hardened[cls] = made
    return made


_hardened: dict[type[Any], type[PooledHttpx2Session]] = {}
