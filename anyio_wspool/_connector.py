"""The seam between the pool and what it pools.

The pool core lends any resource; a :class:`Connector` is everything it knows
about one kind of resource: how to open one (an async context manager, entered
and exited by the connection's host task), which failures are worth another
attempt, how to name the target without its secrets, whether a resource is
still usable, and how to hand a resource between the pool and a borrower
(*park*: the pool reads what arrives; *unpark*: the borrower does). A connector
also owns whatever the resources share (an HTTP client): it makes it when the
pool opens and closes it when the pool closes.

:class:`GenericConnector` serves ``open_pool(connect=...)``, with or without
``close=``; :mod:`._httpx_ws` serves ``open_pool(uri)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Generic, TypeVar

import anyio

from ._transient import is_transient

__all__ = ("Connector", "GenericConnector", "Sink")

R = TypeVar("R")

#: where the pool wants the messages that arrive while it holds a resource
Sink = Callable[[Any], None]


class Connector(Generic[R]):
    """One kind of resource, as the pool core sees it.

    The defaults describe a resource that carries no messages the pool must
    read (a database handle, a test double): usable until the pool closes it.
    """

    #: where the pool connects, secrets masked (for reprs, logs and messages)
    target: str = "connector"
    #: the URI, secrets masked; None when the pool was given ``connect=``
    uri: str | None = None

    async def start(self) -> None:
        """The pool opens: make what the resources share (a client). Must not raise late."""

    async def aclose(self) -> None:
        """The pool has closed every resource: close what :meth:`start` made."""

    def check_capacity(self, max_connections: int) -> None:
        """Raise ``ValueError`` if ``max_connections`` resources cannot be open at once."""

    def open(self) -> AbstractAsyncContextManager[R]:
        """One connection attempt: an async context manager yielding the resource."""
        raise NotImplementedError

    def is_transient(self, error: Exception) -> bool:
        """Whether a failed attempt is worth another (network errors, timeouts, 5xx)."""
        return is_transient(error)

    def scrub(self, error: Exception) -> None:
        """Mask, in place, what a failed attempt's error quotes of a secret."""

    def timeout_error(self, seconds: float) -> Exception:
        """The error of an attempt that took longer than ``connect_timeout``."""
        return TimeoutError(f"connecting to {self.target} took longer than {seconds:g} s")

    def describe(self, event: object) -> str:
        """A drained event in a few words for a DEBUG log, never its content."""
        return f"a {type(event).__name__} event"

    def attach(self, resource: R, on_dead: Callable[[], None]) -> None:
        """Called once after the resource opened: ``on_dead()`` when it dies by itself."""

    def usable(self, resource: R) -> bool:
        """Whether the resource still carries messages both ways."""
        return True

    def closed_error(self, resource: R) -> Exception:
        """Why a resource that is no longer :meth:`usable` died (the server's close code)."""
        return ConnectionError(f"the connection to {self.target} was closed")

    def close_code(self, resource: R) -> int | None:
        """The close code the server sent on a resource that is no longer :meth:`usable`."""
        return None

    def park(self, resource: R, sink: Sink) -> None:
        """The resource goes back to the pool: unread and later messages go to ``sink``."""

    def unpark(self, resource: R) -> None:
        """The resource is about to be lent: its messages are the borrower's again."""

    async def ping(self, resource: R) -> None:
        """Return when the resource answered a ping (``check_on_acquire``)."""
        raise NotImplementedError


class GenericConnector(Connector[R]):
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
            return self._paired(self._close)
        manager = self._connect()
        if not (hasattr(manager, "__aenter__") and hasattr(manager, "__aexit__")):
            raise TypeError(
                "connect() must return an async context manager yielding the resource "
                f"(or pass close= as well and return the resource itself), got {manager!r}"
            )
        opened: AbstractAsyncContextManager[R] = manager
        return opened

    @contextlib.asynccontextmanager
    async def _paired(self, close: Callable[[R], Awaitable[object]]) -> AsyncIterator[R]:
        resource: R = await self._connect()
        try:
            yield resource
        finally:
            # The close callback gets its own bounded time even when the host
            # task is being cancelled: a resource is never left open silently.
            with anyio.CancelScope(shield=True), anyio.move_on_after(self._close_timeout):
                await close(resource)
