"""The pool: lending, capacity, the public API.

How it works, in one paragraph: each connection is a :class:`~._conn.Conn`, a
small state machine hosted by its own task in the pool's task group
(:mod:`._host`). That *host task* opens the resource (enters the connector's
context manager), then sleeps until the connection is retired, then leaves the
context: only the task that entered an httpx-ws session may exit it. Lending
and giving back never wait for the host task: they are plain synchronous
bookkeeping (a dict pop, a state change), so that a lend and a give-back cost
about as much as a bare ``CapacityLimiter`` round trip. Capacity is one
``anyio.CapacityLimiter`` whose tokens are borrowed on behalf of the
connections (not of tasks), which is what lets one task hold several leases.
Borrowers that find no idle connection wait in one FIFO queue
(:mod:`._waiters`); a connection that comes back, or a new one that opens,
goes to the first of them. Connections being opened are not bound to a
borrower: a borrower that gives up leaves the new connection to the next one,
or to the idle set. What the pool knows about the resource itself (how to
open it, whether it still works, how to read what arrives while nobody has
it) comes from its connector (:mod:`._connector`).
"""

from __future__ import annotations

import logging
import math
from asyncio import InvalidStateError
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Container
from contextlib import AbstractAsyncContextManager
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, NoReturn, TypeVar, Unpack, overload

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup, TaskStatus

from ._backend import Signal, bind, wake
from ._circuit import Circuit, CircuitState
from ._conn import TRANSITIONS, Conn, Reason, State
from ._connector import Connector
from ._dispatch import Dispatcher
from ._errors import PoolClosed, PoolError, PoolOverloaded, PoolTimeout, PoolUnavailable
from ._events import (
    AcquiredEvent,
    CircuitClosedEvent,
    CircuitOpenedEvent,
    ConnectedEvent,
    ConnectFailedEvent,
    PoolEvent,
    ReleasedEvent,
    RetiredEvent,
    error_type,
)
from ._fleet import FleetSlots
from ._host import ConnectionHost
from ._leases import LeaseWatch
from ._options import PoolOptions, WsOptions, check_int, check_seconds, configure
from ._redact import describe_error
from ._stats import COUNTER_NAMES, Counters, PoolStats, describe_gauges
from ._waiters import Waiter, WaiterQueue

if TYPE_CHECKING:
    import httpx
    import httpx2
    from httpx2.websockets import AsyncWebSocketSession as Httpx2Session
    from httpx_ws import AsyncWebSocketSession

    from ._group import GroupCapacity

__all__ = ("WebSocketPool",)

logger = logging.getLogger("anyio_wspool")

R = TypeVar("R")

_CONNECTING, _IDLE, _LENT, _DRAINING, _CLOSING, _CLOSED = State
_INF = math.inf
#: the generation of a connection left without a shared slot (never a pool's
#: own: those count up from 0): unfit to be lent again
_OVER_LIMIT = -1

#: close codes by which a server says it is going away, restarting, or too busy
#: for now (RFC 6455 §7.4.1, IANA): the next connections back off
RESTART_CODES = frozenset({1001, 1012, 1013})


def is_fatal_close(code: int | None) -> bool:
    """A close that another attempt will not fix: a policy violation, or an application's code.

    1008 (policy violation) and 4000-4999 (the application's own codes, such
    as "unauthorised" or "quota exceeded").
    """
    return code is not None and (code == 1008 or 4000 <= code <= 4999)


def _not_open() -> Signal:
    raise RuntimeError("the pool is not open")


class _Lease(Waiter[R]):
    """What ``pool.connection()`` returns: an async context manager for one lease.

    It is also the borrower's place in the queue: at a busy pool the block
    queues this very object and waits in its own ``__aenter__``, one object and
    one coroutine a lease. Around a fast client a lease costs a few
    microseconds, and each extra object or coroutine frame on its way shows.
    """

    __slots__ = ("_busy", "_pool")

    def __init__(self, pool: WebSocketPool[R], fresh: bool) -> None:
        self._pool = pool
        self.fresh = fresh
        self.conn = None
        self.error = None
        #: a block is in progress: being entered (maybe waiting), or holding a connection
        self._busy = False

    async def __aenter__(self) -> R:
        if self._busy:
            raise RuntimeError("this pool.connection() context manager is already in use")
        self._busy = True
        pool = self._pool
        try:
            if pool._quick_wait and pool._waiters and not pool._idle and not self.fresh:
                # A busy pool: straight to the queue. This is what _wait and
                # _enqueue do for a borrower that no admission rule, circuit
                # breaker or on_event concerns, written out so that the wait
                # is this one coroutine: around a fast client a lease is a
                # few microseconds, and each call on its way shows.
                if (check := pool._cancel_check()) is not None:  # (as _wait does)
                    await check
                if pool._closing:
                    pool._check_open()
                timeout = pool._config.acquire_timeout
                # (Bound callables kept as attributes: read as such, since a call
                # written as a method call is not specialised for them.)
                now, signal = pool._now, pool._signal
                self.deadline = now() + timeout if timeout else _INF
                self.event = event = signal()
                pool._waiters[self] = None
                if len(pool._conns) < pool._capacity or pool._paused:
                    pool._grow()  # (nothing is idle: see _enqueue)
                try:
                    await event
                except BaseException:
                    pool._abandon(self)
                    raise
                conn = self.conn
                if conn is None or pool._closing:
                    raise pool._not_served(self)
                # (The lease was counted by the hand-off: see _served.)
                if pool._lease_watch is not None:
                    pool._lease_watch.add(conn)
            elif pool._quick_idle and pool._idle and not self.fresh and not pool._closing:
                # An idle connection: _acquire's common case, written out too.
                # Like anyio's own primitives, a cancelled borrower takes
                # nothing even when it would not have to wait.
                if (check := pool._cancel_check()) is not None:
                    await check
                conn = pool._take_idle()
                if conn is None:  # (every idle one was unfit)
                    conn = await pool._wait(False)
                else:
                    conn.uses += 1  # (_count_lease, inline)
                    if pool._lease_watch is not None:
                        pool._lease_watch.add(conn)
                self.conn = conn
            elif pool._emit is not None:
                self.conn = conn = await pool._acquire_observed(self.fresh)
            else:
                self.conn = conn = await pool._acquire(self.fresh)
        except BaseException:
            self._busy = False
            raise
        return conn.resource

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn = self.conn
        assert conn is not None
        self.conn = None
        self._busy = False
        pool = self._pool
        if exc_type is not None:
            # Its state is unknown (a half-sent message, an unread reply).
            pool._give_back(conn, Reason.ERROR_IN_BLOCK)
        elif pool._plain_release and conn.state is _LENT and not pool._closing:
            # All that _give_back does for a lease that no on_event observes
            # and that no on_release or drain must follow.
            waiters = pool._waiters
            if (
                waiters
                and pool._quick_hand_off
                and conn.generation == pool._generation
                and len(pool._conns) <= pool._capacity
            ):
                # And all that _put_back does when the connection cannot be
                # unfit (see _quick_hand_off) and the first in line takes any
                # connection: the next lease begins at once.
                conn.lease += 2
                conn.uses += 1
                waiter = waiters.popitem(False)[0]  # (last=False, given by position: cheaper)
                waiter.conn = conn
                try:
                    waiter.event.set_result(None)
                except InvalidStateError:  # cancelled meanwhile: the next one
                    pool._not_taken(waiter, conn)
                    pool._put_back(conn)
                return
            conn.lease += 1
            pool._put_back(conn)
        else:
            pool._give_back(conn, None)


