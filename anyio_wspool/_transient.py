"""Which failed connection attempts are worth another try.

Shared by every connector: a generic connector is often a thin wrapper around
httpx-ws (``lambda: aconnect_ws(url, client)``) or another WebSocket client, so
the rule reads an HTTP status wherever the error carries a response, and knows
httpx's and httpx-ws's error types.
"""

from __future__ import annotations

import httpx
from httpx_ws import WebSocketDisconnect, WebSocketNetworkError

__all__ = ("RETRYABLE_CLOSE_CODES", "is_transient")

#: close codes after which a new connection may succeed (RFC 6455 §7.4.1)
RETRYABLE_CLOSE_CODES = frozenset({1001, 1006, 1011, 1012, 1013})


def is_transient(error: BaseException) -> bool:
    """Whether a failed connection attempt is worth another try.

    Network failures, timeouts and a 5xx answer to the upgrade are; a 4xx answer
    (refused, unauthorised, not found), a bad URL or a programming error are not.
    A close by the server during the attempt is, if its code says a later
    attempt may succeed (going away, restarting, try again later).
    """
    response = getattr(error, "response", None)
    status = getattr(response, "status_code", None)
    if isinstance(status, int):
        return status >= 500
    if isinstance(error, httpx.UnsupportedProtocol | httpx.InvalidURL | httpx.LocalProtocolError):
        return False  # the request itself is wrong: it fails the same way every time
    if isinstance(error, WebSocketDisconnect):
        return error.code in RETRYABLE_CLOSE_CODES
    return isinstance(error, OSError | TimeoutError | httpx.TransportError | WebSocketNetworkError)
