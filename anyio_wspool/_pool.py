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

import inspect
import logging
import math
import random
from collections import OrderedDict, deque
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
    is_transient,
)
from ._errors import PoolClosed, PoolError, PoolTimeout
from ._options import (
    PoolOptions,
    WsOptions,
    check_callable,
    check_int,
    check_seconds,
    parse_options,
)
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
        "delay",
        "expires_at",
        "generation",
        "idle_since",
        "last_data",
        "lease",
        "lent_before",
        "lifetime",
        "opened",
        "reason",
        "resource",
        "scope",
        "state",
        "wake",
    )

    def __init__(self, wake: anyio.Event, generation: int, delay: float = 0.0) -> None:
        self.state = _CONNECTING
        #: the pool's generation when this connection was started (see invalidate())
        self.generation = generation
        #: seconds to wait before the first attempt (background replacements back off)
        self.delay = delay
        #: drawn once, 90-100 % of max_lifetime; the deadline it gives
        self.lifetime = math.inf
        self.expires_at = math.inf
        self.idle_since = 0.0
        #: when the last server data counted by drain_condition arrived (draining)
        self.last_data = 0.0
        self.resource: R | None = None
        self.opened = False
        self.lent_before = False
        #: incremented at each lend, so that a lease can tell it is still current
        self.lease = 0
        self.reason = ""
        self.scope: anyio.CancelScope | None = None
        #: set to make the host task look at the connection again (retire it)
        self.wake = wake


