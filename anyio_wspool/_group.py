"""Keyed pools: one pool per URI (or per key), under one cap for the whole group.

:class:`WebSocketPoolGroup` creates a :class:`~._pool.WebSocketPool` the first
time a key is used and keeps it until the group closes. Every pool of the
group has the group's options, ``max_connections_per_key`` as its own
capacity, and a share of one :class:`GroupCapacity`: ``max_connections``
connections for the group as a whole, each held from the first attempt of a
connection until its socket is closed, as a pool's own capacity is.

At the group's cap a pool that needs a connection closes an idle connection of
another key (the one that has been idle longest) and takes the capacity it
gives back; when nothing is idle it waits, like at its own cap, for a
connection of any key to close. Pools waiting for the group's capacity are
served in turn, one connection at a time, so that a busy key does not starve
the others.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup, TaskStatus

from ._conn import Reason
from ._errors import PoolClosed, PoolError
from ._fleet import FleetSlots
from ._options import check_int, parse_options

if TYPE_CHECKING:
    import httpx

    from ._conn import Conn
    from ._pool import WebSocketPool
    from ._redis import RedisCapacity

__all__ = ("GroupCapacity", "WebSocketPoolGroup")

R = TypeVar("R")


class GroupCapacity:
    """The capacity that the pools of a group share (synchronous bookkeeping)."""

    __slots__ = ("_freeing", "_pools", "_waiting", "in_use", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        #: connections held by the group's pools (connecting to closing)
        self.in_use = 0
        self._pools: list[WebSocketPool[Any]] = []
        #: pools that need capacity, in the order they asked (an ordered set)
        self._waiting: OrderedDict[WebSocketPool[Any], None] = OrderedDict()
        #: idle connections being closed to make room, until they are closed,
        #: and the pool that each one makes room for
        self._freeing: dict[Conn[Any], WebSocketPool[Any]] = {}

    def join(self, pool: WebSocketPool[Any]) -> None:
        self._pools.append(pool)

    def leave(self, pool: WebSocketPool[Any]) -> None:
        self._pools.remove(pool)
        self._waiting.pop(pool, None)

    def has_room(self, pool: WebSocketPool[Any], needed: int) -> bool:
        """Whether ``pool`` may start a connection now (``needed``: how many it wants).

        If not, ``pool`` queues for capacity, and idle connections of other
        keys are closed to make room for what it needs (beyond what is being
        closed for it already: a connection closing for another key is that
        key's room).
        """
        if self.in_use < self.limit:
            return True
        if pool not in self._waiting:
            self._waiting[pool] = None
        freeing = self._freeing
        # Room being made for this pool, or for one that no longer needs it.
        covered = sum(1 for owner in freeing.values() if owner is pool or not owner._needs())
        shortfall = needed - covered
        while shortfall > 0:
            victim = self._victim(pool)
            if victim is None:
                break
            owner, conn = victim
            freeing[conn] = pool
            owner._retire(conn, Reason.MAKE_ROOM)
            shortfall -= 1
        return False

    def freeing_for(self, pool: WebSocketPool[Any]) -> int:
        """Idle connections of other keys being closed to make room for ``pool``."""
        return sum(1 for owner in self._freeing.values() if owner is pool)

    def reclaimable(self, pool: WebSocketPool[Any]) -> int:
        """Capacity that ``pool`` could get now: free, or held by idle connections it may close."""
        spare = sum(other._spare() for other in self._pools if other is not pool)
        return self.limit - self.in_use + spare

    def take(self) -> None:
        self.in_use += 1

    def give_back(self, conn: Conn[Any]) -> None:
        """A connection of the group closed: the pools that wait for capacity get it in turn.

        The pool it was closed for, if any, first.
        """
        self.in_use -= 1
        waiting = self._waiting
        owner = self._freeing.pop(conn, None)
        if owner is not None and owner in waiting:
            del waiting[owner]
            owner._grow()  # (queues again if it still needs more)
        while waiting and self.in_use < self.limit:
            pool, _ = waiting.popitem(last=False)
            pool._grow()

    def idle_available(self) -> None:
        """A connection went idle: the first pool waiting for capacity that needs it closes it.

        A pool that no longer needs capacity (its borrower left) leaves the
        queue, and the next one is asked.
        """
        waiting = self._waiting
        for pool in list(waiting):
            if pool not in waiting:
                continue
            del waiting[pool]
            before = (self.in_use, len(self._freeing))
            pool._grow()  # (queues again, and makes room, if it still needs capacity)
            if (self.in_use, len(self._freeing)) != before:
                return

    def _victim(self, pool: WebSocketPool[Any]) -> tuple[WebSocketPool[Any], Conn[Any]] | None:
        """The idle connection of another key that has been idle longest, if any.

        A pool at or below its ``min_connections`` keeps its connections.
        """
        best: tuple[WebSocketPool[Any], Conn[Any]] | None = None
        since = math.inf
        for other in self._pools:
            if other is pool or not other._spare():
                continue
            conn = next(iter(other._idle))  # the longest idle of that pool
            if conn.idle_since < since:
                best, since = (other, conn), conn.idle_since
        return best


class _Member(Generic[R]):
    """A pool of the group and what holds it open."""

    __slots__ = ("done", "error", "label", "pool", "ready", "uri")

    def __init__(self, pool: WebSocketPool[R], uri: str | httpx.URL, label: Hashable) -> None:
        self.pool = pool
        self.uri = uri
        #: its key as the group shows it: the user's key, or the URI with its secrets masked
        self.label = label
        #: set once the pool is open (or failed to open)
        self.ready = anyio.Event()
        #: set to let the task that holds the pool leave it
        self.done = anyio.Event()
        #: why the pool could not be opened
        self.error: Exception | None = None


class WebSocketPoolGroup(Generic[R]):
    """One pool per URI (or per key), created on first use, under one cap for all.

    Create it with :func:`open_pool_group` and use it as an async context
    manager: leaving it closes every pool (each with its own guarantees:
    every connection closed, every task ended).

    Examples:
        async with open_pool_group(max_connections=20, max_connections_per_key=8) as group:
            async with group.connection("wss://a.example/ws") as ws:
                await ws.send_text("hello")
    """

    def __init__(
        self,
        factory: Callable[[str | httpx.URL, int], WebSocketPool[R]],
        max_connections: int,
        max_connections_per_key: int,
        shared_capacity: RedisCapacity | None = None,
        cleanup_interval: float = 5.0,
        close_timeout: float = 5.0,
    ) -> None:
        self._factory = factory
        self._capacity = GroupCapacity(max_connections)
        #: shared_capacity: the limit across processes, for all the group's
        #: pools together (their slots, and the Redis client's context)
        self._shared_capacity = shared_capacity
        self._cleanup_interval = cleanup_interval
        self._close_timeout = close_timeout
        self._fleet: FleetSlots | None = None
        self._fleet_scope: anyio.CancelScope | None = None
        self._per_key = max_connections_per_key
        self._members: dict[Hashable, _Member[R]] = {}
        self._tg: TaskGroup | None = None
        self._outer: TaskGroup | None = None
        self._stopped: anyio.Event | None = None
        self._entered = False
        self._closing = False

    # -- lending ---------------------------------------------------------------------

    def connection(
        self, uri: str | httpx.URL, *, key: Hashable | None = None
    ) -> AbstractAsyncContextManager[R]:
        """Lend a connection of the pool of ``key`` (by default, of ``uri``).

        The pool is created on first use. Everything else is as
        :meth:`WebSocketPool.connection`: the connection goes back on normal
        exit, is closed if the block raises, and the borrower waits (first
        come, first served) up to ``acquire_timeout`` when the key's pool or
        the group is full.

        Raises:
            ValueError: ``key`` was used before with another URI.
            PoolClosed: the group is closed.
        """
        return _GroupLease(self, uri, key, fresh=False)

    def new_connection(
        self, uri: str | httpx.URL, *, key: Hashable | None = None
    ) -> AbstractAsyncContextManager[R]:
        """Like :meth:`connection`, with a newly opened connection.

        Raises:
            PoolTimeout, PoolOverloaded, PoolUnavailable, PoolClosed: as
                :meth:`WebSocketPool.new_connection`.
            ValueError: ``key`` was used before with another URI.
        """
        return _GroupLease(self, uri, key, fresh=True)

    async def acquire(self, uri: str | httpx.URL, *, key: Hashable | None = None) -> R:
        """Take a connection without a block; give it back with :meth:`release`.

        Cancelled while it waits, it leaves no trace (as a pool's ``acquire()``).

        Raises:
            PoolTimeout, PoolOverloaded, PoolUnavailable, PoolClosed: as
                :meth:`WebSocketPool.acquire`.
            ValueError: ``key`` was used before with another URI.
        """
        return await (await self.pool(uri, key=key)).acquire()

    async def acquire_new(self, uri: str | httpx.URL, *, key: Hashable | None = None) -> R:
        """Like :meth:`acquire`, with a newly opened connection.

        Raises:
            PoolTimeout, PoolOverloaded, PoolUnavailable, PoolClosed: as
                :meth:`WebSocketPool.acquire_new`.
            ValueError: ``key`` was used before with another URI.
        """
        return await (await self.pool(uri, key=key)).acquire_new()

    async def release(self, connection: R, *, discard: bool = False) -> None:
        """Give back a connection taken with :meth:`acquire`; ``discard=True`` closes it.

        A no-op once the group is closed; it never waits for I/O.

        Raises:
            PoolError: no pool of the group has ``connection`` lent.
        """
        for member in list(self._members.values()):
            pool = member.pool
            if pool._lent_conn(connection) is not None:
                await pool.release(connection, discard=discard)
                return
        if self._closing:
            return
        raise PoolError(
            f"release() was given {type(connection).__name__} object that no pool of this "
            "group lent, or that was released already"
        )

    async def pool(self, uri: str | httpx.URL, *, key: Hashable | None = None) -> WebSocketPool[R]:
        """The pool of ``key`` (by default, of ``uri``), opened now if it is new.

        Cancelled while the new pool opens, the pool still opens for the next
        caller.

        Raises:
            ValueError: ``key`` was used before with another URI.
            PoolClosed: the group is closed.
        """
        if self._closing or not self._entered:
            # A cancelled caller is cancelled first, as at a closed pool.
            await anyio.lowlevel.checkpoint_if_cancelled()
            self._check_open()
        given = key is not None
        if key is None:
            key = str(uri)
        member = self._members.get(key)
        if member is None:
            pool = self._factory(uri, self._per_key)
            member = _Member(pool, uri, key if given else (pool.uri or key))
            self._members[key] = member
            assert self._tg is not None
            self._tg.start_soon(self._hold, member, name="anyio_wspool group member")
        elif str(member.uri) != str(uri):
            raise ValueError(
                f"this group's key {key!r} is for another URI ({member.pool.uri}); "
                "use another key for this one"
            )
        if not member.ready.is_set():
            await member.ready.wait()
        if member.error is not None:
            raise member.error
        if member.pool.is_closed:
            raise PoolClosed("the pool group is closed")
        return member.pool

    async def _hold(self, member: _Member[R]) -> None:
        """Hold one pool of the group open, from its first use to the group's end."""
        pool = member.pool
        pool._shared = self._capacity
        pool._fleet = self._fleet
        self._capacity.join(pool)
        try:
            async with pool:
                member.ready.set()
                await member.done.wait()
        except Exception as exc:
            # Opening it failed: its borrowers get the error, the group goes on.
            member.error = exc
        finally:
            self._capacity.leave(pool)
            member.ready.set()

    # -- the group -------------------------------------------------------------------

    @property
    def pools(self) -> Mapping[Hashable, WebSocketPool[R]]:
        """The group's pools by key, as a new mapping (a snapshot).

        A key that is a URI (no ``key=`` given) is shown as ``pool.uri``: with
        its password and query values masked, so that it can go to a log or a
        metric label.
        """
        return {member.label: member.pool for member in self._members.values()}

    @property
    def max_connections(self) -> int:
        """The cap of the group as a whole."""
        return self._capacity.limit

    @property
    def max_connections_per_key(self) -> int:
        """The cap of each key's pool."""
        return self._per_key

    @property
    def open_connections(self) -> int:
        """Connections that the group's pools hold now (connecting to closing)."""
        return self._capacity.in_use

    @property
    def is_closed(self) -> bool:
        """Whether the group is closed (or closing)."""
        return self._closing

    def __iter__(self) -> Iterator[Hashable]:
        """The keys, as :attr:`pools` shows them (URIs with their secrets masked)."""
        return iter([member.label for member in self._members.values()])

    def __repr__(self) -> str:
        state = "closed" if self._closing else "open" if self._entered else "not started"
        return (
            f"<WebSocketPoolGroup {state}: {len(self._members)} pool(s), "
            f"{self._capacity.in_use} of max_connections={self._capacity.limit} held>"
        )

    def _check_open(self) -> None:
        if self._closing or not self._entered:
            raise PoolClosed(
                "the pool group is closed"
                if self._closing
                else "the pool group is not open yet: use `async with open_pool_group(...)`"
            )

    async def aclose(self) -> None:
        """Close every pool of the group (concurrently); idempotent.

        Each pool closes as :meth:`WebSocketPool.aclose` does, bounded by
        ``close_timeout``; cancelling the caller does not stop the closes
        already started. Raises nothing of its own.
        """
        self._closing = True
        members = list(self._members.values())
        async with anyio.create_task_group() as tg:
            for member in members:
                tg.start_soon(member.pool.aclose)
        for member in members:
            member.done.set()

    async def __aenter__(self) -> WebSocketPoolGroup[R]:
        if self._entered:
            raise RuntimeError("a pool group can be opened only once; create a new one")
        if self._closing:
            raise PoolClosed("the pool group was closed (aclose()) before it was opened")
        self._entered = True
        self._stopped = anyio.Event()
        capacity = self._shared_capacity
        if capacity is not None:
            # (Opening it does no I/O: a group opens while Redis is away.)
            self._fleet = await FleetSlots.open(capacity, self._cleanup_interval)
            self._fleet_scope = anyio.CancelScope()
        outer = self._outer = anyio.create_task_group()
        try:
            await outer.__aenter__()
        except BaseException:
            await self._close_fleet()
            raise
        try:
            await outer.start(self._run, name="anyio_wspool group")
        except BaseException as exc:
            await outer.__aexit__(type(exc), exc, exc.__traceback__)
            await self._close_fleet()
            raise
        return self

    async def _run_fleet(self) -> None:
        """The task of the group's shared slots, until the group's pools are closed."""
        assert self._fleet is not None
        assert self._fleet_scope is not None
        with self._fleet_scope:
            await self._fleet.run()

    async def _close_fleet(self) -> None:
        """Give back the group's shared slots (bounded) and close its Redis client."""
        if self._fleet is not None:
            await self._fleet.close(self._close_timeout)

    async def _run(self, *, task_status: TaskStatus[None]) -> None:
        # Shielded, as a pool's own tasks: the pools are closed by the group
        # alone, in order, even when the scope around the group is cancelled.
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as tg:
                self._tg = tg
                if self._fleet is not None:
                    tg.start_soon(self._run_fleet, name="anyio_wspool shared capacity")
                task_status.started()
                assert self._stopped is not None
                await self._stopped.wait()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        outer = self._outer
        assert outer is not None
        assert self._stopped is not None
        try:
            with anyio.CancelScope(shield=True):
                await self.aclose()
        finally:
            if self._fleet_scope is not None:
                self._fleet_scope.cancel()
            self._stopped.set()
            # Shielded: the group's task ends at once, and a cancellation of
            # the scope around the group must not replace the exception
            # leaving it (nor be wrapped with it in an ExceptionGroup).
            outer.cancel_scope.shield = True
            try:
                await outer.__aexit__(None, None, None)
            finally:
                await self._close_fleet()
        if exc_type is None:
            await anyio.lowlevel.checkpoint_if_cancelled()


class _GroupLease(Generic[R]):
    """What ``group.connection()`` returns: the pool's own lease, once the pool is open."""

    __slots__ = ("_entering", "_fresh", "_group", "_key", "_lease", "_uri")

    def __init__(
        self, group: WebSocketPoolGroup[R], uri: str | httpx.URL, key: Hashable | None, fresh: bool
    ) -> None:
        self._group = group
        self._uri = uri
        self._key = key
        self._fresh = fresh
        self._lease: AbstractAsyncContextManager[R] | None = None
        #: a block is being entered (its pool opened, its connection waited for)
        self._entering = False

    async def __aenter__(self) -> R:
        # In use from the moment a block enters, not only once it holds a
        # connection: a second block entered while the first waits would be
        # lent a connection too, and this object can give back only one.
        if self._lease is not None or self._entering:
            raise RuntimeError("this group.connection() context manager is already in use")
        self._entering = True
        try:
            pool = await self._group.pool(self._uri, key=self._key)
            lease = pool.new_connection() if self._fresh else pool.connection()
            resource = await lease.__aenter__()
        finally:
            self._entering = False
        self._lease = lease
        return resource

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        lease = self._lease
        assert lease is not None
        self._lease = None
        await lease.__aexit__(exc_type, exc, tb)


def make_group(
    max_connections: int,
    max_connections_per_key: int | None,
    make_pool: Callable[[str | httpx.URL, int], WebSocketPool[R]],
    options: Mapping[str, Any],
    lib: Any,
) -> WebSocketPoolGroup[R]:
    """Validate the group's own options and the pools' options; make the group.

    ``lib`` is the httpx of the group's client (``httpx``, or ``httpx2``).
    """
    total = check_int("max_connections", max_connections, minimum=1)
    per_key = (
        total
        if max_connections_per_key is None
        else check_int("max_connections_per_key", max_connections_per_key, minimum=1)
    )
    if per_key > total:
        raise ValueError(
            f"max_connections_per_key={per_key} is more than the group's max_connections={total}"
        )
    config = parse_options({**options, "max_connections": per_key}, websocket=True, lib=lib)
    return WebSocketPoolGroup(
        make_pool,
        total,
        per_key,
        config.shared_capacity,
        config.cleanup_interval,
        config.close_timeout,
    )