class WebSocketPool(Generic[R]):
    """A pool of reusable connections: httpx-ws WebSocket sessions, or any resource.

    Create it with :func:`open_pool` (or directly, with the same arguments) and
    use it as an async context manager: entering starts the pool's task group,
    leaving closes every connection and ends every task the pool started, on
    success, on error and on cancellation. Creating it needs no running event
    loop; each pool can be entered once.

    Examples:
        Lend a connection for one exchange:

            async with open_pool("wss://example.com/ws") as pool:
                async with pool.connection() as ws:
                    await ws.send_text("hello")
                    reply = await ws.receive_text()
    """

    @overload
    def __init__(
        self: WebSocketPool[Httpx2Session],
        uri: str | httpx.URL,
        *,
        client: httpx2.AsyncClient,
        **options: Unpack[WsOptions],
    ) -> None: ...

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
        client: httpx.AsyncClient | httpx2.AsyncClient | None = None,
        **options: Any,
    ) -> None:
        config, connector = configure(uri, connect, close, client, options)
        self._config = config
        self._connector = connector
        #: each connection in _conns, from its first attempt until its host
        #: task ended, holds one unit of capacity: free = _capacity - len(_conns)
        self._capacity = config.max_connections
        self._idle: OrderedDict[Conn[R], None] = OrderedDict()
        self._waiters: WaiterQueue[R] = WaiterQueue()
        self._conns: set[Conn[R]] = set()
        #: the leases of acquire() by id() of their resource, for release():
        #: leases are tracked by connection, and a connector may yield one
        #: object for several of them
        self._lent: dict[int, list[Conn[R]]] = {}
        #: how many connections are in each State: the gauges, kept by _set_state
        self._counts = [0] * len(State)
        self._counters = Counters()
        #: the task group that holds the pool's tasks, and the shielded scope
        #: around it (see _hold_tasks)
        self._tg: TaskGroup | None = None
        self._tasks_scope: anyio.CancelScope | None = None
        self._outer_tg: TaskGroup | None = None
        self._host: ConnectionHost[R] | None = None
        self._entered = False
        self._closing = False
        self._all_closed: anyio.Event | None = None
        #: when aclose() began (on the pool's clock)
        self._closed_at = 0.0
        #: connections backing off between attempts, and those of them that are
        #: opened for no waiter (see _pause)
        self._pausing: set[Conn[R]] = set()
        self._paused: set[Conn[R]] = set()
        #: connections being opened for waiters (not in the background)
        self._wanted = 0
        #: new connections being drained before their first lease (drain_on_release)
        self._priming = 0
        #: whether a released connection goes through the host task before idle
        self._prepare_on_release = config.drain_on_release or config.on_release is not None
        #: whether a connection given back goes straight to _put_back (no
        #: on_event to tell, nothing for the host task to do first)
        self._plain_release = config.on_event is None and not self._prepare_on_release
        #: whether a new connection is drained before its first lease
        self._prime = config.drain_on_release and config.on_connect is not None
        #: a connection with less lifetime left than this is not lent
        self._margin = config.lifetime_margin
        #: the leases held longer than lease_warning are logged (None: off)
        self._lease_watch: LeaseWatch | None = None
        #: runs on_drained and on_event; None when there is no callback
        self._dispatcher = (
            Dispatcher() if config.on_drained is not None or config.on_event is not None else None
        )
        #: gives an event to on_event through the dispatcher (None: no on_event)
        self._emit: Callable[[PoolEvent], None] | None = None
        if config.on_event is not None:
            on_event = config.on_event
            dispatcher = self._dispatcher
            assert dispatcher is not None

            def emit(event: PoolEvent) -> None:
                dispatcher.submit("on_event", on_event, event)

            self._emit = emit
        #: the circuit breaker (None: off)
        self._circuit = (
            Circuit(config.failure_threshold, config.failure_window, config.circuit_reset)
            if config.failure_threshold is not None
            else None
        )
        #: after a close that says the server is restarting (RESTART_CODES): no
        #: connection starts before this moment, and the delay doubles while
        #: such closes keep coming
        self._connect_after = 0.0
        self._restart_backoff = 0.0
        #: the capacity shared with the other pools of a group (None: alone)
        self._shared: GroupCapacity | None = None
        #: the slots of the limit shared across processes (shared_capacity),
        #: the pool's own or its group's; and the context of the pool's own
        self._fleet: FleetSlots | None = None
        self._own_fleet = False
        #: refresh_on_acquire, and the connector's usable and unpark (None when
        #: they do nothing: a generic connector's resource is always usable)
        self._refresh = config.refresh_on_acquire
        self._usable: Callable[[R], bool] | None = (
            None if type(connector).usable is Connector.usable else connector.usable
        )
        self._unpark: Callable[[R], None] | None = (
            None if type(connector).unpark is Connector.unpark else connector.unpark
        )
        self._park: Callable[[R, Callable[[Any], None]], None] | None = (
            None if type(connector).park is Connector.park else connector.park
        )
        #: lending a connection that is lent already (a hand-off) only counts the lease
        self._plain_lend = not self._refresh and self._unpark is None
        #: whether a connection given back may go to the first waiter with no
        #: more checks than its generation and the pool's size: nothing else
        #: makes it unfit (no max_lifetime, a connector with no usable()), and
        #: lending it again is only a new lease number (see _lend); until a
        #: borrower asks for a new connection (then who takes it depends on
        #: the queue, see _put_back)
        self._quick_hand_off = (
            self._plain_lend and self._usable is None and config.max_lifetime is None
        )
        #: whether a new waiter is checked against acquire_timeout=0 and max_waiting
        self._admission = config.acquire_timeout == 0 or config.max_waiting is not None
        #: whether a plain borrower at a busy pool may queue without those
        #: checks and without on_event's timing (see _Lease.__aenter__)
        self._quick_wait = not self._admission and config.on_event is None
        #: whether a plain borrower may take an idle connection without that
        #: timing and without a ping first (see _Lease.__aenter__)
        self._quick_idle = config.on_event is None and not config.check_on_acquire
        #: whether a borrower ever waited for a new connection (acquire_new):
        #: until then, a hand-off need not look at the first waiter's wish
        self._fresh_seen = False
        #: bumped by invalidate(): connections of an older generation are not lent again
        self._generation = 0
        #: what the last prewarm(n) asked for, until it is reached
        self._prewarm = 0
        #: delay before the next background (re)connection, after failures
        self._warm_delay = 0.0
        #: connections in a row that the server closed soon after they opened
        #: (within failure_window s): while there are any, opening one does not
        #: reset the background back-off
        self._short_lived = 0
        self._last_connect_error: Exception | None = None
        #: woken whenever a connection opens or the pool closes (wait_ready)
        self._state_waiter: anyio.Event | None = None
        #: the scope of the pool's own service tasks (the sweep, the waiters' timeouts)
        self._service_scope: anyio.CancelScope | None = None
        #: the running backend's Event class: anyio.Event() looks the backend up each time
        self._event_class: type[anyio.Event] = anyio.Event
        #: the lending path's clock, cancellation check and wake-ups, bound to
        #: the running backend when the pool is entered (see _backend.py)
        self._now: Callable[[], float] = anyio.current_time
        self._cancel_check: Callable[[], Awaitable[None] | None] = (
            anyio.lowlevel.checkpoint_if_cancelled
        )
        self._signal: Callable[[], Signal] = _not_open

    # -- public API -------------------------------------------------------------

    def connection(self) -> AbstractAsyncContextManager[R]:
        """Lend a connection for the duration of an ``async with`` block.

        An idle healthy connection if there is one, else a new one if capacity
        allows, else wait (first come, first served) up to ``acquire_timeout``.
        On normal exit the connection goes back to the pool; if the block raises
        or is cancelled the connection is closed instead (its state is unknown)
        and the exception propagates unchanged.

        A borrower cancelled while it waits leaves the queue without a trace; a
        connection being opened for it is kept for the next borrower.

        Raises:
            PoolTimeout: no connection within ``acquire_timeout``.
            PoolOverloaded: ``max_waiting`` borrowers were already waiting.
            PoolUnavailable: the circuit breaker is open (``failure_threshold``)
                and this borrower would need a new connection.
            PoolClosed: the pool is closed, or closed while waiting.
            Exception: the connection error (httpx's, httpx-ws's or the
                connector's own type) of the connection opened for this borrower.
        """
        return _Lease(self, False)

    def new_connection(self) -> AbstractAsyncContextManager[R]:
        """Like :meth:`connection`, but always with a newly opened connection.

        When the pool is full and a connection is idle, the idle one that waited
        longest is closed to make room; otherwise this waits like ``connection()``.
        While it waits for its new connection, borrowers queued after it that
        take any connection may be lent an existing one before it.

        Raises:
            PoolTimeout, PoolOverloaded, PoolUnavailable, PoolClosed: as
                :meth:`connection`; and the error of the connection opened for it.
        """
        return _Lease(self, True)

    async def acquire(self) -> R:
        """Take a connection without a block; give it back with :meth:`release`.

        Prefer :meth:`connection`: a connection taken here and never released
        stays lent until the pool closes (then it is closed, with a warning).
        Cancelled while it waits, it leaves the queue without a trace (a
        connection handed over at that moment goes to the next borrower).

        Raises:
            PoolTimeout: no connection within ``acquire_timeout``.
            PoolOverloaded: ``max_waiting`` borrowers were already waiting.
            PoolUnavailable: the circuit breaker is open and a new connection
                would be needed.
            PoolClosed: the pool is closed, or closed while waiting.
            Exception: the connection error of the connection opened for it.
        """
        if self._emit is not None:
            return self._list(await self._acquire_observed(False))
        return self._list(await self._acquire(False))

    async def acquire_new(self) -> R:
        """Like :meth:`acquire`, with a newly opened connection (see :meth:`new_connection`).

        Raises:
            PoolTimeout, PoolOverloaded, PoolUnavailable, PoolClosed: as
                :meth:`acquire`; and the error of the connection opened for it.
        """
        if self._emit is not None:
            return self._list(await self._acquire_observed(True))
        return self._list(await self._acquire(True))

    def _list(self, conn: Conn[R]) -> R:
        """Keep a lease of :meth:`acquire` where :meth:`release` will look for it."""
        resource = conn.resource
        lent = self._lent.get(id(resource))
        if lent is None:
            self._lent[id(resource)] = [conn]
        else:
            lent.append(conn)
        conn.listed = True
        return resource

    async def release(self, connection: R, *, discard: bool = False) -> None:
        """Give back a connection taken with :meth:`acquire`; ``discard=True`` closes it.

        After the pool closed this is a no-op (the connection was closed with it).
        It never waits for I/O: the connection is handed to the next borrower,
        made idle, or closed by the pool's own task, so cancelling the caller
        cannot leave it half given back.

        Raises:
            PoolError: ``connection`` is not currently lent by this pool with
                :meth:`acquire` (never lent by it, released already, or held by
                a :meth:`connection` block, which gives it back itself).
        """
        if not isinstance(discard, bool):
            raise TypeError(f"discard must be a bool, got {discard!r}")
        conn = self._lent_conn(connection)
        if conn is None:
            if self._closing:
                return
            if any(c.state is _LENT and c.resource is connection for c in self._conns):
                # Lent to a block now: maybe handed to it after this caller's
                # own release (a second release), maybe the block's own
                # connection. Either way it is not this caller's to give back.
                raise PoolError(
                    "release() was given a connection that a pool.connection() block holds, "
                    "which gives it back itself when it ends (if acquire() lent it to you, "
                    "it was released already)"
                )
            raise PoolError(
                f"release() was given {type(connection).__name__} object that this pool did "
                "not lend, or that was released already"
            )
        self._give_back(conn, Reason.DISCARDED if discard else None)

    def _lent_conn(self, resource: object) -> Conn[R] | None:
        """The lease of :meth:`acquire` lent with ``resource`` (the most recent), if any."""
        for conn in reversed(self._lent.get(id(resource), ())):
            if conn.resource is resource:
                return conn
        return None

    def prewarm(self, n: int = 1) -> None:
        """Open connections in the background, without waiting, until ``n`` are idle.

        Counts the connections already being opened; stops at capacity; does
        nothing when ``n`` connections are already idle. Failures are logged.

        Raises:
            PoolClosed: the pool is not open.
        """
        n = check_int("n", n, minimum=0)
        self._check_open()
        self._prewarm = n  # (remembered: a shared capacity may give the slots later)
        self._grow(prewarm=n)

    async def wait_ready(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Wait until ``min_connections`` connections are open.

        Cancelling the caller stops only the wait: the connections keep opening.

        Raises:
            PoolTimeout: not ready within ``timeout`` seconds (the last
                connection error, if any, is its ``__cause__``).
            PoolClosed: the pool is or got closed.
        """
        limit = check_seconds("timeout", timeout, allow_none=True, allow_zero=True)
        if self._closing or not self._entered:
            await self._refuse()
        with anyio.move_on_after(math.inf if limit is None else limit):
            while self._open_count() < min(self._config.min_connections, self.max_connections):
                if self._state_waiter is None:
                    self._state_waiter = anyio.Event()
                await self._state_waiter.wait()
                self._check_open()
            return
        raise PoolTimeout(
            f"{self._open_count()} of min_connections={self._config.min_connections} "
            f"connections to {self._connector.target} were open after {limit} s"
        ) from self._last_connect_error

    def invalidate(self) -> None:
        """Close every idle connection now, and every lent one when it comes back.

        Later borrowers get new connections (and ``min_connections`` are
        reopened). Use it when what the connections were opened with (a token,
        a server address behind DNS) is no longer right. Synchronous; it
        raises nothing.
        """
        self._generation += 1
        for conn in list(self._idle):
            self._retire(conn, Reason.INVALIDATED)
        self._grow()

    @property
    def max_connections(self) -> int:
        """The capacity; assign to resize (shrinking closes idle connections first)."""
        return self._capacity

    @max_connections.setter
    def max_connections(self, value: int) -> None:
        value = check_int("max_connections", value, minimum=1)
        self._connector.check_capacity(value)
        self._capacity = value
        excess = len(self._conns) - self._counts[_CLOSING] - value
        while excess > 0 and self._idle:
            self._retire(next(iter(self._idle)), Reason.RESIZED)
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
        return self._connector.uri

    @property
    def stats(self) -> PoolStats:
        """A snapshot of the pool's gauges and counters."""
        counts = self._counts
        counters = {name: getattr(self._counters, name) for name in COUNTER_NAMES}
        # Each live connection counts its own leases; the counters hold those
        # of the connections that are gone.
        for conn in self._conns:
            counters["acquired"] += conn.uses
            counters["reused"] += max(conn.uses - 1, 0)
        fleet = self._fleet
        return PoolStats(
            max_connections=self.max_connections,
            connecting=counts[_CONNECTING],
            idle=counts[_IDLE],
            in_use=counts[_LENT],
            draining=counts[_DRAINING],
            closing=counts[_CLOSING],
            waiting=len(self._waiters),
            circuit="closed" if self._circuit is None else self._circuit.state.value,
            **counters,
            shared_limit=None if fleet is None else fleet.limit,
            shared_in_use=None if fleet is None else fleet.in_use,
        )

    def __repr__(self) -> str:
        state = "closed" if self._closing else "open" if self._entered else "not started"
        return f"<WebSocketPool {self._connector.target!r} {state} [{describe_gauges(self.stats)}]>"

    async def __aenter__(self) -> WebSocketPool[R]:
        if self._entered:
            raise RuntimeError("a pool can be opened only once; create a new one")
        if self._closing:
            raise PoolClosed("the pool was closed (aclose()) before it was opened")
        self._entered = True
        self._all_closed = anyio.Event()
        self._service_scope = anyio.CancelScope()
        self._tasks_scope = anyio.CancelScope(shield=True)
        self._event_class = type(anyio.Event())
        backend = bind()
        self._now = backend.now
        self._cancel_check = backend.cancel_check
        self._signal = backend.signal
        if self._config.lease_warning is not None:
            self._lease_watch = LeaseWatch(
                self._config.lease_warning, self._now, self._connector.target
            )
        await self._connector.start()
        outer = anyio.create_task_group()
        try:
            capacity = self._config.shared_capacity
            if capacity is not None and self._fleet is None:
                # (Opening it does no I/O: a pool opens while Redis is away.)
                self._fleet = await FleetSlots.open(capacity, self._config.cleanup_interval)
                self._own_fleet = True
            await outer.__aenter__()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._close_fleet()
                await self._connector.aclose()
            raise
        self._outer_tg = outer
        try:
            await outer.start(self._hold_tasks, name="anyio_wspool tasks")
        except BaseException as exc:
            self._tasks_scope.cancel()
            await self._leave(type(exc), exc, exc.__traceback__)
            raise
        self._host = ConnectionHost(self._config, self._connector, self, self._event_class)
        tg = self._tg
        assert tg is not None
        tg.start_soon(self._run_services, name="anyio_wspool services")
        if self._dispatcher is not None:
            tg.start_soon(self._dispatcher.run, name="anyio_wspool callbacks")
        if self._fleet is not None:
            self._fleet.join(self)
            if self._own_fleet:
                tg.start_soon(self._fleet.run, name="anyio_wspool shared capacity")
        self._grow()  # min_connections
        return self

    async def _hold_tasks(self, *, task_status: TaskStatus[None]) -> None:
        """Hold the task group of the pool's tasks until the pool is left.

        The group sits in a shielded scope: a cancellation of the scope around
        the pool (the code in the pool's block runs in it) never reaches the
        pool's tasks. They are stopped by the pool alone, by :meth:`aclose` and
        by leaving the block, so that closing stays orderly and bounded. (On
        asyncio a cancellation reaches other tasks at once, before the pool's
        exit could shield them, and a task that ended cancelled would cancel
        the pool's exit in turn.)
        """
        assert self._tasks_scope is not None
        with self._tasks_scope:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                task_status.started()
                await anyio.sleep_forever()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Closing is shielded, so that the connections are closed even when the
        # scope around the pool is cancelled, and so that no cancellation of
        # the pool's own waits replaces the exception leaving the block. It is
        # bounded all the same: each close is bounded by close_timeout, and
        # whatever still runs after that (a connector whose exit hangs) is
        # cancelled.
        try:
            with (
                anyio.CancelScope(shield=True),
                anyio.move_on_after(2 * self._config.close_timeout + 1.0),
            ):
                await self.aclose()
        finally:
            assert self._tasks_scope is not None
            self._tasks_scope.cancel()
            await self._leave(exc_type, exc, tb)

    async def _leave(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """End the pool's tasks (already cancelled) and close the connector."""
        outer = self._outer_tg
        assert outer is not None
        # Shielded: the one task left ends at once, and a cancellation of the
        # scope around the pool must not replace the exception leaving it.
        outer.cancel_scope.shield = True
        try:
            # The user's exception is deliberately not passed in: the task
            # group would wrap it in an ExceptionGroup. The pool's tasks never
            # raise (their errors are contained).
            await outer.__aexit__(None, None, None)
        finally:
            with anyio.CancelScope(shield=True):
                await self._connector.aclose()
            if self._fleet is not None:
                self._fleet.leave(self)
            await self._close_fleet()
        if exc_type is None:
            # A cancellation of the scope around the pool is delivered here.
            await anyio.lowlevel.checkpoint_if_cancelled()

    async def _close_fleet(self) -> None:
        """Give back the pool's own shared slots (bounded) and close its Redis client."""
        if self._own_fleet and self._fleet is not None:
            self._own_fleet = False
            await self._fleet.close(self._config.close_timeout)

    async def aclose(self) -> None:
        """Close the pool and every connection; idempotent.

        Waiting borrowers get :class:`PoolClosed` at once, a borrower pinging
        a connection (``check_on_acquire``) included; connections being opened
        are abandoned (handshakes, back-offs and ``on_connect`` cancelled), and
        those being drained or prepared (``on_release``) are closed at once;
        idle and lent connections are closed (a borrower's next I/O fails, its
        release is a no-op). Each close is bounded by ``close_timeout``, and so
        is the delivery of what is left for ``on_drained``. If this call is
        cancelled the connections still close, and leaving the pool's block
        waits for them. It raises nothing of its own: errors of the connections'
        closes are logged.
        """
        if not self._closing:
            self._closing = True
            self._closed_at = anyio.current_time() if self._entered else 0.0
            if self._service_scope is not None:
                self._service_scope.cancel()
            self._notify()
            self._waiters.fail_all(
                lambda: PoolClosed("the pool was closed while waiting for a connection")
            )
            for conn in list(self._conns):
                if conn.state is _LENT and conn.scope is None:
                    logger.warning(
                        "closing a connection to %s that is still lent to a borrower",
                        self._connector.target,
                    )
                self._retire(conn, Reason.POOL_CLOSED)
            if not self._conns and self._all_closed is not None:
                self._all_closed.set()
        if self._all_closed is not None:
            await self._all_closed.wait()
            if self._dispatcher is not None:
                # What the closed connections drained goes to on_drained too,
                # within what is left of close_timeout.
                left = self._closed_at + self._config.close_timeout - anyio.current_time()
                await self._dispatcher.stop(max(left, 0.0))
            fleet = self._fleet
            if fleet is not None and self._own_fleet and not fleet.closed:
                # Its shared slots go back to Redis now, within close_timeout.
                left = self._closed_at + self._config.close_timeout - anyio.current_time()
                with anyio.move_on_after(max(left, 0.1)):
                    await fleet.aclose()
        else:
            await anyio.lowlevel.checkpoint()

    # -- lending --------------------------------------------------------------------

    async def _refuse(self) -> NoReturn:
        """Refuse a borrower at a pool that is not open: ``PoolClosed``.

        Unless the borrower was cancelled: like anyio's own primitives (a closed
        stream's ``receive()``), the pool checks for cancellation first, so that
        a borrower cancelled as the pool closes, a worker of a task group being
        shut down, ends cancelled, not with an error.
        """
        if (check := self._cancel_check()) is not None:
            await check
        self._check_open()
        raise AssertionError("unreachable: the pool is not open")

    def _check_open(self) -> None:
        if self._closing or not self._entered:
            raise PoolClosed(
                "the pool is closed"
                if self._closing
                else "the pool is not open yet: use `async with open_pool(...) as pool`"
            )

    async def _acquire(self, fresh: bool) -> Conn[R]:
        if self._closing or not self._entered:
            await self._refuse()
        # Idle connections while borrowers wait: every one of those asked for
        # a new connection (a plain one would have been handed an idle one),
        # so a plain borrower passes nobody by taking one.
        if fresh or (self._waiters and not self._idle):
            return await self._wait(fresh)  # (which checks for cancellation)
        # Like anyio's own primitives: a cancelled borrower takes nothing, even
        # when it would not have to wait. (No yield when not cancelled.)
        if (check := self._cancel_check()) is not None:
            await check
        conn = self._take_idle()
        if conn is None:
            return await self._wait(fresh)
        if self._config.check_on_acquire:
            return await self._acquire_checked(conn)
        self._count_lease(conn)
        return conn

    async def _acquire_observed(self, fresh: bool) -> Conn[R]:
        """:meth:`_acquire` for a pool with ``on_event``: time the wait, emit the lease."""
        started = self._now()
        conn = await self._acquire(fresh)
        now = self._now()
        conn.lent_at = now
        assert self._emit is not None
        self._emit(AcquiredEvent(self._connector.target, now - started, conn.uses > 1))
        return conn

    async def _acquire_checked(self, conn: Conn[R]) -> Conn[R]:
        """``check_on_acquire``: lend ``conn`` if it answers a ping, else the next one.

        The borrower keeps its place: after a failed ping it takes the next idle
        connection before anyone who queued meanwhile, or waits at the head of
        the queue, and its pings and its wait share one ``acquire_timeout``.
        """
        timeout = self._config.acquire_timeout
        deadline = self._now() + timeout if timeout else math.inf
        # (Those waiting now were there before it: if it must wait, behind them only.)
        ahead = frozenset(self._waiters)
        while not await self._answers_ping(conn, deadline):
            if self._closing:
                raise PoolClosed("the pool was closed while waiting for a connection")
            if self._now() >= deadline:
                self._counters.acquire_timeouts += 1
                raise self._timeout_error(self._config.acquire_timeout or 0.0)
            next_conn = self._take_idle()
            if next_conn is None:
                return await self._wait(False, deadline, ahead=ahead)
            conn = next_conn
        self._count_lease(conn)
        return conn

    def _take_idle(self) -> Conn[R] | None:
        """Lend the most recently used healthy idle connection, retiring unfit ones."""
        idle = self._idle
        while idle:
            conn, _ = idle.popitem()  # the most recently used: hot, likely alive
            # (The common case of _unfit, without the call, as in _put_back.)
            if (
                self._usable is not None
                or conn.expires_at != _INF
                or conn.generation != self._generation
            ):
                reason = self._unfit(conn)
            else:
                reason = None
            if reason is None:
                self._lend(conn)
                return conn
            self._retire(conn, reason)
        return None

    def _unfit(self, conn: Conn[R]) -> Reason | None:
        """Why ``conn`` must not be lent, or None: the one rule, for every path to a lend.

        A connection is unfit when it no longer carries messages (the server
        closed it, keep-alive failed), when its lifetime is over, or when it was
        opened before :meth:`invalidate`.
        """
        if self._usable is not None and not self._usable(conn.resource):
            return Reason.SERVER_CLOSED
        if conn.expires_at != math.inf and self._now() >= conn.expires_at - self._margin:
            return Reason.EXPIRED
        if conn.generation != self._generation:
            return Reason.SHARED_LIMIT if conn.generation == _OVER_LIMIT else Reason.INVALIDATED
        return None

    async def _answers_ping(self, conn: Conn[R], deadline: float) -> bool:
        """Ping a lent connection; retire it unless a pong comes in time.

        In time: within ``connect_timeout``, and before ``deadline`` (what is
        left of the borrower's ``acquire_timeout``). The ping runs in the
        connection's scope, so that closing the pool stops it at once.
        """
        config = self._config
        limit = min(config.connect_timeout, deadline - self._now())
        failure: BaseException | None = None
        try:
            with anyio.CancelScope() as conn.scope, anyio.move_on_after(limit) as timer:
                await self._connector.ping(conn.resource)
        except Exception as exc:
            failure = exc
        except BaseException:
            conn.scope = None
            self._give_back(conn, Reason.PING_FAILED)
            raise
        conn.scope = None
        if failure is None and not timer.cancelled_caught and conn.state is _LENT:
            return True
        if conn.state is _LENT:
            logger.info(
                "an idle connection to %s did not answer a ping%s; replacing it",
                self._connector.target,
                "" if failure is None else f" ({describe_error(failure)})",
            )
        self._give_back(conn, Reason.PING_FAILED)
        return False

    async def _wait(
        self,
        fresh: bool,
        deadline: float | None = None,
        *,
        ahead: Container[Waiter[R]] | None = None,
    ) -> Conn[R]:
        """Queue for a connection until one is handed over (behind ``ahead`` only, if given).

        (``pool.connection()`` at a busy pool does the same in its own
        ``__aenter__``, with itself as the waiter.)

        Raises:
            PoolClosed: the pool is closing.
            PoolTimeout: ``acquire_timeout`` ran out (``deadline`` when given).
        """
        # Like anyio's own primitives, a cancelled borrower takes nothing, and
        # it leaves no trace: no connection is opened for it, no idle one is
        # closed to make room for it, no admission rule refuses it.
        if (check := self._cancel_check()) is not None:
            await check
        waiter: Waiter[R] = Waiter(fresh)
        self._enqueue(waiter, deadline, ahead=ahead)
        try:
            # No cancel scope per waiter: the queue's expiry task fails those
            # whose acquire_timeout ran out. With acquire_timeout=0 the borrower
            # does not wait for a busy pool, but it does wait for the connection
            # opened for it.
            await waiter.event
        except BaseException:
            self._abandon(waiter)
            raise
        return self._served(waiter)

    def _enqueue(
        self,
        waiter: Waiter[R],
        deadline: float | None = None,
        *,
        ahead: Container[Waiter[R]] | None = None,
    ) -> None:
        """Queue ``waiter`` (behind ``ahead`` only, if given), or refuse it at once.

        ``ahead``: the waiters that were queued when a borrower that was there
        before it began (see :meth:`WaiterQueue.add`); it was admitted then.

        Raises:
            PoolClosed: the pool is closing.
            PoolTimeout: ``acquire_timeout=0`` and no connection would serve it.
            PoolOverloaded: ``max_waiting`` borrowers are already waiting.
            PoolUnavailable: it wants a new connection and the circuit is open.
        """
        if self._closing:
            self._check_open()
        fresh = waiter.fresh
        config = self._config
        timeout = config.acquire_timeout
        waiters = self._waiters
        if self._admission and ahead is None:
            # How many waiters (this one included) no connection being opened,
            # nor room to open one, nor an idle one to close, would serve.
            # (A connection backing off covers a waiter too: at a full pool
            # the waiter adopts it, see _grow.)
            for_capacity = (
                len(waiters) + 1 - self._counts[_CONNECTING] - self._priming - self._room()
            )
            if (
                for_capacity > 0
                and not (fresh and self._idle)
                # (Not those cancelled, still queued until their task runs.)
                and (for_capacity := for_capacity - waiters.leaving()) > 0
            ):
                if timeout == 0:
                    self._counters.acquire_timeouts += 1
                    raise self._timeout_error(0.0)
                if config.max_waiting is not None and for_capacity > config.max_waiting:
                    self._counters.overloaded += 1
                    raise PoolOverloaded(
                        f"{config.max_waiting} borrowers are already waiting for a connection "
                        f"to {self._connector.target} (max_waiting={config.max_waiting}; "
                        f"{describe_gauges(self.stats)})"
                    )
        if deadline is None:
            deadline = self._now() + timeout if timeout else math.inf
        if fresh:
            circuit = self._circuit
            if circuit is not None and circuit.blocks(self._now()):
                # Only a new connection will do, and none may be opened now
                # (nor an idle one closed for it, for nothing).
                raise self._unavailable_error()
            self._fresh_seen = True
            self._quick_hand_off = False
        waiter.deadline = deadline
        waiter.event = self._signal()
        if waiters and ahead is None:
            waiters[waiter] = None  # (WaiterQueue.add's common case, without the call)
        else:
            waiters.add(waiter, ahead=ahead)
        if len(self._conns) < self._capacity or self._paused or self._idle:
            self._grow()  # (at a full pool with nothing to adopt or close: a no-op, skipped)

    def _abandon(self, waiter: Waiter[R]) -> None:
        """``waiter`` was cancelled: leave no trace, pass on a connection handed over meanwhile.

        (A hand-off skips a waiter whose wake-up was cancelled already; one is
        handed a connection and cancelled before it runs only on asyncio, by a
        cancellation of the task itself.)
        """
        waiter.error = None  # (failed and cancelled at once: the cancellation wins)
        if self._waiters.discard(waiter):
            self._left_unserved()
        elif waiter.conn is not None:
            conn = waiter.conn
            waiter.conn = None
            self._uncount(conn)
            self._give_back(conn, None)

    def _not_taken(self, waiter: Waiter[R], conn: Conn[R]) -> None:
        """``conn`` was handed to ``waiter``, whose borrower was cancelled: take it back.

        The waiter is out of the queue already; ``conn`` stays lent, for the
        caller to pass on.
        """
        waiter.conn = None
        self._uncount(conn)
        self._left_unserved()

    def _uncount(self, conn: Conn[R]) -> None:
        """A lease counted on ``conn`` by a hand-off was not taken."""
        conn.uses -= 1
        if conn.state is _CLOSED:  # its count was folded into the pool's totals
            self._counters.acquired -= 1
            if conn.uses:
                self._counters.reused -= 1

    def _fail_first(self, error: BaseException) -> bool:
        """Wake the first waiter whose borrower is still there with ``error``; False if none."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popitem(False)[0]  # (last=False, given by position: cheaper)
            waiter.error = error
            if wake(waiter.event):
                return True
            waiter.error = None
            self._left_unserved()
        return False

    def _served(self, waiter: Waiter[R]) -> Conn[R]:
        """The connection handed to a woken ``waiter``, or its error raised.

        The hand-off counted the lease (``Conn.uses``) when it filled in
        ``conn``, not the borrower when it runs: the connection may be closed,
        and its count folded into the pool's totals, before then.
        """
        conn = waiter.conn
        if conn is None or self._closing:
            raise self._not_served(waiter)
        if self._lease_watch is not None:
            self._lease_watch.add(conn)
        return conn

    def _not_served(self, waiter: Waiter[R]) -> BaseException:
        """The error of a woken ``waiter`` that gets no connection (taken from it).

        Its own error; or, if it was handed a connection and the pool closed
        before its task ran, ``PoolClosed`` like every borrower that was still
        waiting then (the connection is being closed with the pool).
        """
        conn = waiter.conn
        if conn is None:
            error = waiter.error
            assert error is not None
            waiter.error = None
            return error
        waiter.conn = None
        self._uncount(conn)
        return PoolClosed("the pool was closed while waiting for a connection")

    def _expired(self, waiter: Waiter[R]) -> BaseException:
        """The error of a waiter whose ``acquire_timeout`` ran out."""
        if not waiter.event.cancelled():  # (one cancelled meanwhile did not time out)
            self._counters.acquire_timeouts += 1
        self._left_unserved()
        timeout = self._config.acquire_timeout
        assert timeout is not None
        return self._timeout_error(timeout)

    def _timeout_error(self, waited: float) -> PoolTimeout:
        return PoolTimeout(
            f"no connection to {self._connector.target} within {waited:.2f} s "
            f"(acquire_timeout={self._config.acquire_timeout}; {describe_gauges(self.stats)})"
        )

    def _lend(self, conn: Conn[R]) -> None:
        if conn.state is not _LENT:  # (a hand-off from one borrower to the next keeps it)
            self._set_state(conn, _LENT)
        if self._refresh and conn.lifetime != math.inf:
            conn.expires_at = self._now() + conn.lifetime
        conn.lease += 1
        if self._unpark is not None:
            self._unpark(conn.resource)

    def _count_lease(self, conn: Conn[R]) -> None:
        conn.uses += 1  # (the pool's totals are summed by stats)
        if self._lease_watch is not None:
            self._lease_watch.add(conn)

    def _give_back(self, conn: Conn[R], reason: Reason | None) -> None:
        """A lent connection comes back, to be closed for ``reason`` if there is one.

        Synchronous: it never waits for I/O.
        """
        conn.lease += 1  # the lease that ends is no longer current
        if conn.lent_at >= 0.0:
            # Observed by on_event (a lease of _acquire_observed).
            assert self._emit is not None
            self._emit(
                ReleasedEvent(
                    self._connector.target, self._now() - conn.lent_at, reason is not None
                )
            )
            conn.lent_at = -1.0
        if conn.listed:
            conn.listed = False
            key = id(conn.resource)
            lent = self._lent[key]
            if len(lent) == 1:
                del self._lent[key]
            else:
                lent.remove(conn)
        if conn.state is not _LENT:
            return  # closed under its borrower (the pool closed, the host failed)
        if reason is None and self._closing:
            reason = Reason.POOL_CLOSED
        if reason is not None:
            self._retire(conn, reason)
        elif not self._prepare_on_release:
            self._put_back(conn)
        elif (reason := self._unfit(conn)) is not None:
            self._retire(conn, reason)
        else:
            # on_release and the drain are I/O: the host task does them, and the
            # borrower who released goes on at once.
            self._set_state(conn, _DRAINING)
            conn.wake.set()

    def _put_back(self, conn: Conn[R]) -> None:
        """Hand a connection to the first waiter, or make it idle, if it may be lent.

        Every path to a lend goes through here or :meth:`_take_idle` (a new
        connection, a released one, a drained one), and both ask :meth:`_unfit`.
        """
        # (The common case of _unfit, without the call: this is the hand-off path.)
        if (
            self._usable is not None
            or conn.expires_at != _INF
            or conn.generation != self._generation
        ):
            reason = self._unfit(conn)
        else:
            reason = None
        if reason is None and len(self._conns) - self._counts[_CLOSING] > self._capacity:
            # Over a capacity lowered since it was lent (those already closing
            # hold their token until closed, but they are not kept).
            reason = Reason.RESIZED
        if reason is not None:
            self._retire(conn, reason)
            if not conn.uses and is_fatal_close(conn.close_code):
                # A new connection refused by the server's own code (unauthorised,
                # quota exceeded) before its first lease: the borrower first in
                # line gets that error, as for a failed attempt.
                self._fail_first(self._connector.closed_error(conn.resource))
            return
        waiters = self._waiters
        while waiters:
            if conn.uses and self._fresh_seen and waiters.first().fresh:
                # The first in line asked for a new connection: this one goes
                # to the first borrower who takes any connection, unless a
                # borrower before it asked for a new one that no connection
                # being opened (or closing to make room) will serve; then it
                # makes room for that one (its capacity is reused once it is
                # closed). Or it is idle.
                counts = self._counts
                plain = waiters.first_needing_room(
                    counts[_CONNECTING] + self._priming + counts[_CLOSING]
                )
                if plain is None:
                    self._retire(conn, Reason.MAKE_ROOM)
                    return
                if plain is False:
                    break
                self._lend(conn)
                del waiters[plain]
                waiter = plain
            else:
                if conn.state is _LENT and self._plain_lend:
                    conn.lease += 1  # (all that _lend does here, without the call)
                else:
                    self._lend(conn)
                # The first waiter (inline: the hot path of a busy pool).
                waiter = waiters.popitem(False)[0]  # (last=False, given by position: cheaper)
            # The lease is counted by the hand-off, not by its borrower once it
            # runs: the connection may be closed, and its count folded into the
            # pool's totals, before then.
            conn.uses += 1
            waiter.conn = conn
            try:
                waiter.event.set_result(None)
                return
            except InvalidStateError:
                # Its borrower was cancelled meanwhile and is leaving: the next one.
                self._not_taken(waiter, conn)
        self._set_state(conn, _IDLE)
        if self._config.idle_timeout is not None or self._shared is not None:
            conn.idle_since = self._now()
        self._idle[conn] = None
        if self._park is not None:
            self._park(conn.resource, self._drained)
        if self._shared is not None:
            self._shared.idle_available()

    def _drained(self, event: Any) -> None:
        """Where server messages go that no borrower will read (idle or released).

        Counted, and given to ``on_drained`` by a task of the pool (so that the
        user's callback never runs in, nor blocks, a connection's reader), or
        logged at DEBUG by size only.
        """
        self._counters.drained_messages += 1
        if self._dispatcher is not None:
            assert self._config.on_drained is not None
            self._dispatcher.submit("on_drained", self._config.on_drained, event)
        elif logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "drained %s from a connection to %s",
                self._connector.describe(event),
                self._connector.target,
            )

    # -- what the host tasks report (see _host.Keeper) ----------------------------------

    def _attempt_failed(self, conn: Conn[R], error: Exception, retrying: bool) -> None:
        self._counters.connect_failures += 1
        code = getattr(error, "code", None)  # (a WebSocket close during on_connect)
        if isinstance(code, int) and not isinstance(code, bool) and code in RESTART_CODES:
            self._restarting(int(code))
        if self._emit is not None:
            self._emit(
                ConnectFailedEvent(
                    self._connector.target, error_type(error), conn.attempt, retrying
                )
            )

    def _connected(self, conn: Conn[R]) -> None:
        config = self._config
        conn.opened = True
        now = conn.opened_at = anyio.current_time()
        self._counters.opened += 1
        if not self._short_lived:
            self._warm_delay = 0.0
        self._restart_backoff = 0.0
        if self._emit is not None and conn.state is _CONNECTING:
            self._emit(
                ConnectedEvent(self._connector.target, now - conn.attempt_started, conn.attempt)
            )
        if conn.probe:
            conn.probe = False
            self._close_circuit()
        if config.max_lifetime is not None:
            assert self._host is not None
            conn.lifetime = self._host.lifetime(config.max_lifetime)
            conn.expires_at = anyio.current_time() + conn.lifetime
        self._connector.attach(conn.resource, lambda: self._on_dead(conn))
        if conn.state is not _CONNECTING:  # retired meanwhile (the pool is closing)
            return
        # What arrived before the first lease (a greeting, the answer to a login
        # that on_connect did not read) is drained, never lent.
        self._connector.park(conn.resource, self._drained)
        if self._closing:
            self._retire(conn, Reason.POOL_CLOSED)
        elif self._prime:
            # on_connect made the server talk: what is still in flight is
            # drained too, by the host task, as on a released connection,
            # before the first lease. The connection still counts as being
            # opened, for the waiter it was opened for.
            self._priming += 1
            conn.priming = True
            self._set_state(conn, _DRAINING)
            conn.wake.set()
        else:
            self._put_back(conn)
        self._notify()

    def _connect_failed(self, conn: Conn[R], error: Exception) -> None:
        if conn.state is _CONNECTING:
            conn.reason = Reason.CONNECT_FAILED
            self._set_state(conn, _CLOSING)
        if self._closing:
            return
        self._last_connect_error = error
        # The error goes to the first waiter, unless the connections still being
        # opened are enough for every waiter: then this one was opened for a
        # borrower who left, and the others wait for theirs.
        counts = self._counts
        if self._waiting() <= counts[_CONNECTING] + self._priming or not self._fail_first(error):
            # Nobody asked for this one (warm-up, replacement), or its borrower
            # left meanwhile: back off before the next, and say why it failed.
            self._back_off_background()
            logger.warning(
                "could not open a connection to %s: %s",
                self._connector.target,
                describe_error(error),
            )
        self._failure(error, conn.probe)

    def _may_retry(self, conn: Conn[R]) -> bool:
        """No retry while the circuit breaker is open (but for the probe's)."""
        circuit = self._circuit
        return circuit is None or circuit.state is CircuitState.CLOSED or conn.probe

    def _back_off_background(self) -> None:
        """The next connection opened for no borrower waits longer (doubling, capped)."""
        config = self._config
        self._warm_delay = min(
            config.retry_backoff_max, max(config.retry_backoff, 2 * self._warm_delay)
        )

    def _prepared(self, conn: Conn[R]) -> None:
        self._primed(conn)
        self._put_back(conn)

    def _primed(self, conn: Conn[R]) -> None:
        """``conn`` no longer counts as being opened, if it did (see :meth:`_connected`)."""
        if conn.priming:
            conn.priming = False
            self._priming -= 1

    async def _pause(self, conn: Conn[R], delay: float) -> None:
        """A connection backs off ``delay`` seconds before its next attempt.

        A background connection (opened for no borrower) backing off does not
        count as one that will serve a waiter: a borrower that arrives meanwhile
        gets a connection of its own if capacity allows, or else adopts this
        one, which then tries again at once (see :meth:`_grow`).
        """
        if not conn.background and self._wanted > self._waiting():
            self._unwant(conn)  # the borrower it was opened for is gone
        self._pausing.add(conn)
        if conn.background:
            self._paused.add(conn)
            self._grow()
        try:
            with anyio.move_on_after(delay):
                await conn.wake.wait()
        finally:
            self._pausing.discard(conn)
            self._paused.discard(conn)
        conn.wake = self._event_class()
        # Adopted by a borrower (woken early): still not before the server,
        # closing with a restart code, said it would be back.
        left = self._connect_after - self._now()
        if left > 0 and conn.state is _CONNECTING:
            await anyio.sleep(left)

    def _unwant(self, conn: Conn[R]) -> None:
        """``conn``, being opened for a waiter, is now opened for no one in particular."""
        conn.background = True
        self._wanted -= 1
        if conn in self._pausing:
            self._paused.add(conn)

    def _left_unserved(self) -> None:
        """A waiter left without a connection: one being opened for it serves nobody now."""
        if self._wanted > self._waiting():
            for conn in self._pausing:
                if not conn.background:
                    self._unwant(conn)
                    return

    def _finished(self, conn: Conn[R]) -> None:
        """The host task ends: the connection is closed, its capacity is free."""
        if conn.state is not _CLOSING:
            self._set_state(conn, _CLOSING)
        if conn.opened:
            self._counters.closed += 1
            logger.debug("closed a connection to %s (%s)", self._connector.target, conn.reason)
        elif conn.probe and self._circuit is not None:
            self._circuit.probe_failed_quietly()  # abandoned: the next borrower probes
        self._set_state(conn, _CLOSED)
        self._conns.discard(conn)
        self._counters.acquired += conn.uses
        self._counters.reused += max(conn.uses - 1, 0)
        if self._fleet is not None:
            self._fleet.give_back(conn)
        if self._shared is not None:
            self._shared.give_back(conn)
        if self._closing:
            if not self._conns and self._all_closed is not None:
                self._all_closed.set()
        else:
            self._grow()

    def _on_dead(self, conn: Conn[R]) -> None:
        """The resource died on its own (server closed it, keep-alive failed)."""
        if not conn.died_at:
            conn.died_at = self._now()  # (its age at death says whether it was a failure)
        if conn.state is _IDLE:
            self._retire(conn, Reason.SERVER_CLOSED)
        elif conn.state is _DRAINING and conn.scope is not None:
            # Its on_release or drain (whose ping would wait for a pong in
            # vain until drain_timeout) stops: the host reports it closed.
            conn.scope.cancel()

    # -- capacity and connections ---------------------------------------------------------

    def _room(self) -> int:
        """How many more connections could be started now (in a group: made room for)."""
        room = self._capacity - len(self._conns)
        shared = self._shared
        if shared is not None:
            room = min(room, shared.reclaimable(self))
        # (A shared capacity is not counted: only Redis knows, when asked, and
        # a borrower who may not wait learns it then: see _at_shared_limit.)
        return room

    def _demand(self, prewarm: int = 0) -> tuple[int, int]:
        """The connections wanted: for waiters, and for min_connections or prewarm.

        For waiters: one for each that no connection being opened will serve
        (a background connection backing off serves none while capacity
        allows another). For the others: enough to keep ``min_connections``
        open, and what :meth:`prewarm` asked (``prewarm``, or the last call's
        goal until it is reached).
        """
        counts = self._counts
        connecting = counts[_CONNECTING] + self._priming
        live = connecting + counts[_IDLE] + counts[_LENT] + counts[_DRAINING]
        for_waiters = self._waiting() - connecting + len(self._paused)
        prewarm = max(prewarm, self._prewarm)
        to_prewarm = prewarm - counts[_IDLE] - connecting
        if prewarm and to_prewarm <= 0:
            self._prewarm = 0  # reached
        return for_waiters, max(self._config.min_connections - live, to_prewarm)

    def _waiting(self) -> int:
        """How many borrowers wait, but for those cancelled (queued until their task runs)."""
        waiters = self._waiters
        return len(waiters) - waiters.leaving() if waiters else 0

    def _needs(self) -> int:
        """How many connections the pool would start now if capacity allowed (see _grow)."""
        if self._closing:
            return 0
        wanted = max(*self._demand(), 0)
        return min(wanted, self._capacity - len(self._conns))

    def _at_shared_limit(self) -> None:
        """The shared capacity refused a slot: meet it as the pool's own limit.

        The borrowers that no connection being opened (or prepared) will
        serve fail at once with ``acquire_timeout=0``, or beyond
        ``max_waiting``; a borrower of a new connection gets room by the
        closing of an idle connection of this pool.
        """
        config = self._config
        waiters = self._waiters
        counts = self._counts
        covered = counts[_CONNECTING] + counts[_DRAINING]
        if config.acquire_timeout == 0 and len(waiters) > covered:
            waiters.fail_beyond(covered, partial(self._refused, PoolTimeout))
        elif config.max_waiting is not None and len(waiters) > covered + config.max_waiting:
            waiters.fail_beyond(
                covered + config.max_waiting, partial(self._refused, PoolOverloaded)
            )
        self._grow()  # (makes room for a new connection: the limit is known to be reached)

    def _refused(self, kind: type[PoolError]) -> PoolError:
        """The error of a borrower turned away at the shared limit."""
        if kind is PoolTimeout:
            self._counters.acquire_timeouts += 1
        else:
            self._counters.overloaded += 1
        return kind(
            f"the shared limit of connections to {self._connector.target} is reached "
            f"(shared_capacity: {self._config.shared_capacity!r}; "
            f"acquire_timeout={self._config.acquire_timeout}, "
            f"max_waiting={self._config.max_waiting}; {describe_gauges(self.stats)})"
        )

    def _over_shared_limit(self, conn: Conn[R]) -> None:
        """``conn`` holds no shared slot and may get none: it is closed when it comes back."""
        conn.generation = _OVER_LIMIT

    def _spare(self) -> int:
        """How many idle connections the pool may give up for others (never below min_connections).

        Its longest idle ones: a group's other keys, or other processes
        sharing a limit, take their capacity.
        """
        if self._closing:
            return 0
        return max(0, min(len(self._idle), self._open_count() - self._config.min_connections))

    def _open_count(self) -> int:
        counts = self._counts
        return counts[_IDLE] + counts[_LENT] + counts[_DRAINING]

    def _notify(self) -> None:
        waiter = self._state_waiter
        if waiter is not None:
            self._state_waiter = None
            waiter.set()

    def _set_state(self, conn: Conn[R], state: State) -> None:
        assert state in TRANSITIONS[conn.state], f"{conn.state!r} -> {state!r}"
        if conn.state is _CONNECTING and not conn.background:
            self._wanted -= 1
        counts = self._counts
        counts[conn.state] -= 1
        counts[state] += 1
        conn.state = state

    def _grow(self, prewarm: int = 0) -> None:
        """Open the connections that are needed and that capacity allows.

        Needed: one for each waiter that no connection being opened will serve,
        enough to keep ``min_connections`` open, and what :meth:`prewarm` asked.
        A background connection that is backing off after failures serves no
        waiter while capacity allows another: borrowers never wait out a
        background back-off. At a full pool, a waiter adopts it instead.
        """
        if len(self._conns) >= self._capacity and not (self._paused or self._idle):
            return  # a full pool with nothing to adopt or close: every new waiter's case
        if self._closing or self._tg is None:
            return
        counts = self._counts
        waiters = self._waiters
        paused = self._paused
        for_waiters, for_others = self._demand(prewarm)
        uncovered = max(for_waiters, for_others)
        circuit = self._circuit
        shared = self._shared
        fleet = self._fleet
        make_room = True
        # (Checked first: at a full pool, every new waiter comes through here.)
        while uncovered > 0 and len(self._conns) < self._capacity:
            if circuit is not None and circuit.blocks(self._now()):
                break  # (before asking a group or Redis for room it could not use)
            # (A group makes room, closing other keys' idle connections, for
            # waiters only: not for min_connections nor prewarm.)
            if shared is not None and not shared.has_room(self, max(for_waiters, 0)):
                break  # the group is full: queued for its capacity
            if fleet is not None and not fleet.has_room(self):
                # Queued for a shared slot. Unless Redis said the shared limit
                # is reached, it will likely give one: no room is made.
                make_room = fleet.at_limit
                break
            probe = False
            if circuit is not None and circuit.state is not CircuitState.CLOSED:
                if not circuit.may_start(self._now()):
                    break
                probe = True  # the first connection after circuit_reset
            # Background openings back off after failures; borrowers do not
            # wait, unless the server said it is restarting.
            background = for_waiters <= 0
            delay = self._warm_delay if background else 0.0
            if self._connect_after:
                delay = max(delay, self._connect_after - self._now())
            conn: Conn[R] = Conn(
                self._event_class(), self._generation, background=background, delay=delay
            )
            conn.probe = probe
            if not background:
                self._wanted += 1
            if shared is not None:
                shared.take()
            if fleet is not None:
                fleet.take(conn, self)
            self._start(conn)
            uncovered -= 1
            for_waiters -= 1
        while for_waiters > 0 and paused:
            adopted = paused.pop()
            adopted.background = False
            self._wanted += 1
            adopted.wake.set()
            for_waiters -= 1
        # A full pool: borrowers that asked for a new connection get room by
        # closing the idle connections that waited longest.
        if circuit is not None and waiters and circuit.blocks(self._now()):
            self._shed()  # (no room is made: no new connection may be opened)
            return
        if circuit is not None and circuit.state is not CircuitState.CLOSED:
            for_waiters = min(for_waiters, 1)  # only the probe may be opened
        for_waiters -= counts[_CLOSING]
        if shared is not None:
            for_waiters -= shared.freeing_for(self)  # (room the group makes for it)
        while make_room and for_waiters > 0 and self._idle and waiters:
            first = waiters.first_staying()
            if first is None or not first.fresh:
                break
            self._retire(next(iter(self._idle)), Reason.MAKE_ROOM)
            for_waiters -= 1

    def _start(self, conn: Conn[R]) -> None:
        self._counts[_CONNECTING] += 1
        self._conns.add(conn)
        assert self._tg is not None
        assert self._host is not None
        self._tg.start_soon(
            self._host.run, conn, name=f"anyio_wspool host {self._connector.target}"
        )

    def _retire(self, conn: Conn[R], reason: Reason) -> None:
        """Start closing a connection, whatever its state (synchronous)."""
        state = conn.state
        if state >= _CLOSING:
            return
        if state is _IDLE:
            self._idle.pop(conn, None)
        elif state is _DRAINING:
            # Released, maybe with messages its borrower never read: they are
            # drained like any other, not dropped unseen with the connection.
            self._connector.park(conn.resource, self._drained)
            self._primed(conn)
        if conn.scope is not None:
            # Stop what is being done for it: connecting, backing off, a hook,
            # the drain, a check_on_acquire ping.
            conn.scope.cancel()
        if reason.discarded:
            self._counters.discarded += 1
        conn.reason = reason
        self._set_state(conn, _CLOSING)
        conn.wake.set()
        if conn.opened:
            self._judge(conn)

    def _judge(self, conn: Conn[R]) -> None:
        """What a connection that was open says about the server, as it is retired.

        One that lived ``failure_window`` seconds is a success (it resets the
        back-off and the circuit breaker's count). One that the server closed
        (or that broke) sooner is a failure, like a failed attempt. A close
        code saying the server is going away or restarting makes the next
        connections back off.
        """
        connector = self._connector
        resource = conn.resource
        if not connector.usable(resource):
            conn.server_closed = True
            conn.close_code = connector.close_code(resource)
        age = (conn.died_at or self._now()) - conn.opened_at
        if self._emit is not None:
            self._emit(RetiredEvent(connector.target, str(conn.reason), conn.close_code, age))
        if self._closing:
            return
        window = self._config.failure_window
        if age >= window:
            self._short_lived = 0
            if self._circuit is not None:
                self._circuit.lived(conn.opened_at + window)
        elif conn.server_closed or conn.reason in (Reason.SERVER_CLOSED, Reason.FAILED):
            # Accepted, then closed at once (an overloaded or refusing server):
            # its replacement backs off like a failed attempt.
            self._short_lived += 1
            self._back_off_background()
            self._failure(connector.closed_error(resource))
        if conn.close_code in RESTART_CODES:
            self._restarting(conn.close_code)

    def _restarting(self, code: int) -> None:
        """The server closed a connection saying it restarts or is busy: new ones back off."""
        config = self._config
        self._restart_backoff = min(
            config.retry_backoff_max, max(config.retry_backoff, 2 * self._restart_backoff)
        )
        self._connect_after = max(self._connect_after, self._now() + self._restart_backoff)
        logger.info(
            "the server closed a connection to %s with code %d; new connections wait %.2f s",
            self._connector.target,
            code,
            self._restart_backoff,
        )

    # -- the circuit breaker ----------------------------------------------------------

    def _failure(self, error: Exception, probe: bool = False) -> None:
        """Count a failure (every attempt failed, or closed young) for the circuit breaker."""
        circuit = self._circuit
        if circuit is None or self._closing:
            return
        now = self._now()
        window = circuit.window
        # A connection still open that has lived failure_window seconds since
        # the last failure breaks the run of failures.
        for conn in self._conns:
            if conn.opened and conn.state < _CLOSING and now - conn.opened_at >= window:
                circuit.lived(conn.opened_at + window)
        if circuit.failed(now, error, probe):
            self._counters.circuit_opened += 1
            logger.warning(
                "%d connection(s) to %s failed in a row (the last: %s); the circuit breaker is "
                "open: for %g s, borrowers that need a new connection fail at once",
                circuit.failures,
                self._connector.target,
                describe_error(error),
                circuit.reset,
            )
            if self._emit is not None:
                self._emit(
                    CircuitOpenedEvent(
                        self._connector.target, circuit.failures, error_type(error), circuit.reset
                    )
                )
            # Connections whose attempt has not begun at the server (queued for
            # a handshake slot, backing off before a retry or before their
            # first attempt) are stopped: an open circuit starts no handshake.
            for conn in list(self._conns):
                if conn.state is _CONNECTING and not conn.in_flight:
                    self._retire(conn, Reason.CIRCUIT_OPEN)
            self._shed()

    def _close_circuit(self) -> None:
        """The probe opened: the circuit closes."""
        circuit = self._circuit
        assert circuit is not None
        was_open = circuit.probe_opened(self._now())
        logger.warning(
            "a connection to %s opened after %.1f s; the circuit breaker is closed",
            self._connector.target,
            was_open,
        )
        if self._emit is not None:
            self._emit(CircuitClosedEvent(self._connector.target, was_open))

    def _shed(self) -> None:
        """The circuit is open: fail the waiters that need a new connection.

        At a full pool every waiter waits for a connection to come back, as
        always. Otherwise the first waiters, as many as there are connections
        being opened or being prepared for a lend (drained), keep their place;
        the others would get a new connection: they fail at once with
        :class:`PoolUnavailable`.
        """
        self._shed_for(self._unavailable_error)

    def _shed_for(self, error: Callable[[], BaseException]) -> None:
        """Fail the waiters that need a new connection (beyond those covered) with ``error()``.

        At a full pool they wait for a connection of the pool to come back (a
        group's capacity or a shared one would not help: no new connection
        may be opened).
        """
        if len(self._conns) >= self._capacity:
            return
        counts = self._counts
        keep = counts[_CONNECTING] + counts[_DRAINING]
        waiters = self._waiters
        if len(waiters) > keep:
            waiters.fail_beyond(keep, error)

    def _unavailable_error(self) -> PoolUnavailable:
        circuit = self._circuit
        assert circuit is not None
        self._counters.unavailable += 1
        if circuit.state is CircuitState.HALF_OPEN:
            when = "a probe connection is being opened"
        else:
            left = max(circuit.reset_at - self._now(), 0.0)
            when = f"a probe connection will be tried in {left:.1f} s"
        error = PoolUnavailable(
            f"the circuit breaker of the pool to {self._connector.target} is open after "
            f"{circuit.failures} connection failure(s) in a row; {when} "
            f"({describe_gauges(self.stats)})"
        )
        error.__cause__ = circuit.last_error
        return error

    async def _run_services(self) -> None:
        """The pool's own periodic work, ended by aclose(): the sweep, acquire timeouts, leases."""
        config = self._config
        assert self._service_scope is not None
        with self._service_scope:
            async with anyio.create_task_group() as tg:
                if config.acquire_timeout:
                    tg.start_soon(
                        self._waiters.expire,
                        self._expired,
                        self._event_class,
                        name="anyio_wspool acquire timeouts",
                    )
                if (
                    config.idle_timeout is not None
                    or config.max_lifetime is not None
                    or (self._circuit is not None and config.min_connections)
                ):
                    tg.start_soon(self._sweep_forever, name="anyio_wspool sweep")
                if self._lease_watch is not None:
                    tg.start_soon(
                        self._lease_watch.run, self._event_class, name="anyio_wspool leases"
                    )

    async def _sweep_forever(self) -> None:
        while True:
            await anyio.sleep(self._config.cleanup_interval)
            self._sweep()

    def _sweep(self) -> None:
        """Retire idle connections that are dead, expired, or idle for too long.

        Once an open circuit's reset time is over, let ``min_connections`` try
        a probe connection. Looks at idle connections only (oldest first): its cost does not grow
        with the number of lent ones, and lending never pays for it. Idleness
        never takes the pool below ``min_connections``.
        """
        idle_timeout = self._config.idle_timeout
        now = anyio.current_time()
        circuit = self._circuit
        if circuit is not None and circuit.state is CircuitState.OPEN and now >= circuit.reset_at:
            # Nobody may be borrowing: min_connections sends the probe.
            self._grow()
        for conn in list(self._idle):
            reason = self._unfit(conn)
            if reason is not None:
                self._retire(conn, reason)
            elif (
                idle_timeout is not None
                and now - conn.idle_since >= idle_timeout
                and self._open_count() > self._config.min_connections
            ):
                self._retire(conn, Reason.IDLE)