class _Waiter(Generic[R]):
    """A borrower waiting for a connection: the pool fills in ``conn`` or ``error``."""

    __slots__ = ("conn", "deadline", "error", "event", "fresh")

    def __init__(self, fresh: bool, event: anyio.Event, deadline: float) -> None:
        self.fresh = fresh
        self.conn: _Conn[R] | None = None
        self.error: BaseException | None = None
        self.event = event
        #: when acquire_timeout runs out (see WebSocketPool._expire_waiters)
        self.deadline = deadline


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
        self._capacity = config.max_connections
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
        self._sink = self._drained
        #: whether a released connection goes through the host task before idle
        self._prepare_on_release = config.drain_on_release or config.on_release is not None
        #: drained events waiting for the on_drained callback (see _dispatch_drained)
        self._drained_queue: deque[Event] = deque()
        self._drained_ready: anyio.Event | None = None
        self._dispatch_scope = anyio.CancelScope()
        self._dispatch_done = anyio.Event()
        self._dispatch_stop = False
        self._rng = random.Random()
        #: bumped by invalidate(): connections of an older generation are not lent again
        self._generation = 0
        #: delay before the next background (re)connection, after failures
        self._warm_delay = 0.0
        self._last_connect_error: Exception | None = None
        #: woken whenever a connection opens or the pool closes (wait_ready)
        self._state_waiter: anyio.Event | None = None
        #: the scope of the pool's own service tasks (the sweep, the waiters' timeouts)
        self._service_scope = anyio.CancelScope()
        self._watchdog_wakeup: anyio.Event | None = None
        #: the running backend's Event class: anyio.Event() looks the backend up each time
        self._event_class: Callable[[], anyio.Event] = anyio.Event
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

    def prewarm(self, n: int = 1) -> None:
        """Open connections in the background, without waiting, until ``n`` are idle.

        Counts the connections already being opened; stops at capacity; does
        nothing when ``n`` connections are already idle. Failures are logged.
        """
        n = check_int("n", n, minimum=0)
        self._check_open()
        self._grow(prewarm=n)

    async def wait_ready(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Wait until ``min_connections`` connections are open.

        Raises:
            PoolTimeout: not ready within ``timeout`` seconds (the last
                connection error, if any, is its ``__cause__``).
            PoolClosed: the pool is or got closed.
        """
        limit = check_seconds("timeout", timeout, allow_none=True, allow_zero=True)
        self._check_open()
        with anyio.move_on_after(math.inf if limit is None else limit):
            while self._open_count() < min(self._config.min_connections, self.max_connections):
                if self._state_waiter is None:
                    self._state_waiter = anyio.Event()
                await self._state_waiter.wait()
                self._check_open()
            return
        raise PoolTimeout(
            f"{self._open_count()} of min_connections={self._config.min_connections} "
            f"connections to {self._ops.target} were open after {limit} s"
        ) from self._last_connect_error

    def invalidate(self) -> None:
        """Close every idle connection now, and every lent one when it comes back.

        Later borrowers get new connections (and ``min_connections`` are
        reopened). Use it when what the connections were opened with (a token,
        a server address behind DNS) is no longer right.
        """
        self._generation += 1
        for conn in list(self._idle):
            self._retire(conn, "invalidated")
        self._grow()

    @property
    def max_connections(self) -> int:
        """The capacity; assign to resize (shrinking closes idle connections first)."""
        return self._capacity

    @max_connections.setter
    def max_connections(self, value: int) -> None:
        value = check_int("max_connections", value, minimum=1)
        if self._client is not None and not self._own_client:
            self._check_client_limit(value)
        self._limiter.total_tokens = value
        self._capacity = value
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
            if isinstance(self._ops, HttpxWsOps):
                self._ops.client = self._client
            self._tg = anyio.create_task_group()
            await self._tg.__aenter__()
        except BaseException:
            await self._close_client()
            self._redactor.remove()
            raise
        config = self._config
        self._event_class = type(anyio.Event())
        self._tg.start_soon(self._run_services, name="anyio_wspool services")
        if config.on_drained is not None:
            self._tg.start_soon(self._dispatch_drained, name="anyio_wspool on_drained")
        self._grow()  # min_connections
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
            self._service_scope.cancel()
            self._notify()
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
            await self._stop_dispatch()
        else:
            await anyio.lowlevel.checkpoint()

    async def _stop_dispatch(self) -> None:
        """Give ``on_drained`` what the closed connections drained, within close_timeout."""
        if self._config.on_drained is None or self._dispatch_done.is_set():
            return
        self._dispatch_stop = True
        self._wake_dispatcher()
        with anyio.move_on_after(self._config.close_timeout):
            await self._dispatch_done.wait()
        if not self._dispatch_done.is_set():
            logger.warning(
                "on_drained did not finish within close_timeout; %d drained event(s) dropped",
                len(self._drained_queue),
            )
            self._dispatch_scope.cancel()

    # -- lending --------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closing or not self._entered:
            raise PoolClosed(
                "the pool is closed"
                if self._closing
                else "the pool is not open yet: use `async with open_pool(...) as pool`"
            )

    async def _acquire(self, fresh: bool) -> _Conn[R]:
        await anyio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        if not fresh:
            while not self._waiters:
                conn = self._take_idle()
                if conn is None:
                    break
                if self._config.check_on_acquire and not await self._answers_ping(conn):
                    continue
                self._count_lease(conn)
                return conn
        return await self._wait(fresh)

    def _take_idle(self) -> _Conn[R] | None:
        """Lend the most recently used healthy idle connection, retiring unfit ones."""
        idle = self._idle
        while idle:
            conn, _ = idle.popitem()  # the most recently used: hot, likely alive
            reason = self._unfit(conn)
            if not reason:
                self._lend(conn)
                return conn
            self._retire(conn, reason, discarded=reason == "server_closed")
        return None

    def _unfit(self, conn: _Conn[R]) -> str:
        """Why ``conn`` must not be lent (guarantee 4), or ``""``."""
        if not self._ops.usable(conn.resource):  # type: ignore[arg-type]
            return "server_closed"
        if conn.expires_at != math.inf and anyio.current_time() >= conn.expires_at:
            return "expired"
        if conn.generation != self._generation:
            return "invalidated"
        return ""

    async def _answers_ping(self, conn: _Conn[R]) -> bool:
        """``check_on_acquire``: ping a lent connection; retire it if no pong comes in time."""
        failure: BaseException | None = None
        try:
            with anyio.move_on_after(self._config.connect_timeout) as scope:
                await self._ops.ping(conn.resource)  # type: ignore[arg-type]
        except Exception as exc:
            failure = exc
        except BaseException:
            self._give_back(conn, discard=True, reason="ping_failed")
            raise
        if failure is None and not scope.cancelled_caught:
            return True
        logger.info(
            "an idle connection to %s did not answer a ping%s; replacing it",
            self._ops.target,
            "" if failure is None else f" ({describe_error(failure)})",
        )
        self._give_back(conn, discard=True, reason="ping_failed")
        return False

    async def _wait(self, fresh: bool) -> _Conn[R]:
        timeout = self._config.acquire_timeout
        if (
            timeout == 0
            and self._limiter.available_tokens <= len(self._waiters) - self._counts[_CONNECTING]
        ):
            self._acquire_timeouts += 1
            raise self._timeout_error(0.0)
        waiters = self._waiters
        if not waiters and self._watchdog_wakeup is not None:
            self._watchdog_wakeup.set()
        waiter: _Waiter[R] = _Waiter(
            fresh,
            self._event_class(),
            anyio.current_time() + timeout if timeout else math.inf,
        )
        waiters[waiter] = None
        self._grow()
        try:
            # No cancel scope per waiter: waiters are queued in deadline order,
            # and one task of the pool (_expire_waiters) fails those whose
            # acquire_timeout ran out. With acquire_timeout=0 the borrower does
            # not wait for a busy pool, but it does wait for the connection
            # opened for it.
            await waiter.event.wait()
        except BaseException:
            # Cancelled: leave no trace, and pass on a connection handed over
            # in the meantime.
            if waiters.pop(waiter, waiter) is waiter and waiter.conn is not None:
                self._give_back(waiter.conn, discard=False, reason="")
            raise
        if waiter.conn is not None:
            self._count_lease(waiter.conn)
            return waiter.conn
        error = waiter.error
        assert error is not None
        waiter.error = None
        raise error

    async def _expire_waiters(self) -> None:
        """Fail the waiters whose ``acquire_timeout`` ran out (a task of the pool).

        Every waiter waits ``acquire_timeout`` from the moment it queues, so the
        queue is in deadline order: only its head needs watching. This costs one
        timer for the pool instead of a cancel scope with a timer per wait.
        """
        timeout = self._config.acquire_timeout
        assert timeout
        waiters = self._waiters
        while True:
            if not waiters:
                self._watchdog_wakeup = self._event_class()
                await self._watchdog_wakeup.wait()
                self._watchdog_wakeup = None
                continue
            head = next(iter(waiters))
            if head.deadline > anyio.current_time():
                await anyio.sleep_until(head.deadline)
                continue
            now = anyio.current_time()
            while waiters:
                head = next(iter(waiters))
                if head.deadline > now:
                    break
                del waiters[head]
                self._acquire_timeouts += 1
                head.error = self._timeout_error(timeout)
                head.event.set()

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
        if self._config.refresh_on_acquire and conn.lifetime != math.inf:
            conn.expires_at = anyio.current_time() + conn.lifetime
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
        elif reason := self._unfit(conn):
            self._retire(conn, reason, discarded=reason == "server_closed")
        elif self._prepare_on_release:
            # on_release and the drain are I/O: the host task does them, and the
            # borrower who released goes on at once.
            self._set_state(conn, _DRAINING)
            conn.wake.set()
        else:
            self._put_back(conn)

    def _put_back(self, conn: _Conn[R]) -> None:
        """Hand a healthy connection to the first waiter, or make it idle."""
        if len(self._conns) > self._capacity:  # each connection holds one token
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
        if self._config.idle_timeout is not None:
            conn.idle_since = anyio.current_time()
        self._idle[conn] = None
        self._ops.park(conn.resource, self._sink)  # type: ignore[arg-type]

    def _drained(self, event: Event) -> None:
        """Where server messages go that no borrower will read (idle or released).

        Counted, and given to ``on_drained`` by a task of the pool (so that the
        user's callback never runs in, nor blocks, a connection's reader), or
        logged at DEBUG by size only.
        """
        self._drained_messages += 1
        if self._config.on_drained is not None:
            self._drained_queue.append(event)
            self._wake_dispatcher()
        elif logger.isEnabledFor(logging.DEBUG):
            if isinstance(event, TextMessage | BytesMessage):
                logger.debug(
                    "drained a %d-byte %s message from a connection to %s",
                    len(event.data),
                    "text" if isinstance(event, TextMessage) else "binary",
                    self._ops.target,
                )
            else:
                logger.debug("drained a %s event", type(event).__name__)

    # -- capacity and connections ---------------------------------------------------------

    def _open_count(self) -> int:
        counts = self._counts
        return counts[_IDLE] + counts[_LENT] + counts[_DRAINING]

    def _notify(self) -> None:
        waiter = self._state_waiter
        if waiter is not None:
            self._state_waiter = None
            waiter.set()

    def _set_state(self, conn: _Conn[R], state: _State) -> None:
        counts = self._counts
        counts[conn.state] -= 1
        counts[state] += 1
        conn.state = state

    def _grow(self, prewarm: int = 0) -> None:
        """Open the connections that are needed and that capacity allows.

        Needed: one for each waiter that no connection being opened will serve,
        enough to keep ``min_connections`` open, and what :meth:`prewarm` asked.
        """
        if self._closing or self._tg is None:
            return
        counts = self._counts
        connecting = counts[_CONNECTING]
        live = connecting + counts[_IDLE] + counts[_LENT] + counts[_DRAINING]
        for_waiters = len(self._waiters) - connecting
        for_others = max(self._config.min_connections - live, prewarm - counts[_IDLE] - connecting)
        uncovered = max(for_waiters, for_others)
        limiter = self._limiter
        # (Checked first: at a full pool, every new waiter comes through here.)
        while uncovered > 0 and limiter.available_tokens >= 1:
            # Background openings back off after failures; borrowers never wait.
            conn: _Conn[R] = _Conn(
                self._event_class(), self._generation, 0.0 if for_waiters > 0 else self._warm_delay
            )
            limiter.acquire_on_behalf_of_nowait(conn)
            self._start(conn)
            uncovered -= 1
            for_waiters -= 1
        # A full pool: borrowers that asked for a new connection get room by
        # closing the idle connections that waited longest.
        for_waiters -= counts[_CLOSING]
        while for_waiters > 0 and self._idle and next(iter(self._waiters)).fresh:
            self._retire(next(iter(self._idle)), "make_room")
            for_waiters -= 1

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
        elif state is _DRAINING:
            # Released, maybe with messages its borrower never read: they are
            # drained like any other, not dropped unseen with the connection.
            self._ops.park(conn.resource, self._sink)  # type: ignore[arg-type]
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

    async def _run_services(self) -> None:
        """The pool's own periodic work, ended by aclose(): the sweep, acquire timeouts."""
        config = self._config
        with self._service_scope:
            async with anyio.create_task_group() as tg:
                if config.acquire_timeout:
                    tg.start_soon(self._expire_waiters, name="anyio_wspool acquire timeouts")
                if config.idle_timeout is not None or config.max_lifetime is not None:
                    tg.start_soon(self._sweep_forever, name="anyio_wspool sweep")

    async def _sweep_forever(self) -> None:
        while True:
            await anyio.sleep(self._config.cleanup_interval)
            self._sweep()

    def _sweep(self) -> None:
        """Retire idle connections that are dead, expired, or idle for too long.

        Looks at idle connections only (oldest first): its cost does not grow
        with the number of lent ones, and lending never pays for it. Idleness
        never takes the pool below ``min_connections``.
        """
        idle_timeout = self._config.idle_timeout
        now = anyio.current_time()
        for conn in list(self._idle):
            reason = self._unfit(conn)
            if reason:
                self._retire(conn, reason, discarded=reason == "server_closed")
            elif (
                idle_timeout is not None
                and now - conn.idle_since >= idle_timeout
                and self._open_count() > self._config.min_connections
            ):
                self._retire(conn, "idle")

    async def _host(self, conn: _Conn[R]) -> None:
        """The task that owns one connection, from handshake to close."""
        try:
            await self._run(conn)
        finally:
            self._finish(conn)

    async def _run(self, conn: _Conn[R]) -> None:
        config = self._config
        error: Exception | None = None
        attempt = 0
        # Retiring a connection that is still connecting cancels this scope.
        with anyio.CancelScope() as outer:
            conn.scope = outer
            if conn.delay:
                await anyio.sleep(conn.delay)
            while True:
                attempt += 1
                scope = anyio.CancelScope(deadline=anyio.current_time() + config.connect_timeout)
                hook_error: Exception | None = None
                try:
                    with scope:
                        async with self._ops.open() as resource:
                            if config.on_connect is not None:
                                # Caught here and raised below, outside the
                                # session, whose task group would wrap it.
                                try:
                                    await config.on_connect(resource)
                                except Exception as exc:
                                    hook_error = exc
                            if hook_error is None:
                                # Connected: the deadline now only bounds the close.
                                scope.deadline = math.inf
                                self._connected(conn, resource)
                                await self._serve(conn, resource)
                                scope.deadline = anyio.current_time() + config.close_timeout
                    if hook_error is not None:
                        raise hook_error
                except Exception as exc:
                    if conn.opened:
                        logger.warning(
                            "a connection to %s failed in the background and was closed: %s",
                            self._ops.target,
                            describe_error(exc, with_traceback=True),
                        )
                        self._retire(conn, "error")
                        return
                    error = exc
                else:
                    if conn.opened:
                        return
                    error = self._ops.connect_timeout_error(config.connect_timeout)
                self._connect_failures += 1
                if attempt >= config.connect_attempts or not is_transient(error):
                    break
                delay = self._backoff(attempt)
                logger.info(
                    "connection attempt %d of %d to %s failed (%s); retrying in %.2f s",
                    attempt,
                    config.connect_attempts,
                    self._ops.target,
                    describe_error(error),
                    delay,
                )
                await anyio.sleep(delay)
        if outer.cancelled_caught or error is None:
            return  # retired while connecting: the pool is closing or invalidated
        if is_transient(error):
            error.add_note(
                f"anyio_wspool: {attempt} attempt(s) to connect to {self._ops.target} failed"
            )
        else:
            error.add_note(
                f"anyio_wspool: connecting to {self._ops.target} failed after {attempt} "
                "attempt(s); this error is not retried"
            )
        self._connect_failed(conn, error)

    async def _serve(self, conn: _Conn[R], resource: R) -> None:
        """The host task's life while the connection is open: prepare releases, until retired."""
        while True:
            await conn.wake.wait()
            conn.wake = self._event_class()
            if conn.state is _DRAINING:
                await self._prepare(conn, resource)
            if conn.state >= _CLOSING:
                return

    async def _prepare(self, conn: _Conn[R], resource: R) -> None:
        """Run ``on_release``, then drain stale server data, then put the connection back.

        Both together are bounded by ``drain_timeout``: a hook that hangs, or a
        server that keeps sending, gets the connection closed, never lent.
        """
        config = self._config
        failure: Exception | None = None
        with anyio.move_on_after(config.drain_timeout) as scope:
            try:
                if config.on_release is not None:
                    await config.on_release(resource)
                if config.drain_on_release and conn.state is _DRAINING:
                    await self._drain(conn, resource)
            except Exception as exc:
                failure = exc
        if conn.state is not _DRAINING:
            return  # retired meanwhile (the pool closed, the server closed it)
        if failure is not None:
            logger.warning(
                "on_release failed on a connection to %s; closing it: %s",
                self._ops.target,
                describe_error(failure),
            )
            self._retire(conn, "release_failed", discarded=True)
        elif scope.cancelled_caught:
            logger.info(
                "a released connection to %s was still busy after drain_timeout=%g s; closing it",
                self._ops.target,
                config.drain_timeout,
            )
            self._retire(conn, "stale_data", discarded=True)
        elif reason := self._unfit(conn):
            self._retire(conn, reason, discarded=reason == "server_closed")
        else:
            self._put_back(conn)

    async def _drain(self, conn: _Conn[R], resource: R) -> None:
        """Wait until ``drain_quiet_period`` passes without server data (guarantee 7)."""
        quiet = self._config.drain_quiet_period
        condition = self._config.drain_condition
        drained = self._drained

        def sink(event: Event) -> None:
            drained(event)
            if condition is None or condition(event):
                conn.last_data = anyio.current_time()

        conn.last_data = anyio.current_time()
        # What the borrower left unread goes to the sink now, what arrives later too.
        self._ops.park(resource, sink)
        while conn.state is _DRAINING:
            remaining = conn.last_data + quiet - anyio.current_time()
            if remaining <= 0:
                return
            with anyio.move_on_after(remaining):
                await conn.wake.wait()  # only a retirement sets it while draining

    def _wake_dispatcher(self) -> None:
        ready = self._drained_ready
        if ready is not None:
            self._drained_ready = None
            ready.set()

    async def _dispatch_drained(self) -> None:
        """The task that gives drained events to ``on_drained``, in order."""
        callback = self._config.on_drained
        assert callback is not None
        queue = self._drained_queue
        try:
            with self._dispatch_scope:
                while True:
                    while queue:
                        event = queue.popleft()
                        try:
                            result = callback(event)
                            if inspect.isawaitable(result):
                                await result
                        except Exception as exc:
                            logger.warning(
                                "on_drained raised an exception (the pool goes on): %s",
                                describe_error(exc, with_traceback=True),
                            )
                    if self._dispatch_stop:
                        return
                    self._drained_ready = anyio.Event()
                    await self._drained_ready.wait()
        finally:
            self._dispatch_done.set()

    def _backoff(self, attempt: int) -> float:
        """Exponential back-off with full jitter, capped at ``retry_backoff_max``."""
        config = self._config
        cap = min(config.retry_backoff_max, config.retry_backoff * 2 ** (attempt - 1))
        return self._rng.uniform(0.0, cap)

    def _connected(self, conn: _Conn[R], resource: R) -> None:
        config = self._config
        conn.resource = resource
        conn.opened = True
        self._opened += 1
        self._warm_delay = 0.0
        if config.max_lifetime is not None:
            # Jitter, so that connections opened together do not all expire together.
            conn.lifetime = self._rng.uniform(0.9, 1.0) * config.max_lifetime
            conn.expires_at = anyio.current_time() + conn.lifetime
        self._ops.attach(resource, lambda: self._on_dead(conn), config.close_timeout)
        if conn.state is not _CONNECTING:  # retired meanwhile (the pool is closing)
            return
        if self._closing:
            self._retire(conn, "pool_closed")
        elif conn.generation != self._generation:
            self._retire(conn, "invalidated")
        else:
            self._put_back(conn)
        self._notify()

    def _connect_failed(self, conn: _Conn[R], error: Exception) -> None:
        if conn.state is _CONNECTING:
            self._set_state(conn, _CLOSING)
        if self._closing:
            return
        self._last_connect_error = error
        if self._waiters:
            waiter = next(iter(self._waiters))
            del self._waiters[waiter]
            waiter.error = error
            waiter.event.set()
        else:
            # Nobody asked for this one (warm-up, replacement): back off before the next.
            self._warm_delay = min(
                self._config.retry_backoff_max,
                max(self._config.retry_backoff, 2 * self._warm_delay),
            )
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
