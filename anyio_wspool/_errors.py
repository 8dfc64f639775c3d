"""The pool's own errors.

Connection failures are not wrapped: they keep the type that httpx, httpx-ws or
the user's connector gave them, so that existing ``except`` clauses keep
working. The classes here are for what only the pool can say.
"""

from __future__ import annotations

__all__ = ("PoolClosed", "PoolError", "PoolOverloaded", "PoolTimeout", "PoolUnavailable")


class PoolError(Exception):
    """Base class of the pool's own errors (misuse, closed pool, no capacity)."""


class PoolClosed(PoolError):
    """The pool is closed, or closed while the caller was waiting for a connection."""


class PoolOverloaded(PoolError):
    """More borrowers than ``max_waiting`` are already waiting for a connection."""


class PoolUnavailable(PoolError):
    """The circuit breaker is open: recent connection attempts kept failing."""


class PoolTimeout(PoolError, TimeoutError):
    """No connection could be lent within ``acquire_timeout``.

    The message says how long the caller waited and what the pool was doing at
    that moment, e.g. ``no connection within 2.00 s (max_connections=5:
    0 connecting, 0 idle, 5 in use, 0 draining | 12 waiting)``.
    """


for _cls in (PoolError, PoolClosed, PoolOverloaded, PoolUnavailable, PoolTimeout):
    _cls.__module__ = "anyio_wspool"
del _cls
