"""The pool.

How it works, in one paragraph: each connection is a :class:`_Conn`, a small
state machine (:class:`_State`) hosted by its own task in the pool's task
group. That *host task* opens the resource (enters the httpx-ws session's
context), then sleeps until the connection is retired, then leaves the context:
only the task that entered an httpx-ws session may exit it. Lending and giving
back never wait for the host task: they are plain synchronous bookkeeping
(a dict pop, a state change), so that a lend and a give-back cost about as
much as a bare ``CapacityLimiter`` round trip. Capacity is one
``anyio.CapacityLimiter`` whose tokens are borrowed on behalf of the
connections (not of tasks), which is what lets one task hold several leases.
Borrowers that find no idle connection wait in one FIFO queue; a connection
that comes back, or a new one that opens, goes to the first of them.
Connections being opened are not bound to a borrower: a borrower that gives up
leaves the new connection to the next one, or to the idle set.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from enum import IntEnum
from types import TracebackType
from typing import Any, Generic, TypeVar, Unpack, overload

import anyio
import anyio.lowlevel
import httpx
from anyio.abc import TaskGroup
from httpx_ws import AsyncWebSocketSession
from wsproto.events import BytesMessage, Event, TextMessage

from ._connectors import (
    GenericOps,
    HttpxWsOps,
    ResourceOps,
    check_uri,
    client_connection_limit,
)
from ._errors import PoolClosed, PoolError, PoolTimeout
from ._options import PoolOptions, WsOptions, check_callable, check_int, parse_options
from ._redact import describe_error, install_httpx_redactor
from ._stats import PoolStats

__all__ = ("WebSocketPool",)

logger = logging.getLogger("anyio_wspool")

R = TypeVar("R")


class _State(IntEnum):
    CONNECTING = 0
    IDLE = 1
    LENT = 2
    DRAINING = 3
    CLOSING = 4
    CLOSED = 5


_CONNECTING, _IDLE, _LENT, _DRAINING, _CLOSING, _CLOSED = _State


class _Conn(Generic[R]):
    """One connection: its state and what its host task needs."""

    __slots__ = (
        "lease",
        "lent_before",
        "opened",
        "reason",
        "resource",
        "scope",
        "state",
        "wake",
    )

    def __init__(self) -> None:
        self.state = _CONNECTING
        self.resource: R | None = None
        self.opened = False
        self.lent_before = False
        #: incremented at each lend, so that a lease can tell it is still current
        self.lease = 0
        self.reason = ""
        self.scope: anyio.CancelScope | None = None
        #: set to make the host task look at the connection again (retire it)
        self.wake = anyio.Event()


class _Waiter(Generic[R]):
    """A borrower waiting for a connection: the pool fills in ``conn`` or ``error``."""

    __slots__ = ("conn", "error", "event", "fresh")

    def __init__(self, fresh: bool) -> None:
        self.fresh = fresh
        self.conn: _Conn[R] | None = None
        self.error: BaseException | None = None
        self.event = anyio.Event()


class _Lease(Generic[R]):
    """What ``pool.connection()`` returns: an async context manager for one lease."""

    __slots__ = ("_conn", "_fresh", "_lease", "_pool")

    def __init__(self, pool: WebSocketPool[R], fresh: bool) -> None:
        self._pool = pool
        self._fresh = fresh
        self._conn: _Conn[R] | None = None
        self._lease = 0

    async def __aenter__(self) -> R:
        if self._conn is not None:
            raise RuntimeError("this pool.connection() context manager is already in use")
        conn = await self._pool._acquire(self._fresh)
        self._conn = conn
        self._lease = conn.lease
        return conn.resource  # type: ignore[return-value]

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn = self._conn
        assert conn is not None
        self._conn = None
        pool = self._pool
        if conn.lease != self._lease or pool._lent.get(id(conn.resource)) is not conn:
            # Given back by hand inside the block (and maybe lent again since).
            if exc_type is None and not pool._closing:
                raise PoolError(
                    "the connection of this pool.connection() block was already released "
                    "inside the block; release() is for connections taken with acquire()"
                )
            return
        if exc_type is None:
            pool._give_back(conn, discard=False, reason="")
        else:
            # Its state is unknown (a half-sent message, an unread reply).
            pool._give_back(conn, discard=True, reason="error_in_block")


class WebSocketPool(Generic[R]):
    """A pool of reusable connections: httpx-ws WebSocket sessions, or any resource.

    Create it with :func:`open_pool` (or directly) and use it as an async
    context manager: entering starts the pool's task group, leaving closes every
    connection and ends every task the pool started. See SPEC.md for every
    option and guarantee.

    Examples:
        Lend a connection for one exchange:

            async with open_pool("wss://example.com/ws") as pool:
                async with pool.connection() as ws:
                    await ws.send_text("hello")
                    reply = await ws.receive_text()
    """

    @overload
    def __init__(
        self: WebSocketPool[AsyncWebSocketSession],
        uri: str | httpx.URL,
        *,
        client: httpx.AsyncClient | None = None,
        **options: Unpack[WsOptions],
    ) -> None: ...

    @overload
    def __init__(
        self,
        uri: None = None,
        *,
        connect: Callable[[], AbstractAsyncContextManager[R]],
        **options: Unpack[PoolOptions],
    ) -> None: ...

    @overload
    def __init__(
        self,
        uri: None = None,
        *,
        connect: Callable[[], Awaitable[R]],
        close: Callable[[R], Awaitable[object]],
        **options: Unpack[PoolOptions],
    ) -> None: ...

    def __init__(
        self,
        uri: str | httpx.URL | None = None,
        *,
        connect: Callable[[], Any] | None = None,
        close: Callable[[Any], Awaitable[object]] | None = None,
        client: httpx.AsyncClient | None = None,
        **options: Any,
    ) -> None:
        ops: ResourceOps[Any]
        if connect is not None:
            if uri is not None:
                raise TypeError("pass either a uri or connect=, not both")
            if client is not None:
                raise TypeError("client= applies to a pool given a uri, not to one given connect=")
            check_callable("connect", connect, allow_none=False)
            check_callable("close", close)
            config = parse_options(options, websocket=False)
            ops = GenericOps(connect, close, config.close_timeout)
        else:
            if uri is None:
                raise TypeError(
                    "open_pool() needs a uri (ws://, wss://, http://, https://) or connect="
                )
            if close is not None:
                raise TypeError(
                    "close= goes with connect=; a pool given a uri closes its "
                    "WebSocket sessions itself"
                )
            url = check_uri(uri)
            given: object = client
            if given is not None and not isinstance(given, httpx.AsyncClient):
                if type(given).__module__.split(".")[0] == "httpx2":
                    raise NotImplementedError(
                        "httpx2 clients are part of the anyio_wspool contract but not "
                        "supported in this version; pass an httpx.AsyncClient"
                    )
                raise TypeError(f"client must be an httpx.AsyncClient, got {type(given)!r}")
            config = parse_options(options, websocket=True)
            ops = HttpxWsOps(url, config.ws)
        self._ops: ResourceOps[R] = ops  # type: ignore[assignment]
        self._config = config
        self._client = client
        self._own_client = client is None and isinstance(ops, HttpxWsOps)
        if client is not None:
            self._check_client_limit(config.max_connections)
        self._limiter = anyio.CapacityLimiter(config.max_connections)
        self._idle: OrderedDict[_Conn[R], None] = OrderedDict()
        self._waiters: OrderedDict[_Waiter[R], None] = OrderedDict()
        self._conns: set[_Conn[R]] = set()
        self._lent: dict[int, _Conn[R]] = {}
        self._counts = [0] * len(_State)
        self._tg: TaskGroup | None = None
        self._entered = False
        self._closing = False
        self._all_closed: anyio.Event | None = None
        self._redactor: Any = None
        self._sink = self._on_idle_message
        # counters
        self._opened = 0
        self._closed = 0
        self._connect_failures = 0
        self._acquired = 0
        self._reused = 0
        self._discarded = 0
        self._acquire_timeouts = 0
        self._drained_messages = 0

    # -- public API -------------------------------------------------------------

    def connection(self) -> AbstractAsyncContextManager[R]:
        """Lend a connection for the duration of an ``async with`` block.

        An idle healthy connection if there is one, else a new one if capacity
        allows, else wait (first come, first served) up to ``acquire_timeout``.
        On normal exit the connection goes back to the pool; if the block raises
        or is cancelled the connection is closed instead (its state is unknown)
        and the exception propagates unchanged.

        Raises:
            PoolTimeout: no connection within ``acquire_timeout``.
            PoolClosed: the pool is closed, or closed while waiting.
            Exception: the connection error (httpx's, httpx-ws's or the
                connector's own type) of the connection opened for this borrower.
        """
        return _Lease(self, False)

    def new_connection(self) -> AbstractAsyncContextManager[R]:
        """Like :meth:`connection`, but always with a newly opened connection.

        When the pool is full and a connection is idle, the idle one that waited
        longest is closed to make room; otherwise this waits like ``connection()``.
        """
        return _Lease(self, True)

    async def acquire(self) -> R:
        """Take a connection without a block; give it back with :meth:`release`.

        Prefer :meth:`connection`: a connection taken here and never released
        stays lent until the pool closes (then it is closed, with a warning).
        """
        conn = await self._acquire(False)
        return conn.resource  # type: ignore[return-value]

    async def acquire_new(self) -> R:
        """Like :meth:`acquire`, with a newly opened connection (see :meth:`new_connection`)."""
        conn = await self._acquire(True)
        return conn.resource  # type: ignore[return-value]

    async def release(self, connection: R, *, discard: bool = False) -> None:
        """Give back a connection taken with :meth:`acquire`; ``discard=True`` closes it.

        After the pool closed this is a no-op (the connection was closed with it).

        Raises:
            PoolError: ``connection`` is not currently lent by this pool (never
                lent by it, or released already).
        """
        if not isinstance(discard, bool):
            raise TypeError(f"discard must be a bool, got {discard!r}")
        conn = self._lent.get(id(connection))
        if conn is None or conn.resource is not connection:
            if self._closing:
                return
            raise PoolError(
                f"release() was given {type(connection).__name__} object that this pool did "
                "not lend, or that was released already"
            )
        self._give_back(conn, discard=discard, reason="discarded" if discard else "")

    @property
    def max_connections(self) -> int:
        """The capacity; assign to resize (shrinking closes idle connections first)."""
        return int(self._limiter.total_tokens)

    @max_connections.setter
    def max_connections(self, value: int) -> None:
        value = check_int("max_connections", value, minimum=1)
        if self._client is not None and not self._own_client:
            self._check_client_limit(value)
        self._limiter.total_tokens = value
        excess = self._limiter.borrowed_tokens - value
        while excess > 0 and self._idle:
            oldest = next(iter(self._idle))
            self._retire(oldest, "resized")
            excess -= 1
        self._grow()

    @property
    def is_closed(self) -> bool:
        """Whether :meth:`aclose` was called (or the pool's block was left)."""
        return self._closing

    @property
    def uri(self) -> str | None:
        """Where the pool connects, with the password and query values masked.

        None for a pool given ``connect=``.
        """
        url = getattr(self._ops, "url", None)
        return None if url is None else self._ops.target

    @property
    def stats(self) -> PoolStats:
        """A snapshot of the pool's gauges and counters."""
        counts = self._counts
        return PoolStats(
            max_connections=self.max_connections,
            connecting=counts[_CONNECTING],
            idle=counts[_IDLE],
            in_use=counts[_LENT],
            draining=counts[_DRAINING],
            closing=counts[_CLOSING],
            waiting=len(self._waiters),
            opened=self._opened,
            closed=self._closed,
            connect_failures=self._connect_failures,
            acquired=self._acquired,
            reused=self._reused,
            discarded=self._discarded,
            acquire_timeouts=self._acquire_timeouts,
            drained_messages=self._drained_messages,
        )

    def __repr__(self) -> str:
        counts = self._counts
        state = "closed" if self._closing else "open" if self._entered else "not started"
        return (
            f"<WebSocketPool {self._ops.target!r} {state} [{counts[_CONNECTING]} connecting, "
            f"{counts[_IDLE]} idle, {counts[_LENT]} in use, {counts[_DRAINING]} draining | "
            f"{len(self._waiters)} waiting] max_connections={self.max_connections}>"
        )

    async def __aenter__(self) -> WebSocketPool[R]:
        if self._entered:
            raise RuntimeError("a pool can be opened only once; create a new one")
        self._entered = True
        self._all_closed = anyio.Event()
        self._redactor = install_httpx_redactor()
        try:
            if self._own_client:
                self._client = httpx.AsyncClient(
                    # The pool's limiter bounds the connections; the client's own
                    # limit would only get in the way of a resize.
                    limits=httpx.Limits(max_connections=None, max_keepalive_connections=0),
                    timeout=httpx.Timeout(self._config.connect_timeout),
                )
                await self._client.__aenter__()
                assert isinstance(self._ops, HttpxWsOps)
                self._ops.client = self._client
            elif isinstance(self._ops, HttpxWsOps):
                self._ops.client = self._client
            self._tg = anyio.create_task_group()
            await self._tg.__aenter__()
        except BaseException:
            await self._close_client()
            self._redactor.remove()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._tg is not None
        try:
            await self.aclose()
        finally:
            try:
                # The user's exception is deliberately not passed in: the task
                # group would wrap it in an ExceptionGroup. The host tasks never
                # raise (their errors are contained), so nothing is lost.
                await self._tg.__aexit__(None, None, None)
            finally:
                await self._close_client()
                self._redactor.remove()

    async def aclose(self) -> None:
        """Close the pool and every connection; idempotent.

        Waiting borrowers get :class:`PoolClosed`; idle, draining and lent
        connections are closed (a borrower's next I/O fails, its release is a
        no-op). Each close is bounded by ``close_timeout``. If this call is
        cancelled the connections still close, and leaving the pool's block
        waits for them.
        """
        if not self._closing:
            self._closing = True
            waiters = list(self._waiters)
            self._waiters.clear()
            for waiter in waiters:
                waiter.error = PoolClosed("the pool was closed while waiting for a connection")
                waiter.event.set()
            for conn in list(self._conns):
                if conn.state is _LENT:
                    logger.warning(
                        "closing a connection to %s that is still lent to a borrower",
                        self._ops.target,
                    )
                self._retire(conn, "pool_closed")
            if not self._conns and self._all_closed is not None:
                self._all_closed.set()
        if self._all_closed is not None:
            await self._all_closed.wait()
        else:
            await anyio.lowlevel.checkpoint()

    # -- lending --------------------------------------------------------------------

    async def _acquire(self, fresh: bool) -> _Conn[R]:
        await anyio.lowlevel.checkpoint_if_cancelled()
        if self._closing or not self._entered:
            raise PoolClosed(
                "the pool is closed"
                if self._closing
                else "the pool is not open yet: use `async with open_pool(...) as pool`"
            )
        if not fresh and not self._waiters:
            idle = self._idle
            ops = self._ops
            while idle:
                conn, _ = idle.popitem()  # the most recently used: hot, likely alive
                if ops.usable(conn.resource):  # type: ignore[arg-type]
                    self._lend(conn)
                    self._count_lease(conn)
                    return conn
                self._retire(conn, "server_closed", discarded=True)
        return await self._wait(fresh)

    async def _wait(self, fresh: bool) -> _Conn[R]:
        timeout = self._config.acquire_timeout
        if (
            timeout == 0
            and self._limiter.available_tokens <= len(self._waiters) - self._counts[_CONNECTING]
        ):
            self._acquire_timeouts += 1
            raise self._timeout_error(0.0)
        waiter: _Waiter[R] = _Waiter(fresh)
        self._waiters[waiter] = None
        self._grow()
        start = anyio.current_time()
        try:
            # With acquire_timeout=0 the borrower does not wait for a busy
            # pool, but it does wait for the connection opened for it.
            with anyio.move_on_after(timeout if timeout else math.inf):
                await waiter.event.wait()
        except BaseException:
            # Cancelled: leave no trace, and pass on a connection handed over
            # in the meantime.
            if self._waiters.pop(waiter, waiter) is waiter and waiter.conn is not None:
                self._give_back(waiter.conn, discard=False, reason="")
            raise
        if waiter.conn is not None:
            self._count_lease(waiter.conn)
            return waiter.conn
        if waiter.error is not None:
            error = waiter.error
            waiter.error = None
            raise error
        del self._waiters[waiter]
        self._acquire_timeouts += 1
        raise self._timeout_error(anyio.current_time() - start)

    def _timeout_error(self, waited: float) -> PoolTimeout:
        counts = self._counts
        return PoolTimeout(
            f"no connection to {self._ops.target} within {waited:.2f} s "
            f"(acquire_timeout={self._config.acquire_timeout}; "
            f"max_connections={self.max_connections}: {counts[_CONNECTING]} connecting, "
            f"{counts[_IDLE]} idle, {counts[_LENT]} in use, {counts[_DRAINING]} draining, "
            f"{counts[_CLOSING]} closing | {len(self._waiters)} waiting)"
        )

    def _lend(self, conn: _Conn[R]) -> None:
        self._set_state(conn, _LENT)
        conn.lease += 1
        resource = conn.resource
        self._lent[id(resource)] = conn
        self._ops.unpark(resource)  # type: ignore[arg-type]

    def _count_lease(self, conn: _Conn[R]) -> None:
        self._acquired += 1
        if conn.lent_before:
            self._reused += 1
        conn.lent_before = True

    def _give_back(self, conn: _Conn[R], *, discard: bool, reason: str) -> None:
        """A lent connection comes back (synchronous: never waits for I/O)."""
        del self._lent[id(conn.resource)]
        if conn.state is not _LENT:
            return  # closed under its borrower (the pool closed, the host failed)
        if discard:
            self._retire(conn, reason, discarded=True)
        elif self._closing:
            self._retire(conn, "pool_closed")
        elif not self._ops.usable(conn.resource):  # type: ignore[arg-type]
            self._retire(conn, "server_closed", discarded=True)
        else:
            self._put_back(conn)

    def _put_back(self, conn: _Conn[R]) -> None:
        """Hand a healthy connection to the first waiter, or make it idle."""
        if self._limiter.borrowed_tokens > self._limiter.total_tokens:
            self._retire(conn, "resized")
            return
        waiters = self._waiters
        if waiters:
            waiter = next(iter(waiters))
            if waiter.fresh and conn.lent_before:
                # The first in line asked for a new connection: this one makes
                # room for it (its capacity is reused once it is closed).
                self._retire(conn, "make_room")
                return
            del waiters[waiter]
            self._lend(conn)
            waiter.conn = conn
            waiter.event.set()
            return
        self._set_state(conn, _IDLE)
        self._idle[conn] = None
        self._drained_messages += self._ops.park(conn.resource, self._sink)  # type: ignore[arg-type]

    def _on_idle_message(self, event: Event) -> None:
        """The sink of idle connections: what a server sends while nobody holds one."""
        self._drained_messages += 1
        if logger.isEnabledFor(logging.DEBUG):
            if isinstance(event, TextMessage | BytesMessage):
                logger.debug(
                    "read a %d-byte %s message from an idle connection to %s",
                    len(event.data),
                    "text" if isinstance(event, TextMessage) else "binary",
                    self._ops.target,
                )
            else:
                logger.debug("read a %s event from an idle connection", type(event).__name__)

    # -- capacity and connections ---------------------------------------------------------

    def _set_state(self, conn: _Conn[R], state: _State) -> None:
        counts = self._counts
        counts[conn.state] -= 1
        counts[state] += 1
        conn.state = state

    def _grow(self) -> None:
        """Open connections for the waiters that no connection being opened will serve."""
        if self._closing or self._tg is None:
            return
        counts = self._counts
        uncovered = len(self._waiters) - counts[_CONNECTING]
        while uncovered > 0:
            conn: _Conn[R] = _Conn()
            try:
                self._limiter.acquire_on_behalf_of_nowait(conn)
            except anyio.WouldBlock:
                break
            self._start(conn)
            uncovered -= 1
        # A full pool: borrowers that asked for a new connection get room by
        # closing the idle connections that waited longest.
        uncovered -= counts[_CLOSING]
        while uncovered > 0 and self._idle and next(iter(self._waiters)).fresh:
            self._retire(next(iter(self._idle)), "make_room")
            uncovered -= 1

    def _start(self, conn: _Conn[R]) -> None:
        counts = self._counts
        counts[_CONNECTING] += 1
        self._conns.add(conn)
        assert self._tg is not None
        self._tg.start_soon(self._host, conn, name=f"anyio_wspool host {self._ops.target}")

    def _retire(self, conn: _Conn[R], reason: str, *, discarded: bool = False) -> None:
        """Start closing a connection, whatever its state (synchronous)."""
        state = conn.state
        if state >= _CLOSING:
            return
        if state is _IDLE:
            self._idle.pop(conn, None)
        elif state is _CONNECTING and conn.scope is not None:
            conn.scope.cancel()
        if discarded:
            self._discarded += 1
        conn.reason = reason
        self._set_state(conn, _CLOSING)
        conn.wake.set()

    def _on_dead(self, conn: _Conn[R]) -> None:
        """The resource died on its own (server closed it, keep-alive failed)."""
        if conn.state is _IDLE:
            self._retire(conn, "server_closed")

    async def _host(self, conn: _Conn[R]) -> None:
        """The task that owns one connection, from handshake to close."""
        try:
            await self._run(conn)
        finally:
            self._finish(conn)

    async def _run(self, conn: _Conn[R]) -> None:
        config = self._config
        scope = anyio.CancelScope(deadline=anyio.current_time() + config.connect_timeout)
        conn.scope = scope
        try:
            with scope:
                async with self._ops.open() as resource:
                    # Connected: the deadline now only bounds the close.
                    scope.deadline = math.inf
                    self._connected(conn, resource)
                    await conn.wake.wait()
                    scope.deadline = anyio.current_time() + config.close_timeout
        except Exception as exc:
            if conn.opened:
                logger.warning(
                    "a connection to %s failed in the background and was closed: %s",
                    self._ops.target,
                    describe_error(exc, with_traceback=True),
                )
                self._retire(conn, "error")
            else:
                self._connect_failed(conn, exc)
            return
        if not conn.opened and scope.cancelled_caught and conn.state is _CONNECTING:
            self._connect_failed(conn, self._ops.connect_timeout_error(config.connect_timeout))

    def _connected(self, conn: _Conn[R], resource: R) -> None:
        conn.resource = resource
        conn.opened = True
        self._opened += 1
        self._ops.attach(resource, lambda: self._on_dead(conn), self._config.close_timeout)
        if conn.state is not _CONNECTING:  # retired meanwhile (the pool is closing)
            return
        if self._closing:
            self._retire(conn, "pool_closed")
            return
        self._put_back(conn)

    def _connect_failed(self, conn: _Conn[R], error: Exception) -> None:
        if conn.state is _CONNECTING:
            self._set_state(conn, _CLOSING)
        if self._closing:
            return
        self._connect_failures += 1
        if self._waiters:
            waiter = next(iter(self._waiters))
            del self._waiters[waiter]
            waiter.error = error
            waiter.event.set()
        else:
            logger.warning(
                "could not open a connection to %s: %s",
                self._ops.target,
                describe_error(error),
            )

    def _finish(self, conn: _Conn[R]) -> None:
        """The host task ends: the connection is closed, its capacity is free."""
        if conn.state is not _CLOSING:
            self._set_state(conn, _CLOSING)
        if conn.opened:
            self._closed += 1
            logger.debug("closed a connection to %s (%s)", self._ops.target, conn.reason)
        self._set_state(conn, _CLOSED)
        self._conns.discard(conn)
        self._limiter.release_on_behalf_of(conn)
        if self._closing:
            if not self._conns and self._all_closed is not None:
                self._all_closed.set()
        else:
            self._grow()

    # -- clients ------------------------------------------------------------------------

    def _check_client_limit(self, max_connections: int) -> None:
        assert self._client is not None
        limit = client_connection_limit(self._client)
        if limit is not None and limit < max_connections:
            raise ValueError(
                f"the given httpx.AsyncClient allows at most {limit} connections "
                f"(httpx.Limits.max_connections) but max_connections={max_connections}: "
                "each open WebSocket holds one of the client's connections for its whole "
                f"life. Give the client limits=httpx.Limits(max_connections={max_connections}) "
                "or more, or lower max_connections."
            )

    async def _close_client(self) -> None:
        if self._own_client and self._client is not None:
            client, self._client = self._client, None
            with anyio.CancelScope(shield=True), anyio.move_on_after(self._config.close_timeout):
                await client.aclose()
