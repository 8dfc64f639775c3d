"""A process's share of a limit held in Redis: the slots of its connections.

With ``shared_capacity=RedisCapacity(...)`` every connection holds one shared
slot, from before its handshake until its socket is closed, on top of the
pool's own capacity. :class:`FleetSlots` keeps them for one pool, or for all
the pools of a group: synchronous bookkeeping that the pools call (as they
call a group's :class:`~._group.GroupCapacity`), and one task, :meth:`run`,
that does all the talking to Redis. Lending and giving back never touch Redis:
a pool asks for a slot only when it opens a connection, and gives it back when
the connection is closed.

The task:

- takes a slot for each connection that a pool needs, one round trip each,
  in the order the pools asked; at the shared limit it tells Redis that this
  process waits, and asks again (a short, growing poll) until a slot is free;
- gives back the slots of closed connections that no pool of the process
  needs at once (one that does takes it over, with no round trip);
- refreshes the leases of all its slots every ``lease_ttl / 3``;
- every ``cleanup_interval``, when its pools have idle connections they could
  give up (beyond ``min_connections``), asks whether other processes wait for
  the shared limit; if so the pools close those idle connections, the longest
  idle first, so that capacity flows to where the borrowers are.

When Redis fails, ``when_unavailable`` decides: ``"fail"`` turns away the
borrowers that need a new connection with :class:`~._errors.PoolUnavailable`
(Redis's error as its cause), ``"local"`` lets the pools go on under their own
``max_connections``, warns once, and takes slots again for the connections it
opened meanwhile once Redis answers (closing idle ones for which there is none).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from contextlib import AbstractAsyncContextManager
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio

from ._conn import Reason, State
from ._errors import PoolUnavailable
from ._redact import describe_error

if TYPE_CHECKING:
    from ._conn import Conn
    from ._pool import WebSocketPool
    from ._redis import RedisCapacity, _SharedSlots

__all__ = ("FleetSlots",)

logger = logging.getLogger("anyio_wspool")

#: the first and the longest pause between two requests for a slot at the shared limit
_POLL_FIRST = 0.02
_POLL_MAX = 0.25
#: seconds a process's "waiting" entry lasts in Redis unless renewed (every
#: request for a slot that Redis refuses renews it): the entry of a process
#: that lost Redis, or died, lapses on its own this soon
_WAITING_TTL = 1.0
#: seconds a slot that nobody in the process needs is kept before it goes back
#: to Redis: a connection closed and another opened soon after (a replacement,
#: a borrower of a new connection) reuse it without a round trip
_LINGER = 0.05


class FleetSlots:
    """The shared slots of one pool, or of the pools of one group (see the module)."""

    __slots__ = (
        "_announced",
        "_capacity",
        "_context",
        "_free",
        "_freeing",
        "_held",
        "_interval",
        "_linger",
        "_linger_until",
        "_local_policy",
        "_pending",
        "_poll",
        "_pools",
        "_running",
        "_scope",
        "_slots",
        "_unslotted",
        "_waiting",
        "_wakeup",
        "at_limit",
        "closed",
        "error",
        "limit",
        "local",
    )

    @classmethod
    async def open(cls, capacity: RedisCapacity, cleanup_interval: float) -> FleetSlots:
        """Connect to the shared limit (no I/O: this succeeds while Redis is away).

        The caller runs :meth:`run` in a task and calls :meth:`close` at the
        end, in the task that called this (the Redis client's own task group
        must be left where it was entered).
        """
        context = capacity._open()
        slots = await context.__aenter__()
        fleet = cls(capacity, slots, cleanup_interval)
        fleet._context = context
        return fleet

    def __init__(
        self, capacity: RedisCapacity, slots: _SharedSlots, cleanup_interval: float
    ) -> None:
        self._capacity = capacity
        self._context: AbstractAsyncContextManager[Any] | None = None
        self._slots = slots
        self.limit = capacity.limit
        self._local_policy = capacity.when_unavailable == "local"
        self._interval = cleanup_interval
        self._pools: list[WebSocketPool[Any]] = []
        #: pools that need a slot, in the order they asked (an ordered set)
        self._waiting: OrderedDict[WebSocketPool[Any], None] = OrderedDict()
        #: slots held in Redis that no connection holds (yet, or any more)
        self._free: list[str] = []
        #: when the free slots that nobody takes meanwhile go back to Redis
        self._linger = _LINGER
        self._linger_until = 0.0
        #: the slot of each connection that holds one
        self._held: dict[Conn[Any], str] = {}
        #: idle connections being closed so that a pool of this process that
        #: waits at the shared limit gets their slots
        self._freeing: set[Conn[Any]] = set()
        #: open connections that hold no slot (opened while Redis was away, or
        #: whose lease ran out), and their pools
        self._unslotted: dict[Conn[Any], WebSocketPool[Any]] = {}
        #: slots being taken or given back: given back at close if the task
        #: was stopped before Redis answered (the call may have reached it)
        self._pending: set[str] = set()
        #: how many slots this process's "waiting" entry in Redis says it needs
        self._announced = 0
        self._poll = _POLL_FIRST
        self._wakeup: anyio.Event | None = None
        #: the task's scope, and set once it has ended (None: it never started)
        self._scope = anyio.CancelScope()
        self._running: anyio.Event | None = None
        #: Redis's last error while it fails (None: it answers)
        self.error: Exception | None = None
        #: going on under the local caps alone (when_unavailable="local", Redis away)
        self.local = False
        self.closed = False
        #: whether Redis refused the last slot asked for (the shared limit is reached)
        self.at_limit = False

    # -- what the pools call (synchronous) -------------------------------------------

    def join(self, pool: WebSocketPool[Any]) -> None:
        self._pools.append(pool)

    def leave(self, pool: WebSocketPool[Any]) -> None:
        self._pools.remove(pool)
        self._waiting.pop(pool, None)

    @property
    def in_use(self) -> int | None:
        """Slots held by every process together, as last seen (None: not seen yet)."""
        return self._slots.in_use

    def has_room(self, pool: WebSocketPool[Any]) -> bool:
        """Whether ``pool`` may start a connection now; if not, it queues for a slot.

        (How many it needs is asked of the pool when slots come: ``_needs``.)
        """
        if self._free or self.local:
            return True
        if not self.closed:
            if pool not in self._waiting:
                self._waiting[pool] = None
            self._wake()
        return False

    def take(self, conn: Conn[Any], pool: WebSocketPool[Any]) -> None:
        """``conn`` starts: it holds a free slot (none when going on locally)."""
        if self._free:
            self._held[conn] = self._free.pop()
        else:
            self._unslotted[conn] = pool

    def give_back(self, conn: Conn[Any]) -> None:
        """``conn`` is closed: its slot serves a pool that waits, or goes back to Redis."""
        self._unslotted.pop(conn, None)
        self._freeing.discard(conn)
        member = self._held.pop(conn, None)
        if member is None:
            return
        self._free.append(member)
        self._serve()
        if self._free:
            # The task gives back what nobody took, after a short while.
            self._linger_until = anyio.current_time() + self._linger
            self._wake()

    def _serve(self) -> None:
        """Let the waiting pools, in turn, start connections with the free slots."""
        waiting = self._waiting
        for pool in list(waiting):
            if not (self._free or self.local):
                return
            if pool in waiting:
                del waiting[pool]
                pool._grow()  # (queues again if it needs more)

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    # -- the task ----------------------------------------------------------------------

    async def run(self) -> None:
        """Talk to Redis for the pools: take, give back, refresh, give up idle (see the module).

        Runs until :meth:`aclose` stops it (or the pool's task group is
        cancelled); :meth:`aclose` then gives back what is left.
        """
        event_class = type(anyio.Event())
        ended = self._running = event_class()
        try:
            with self._scope:
                await self._serve_forever(event_class)
        finally:
            ended.set()

    async def _serve_forever(self, event_class: type[anyio.Event]) -> None:
        period = self._capacity.lease_ttl / 3
        now = anyio.current_time()
        next_refresh = now + period
        next_check = now + self._interval
        while True:
            self._wakeup = event_class()
            await self._work()
            deadline = min(next_refresh, next_check)
            if self._free and not self._waiting:
                deadline = min(deadline, self._linger_until)
            if self._waiting and not self.local:
                # At the shared limit: ask again soon, not sooner (what the
                # pools do meanwhile, making room included, wakes nothing).
                deadline = min(deadline, anyio.current_time() + self._poll)
                self._poll = min(_POLL_MAX, 2 * self._poll)
                await anyio.sleep_until(deadline)
            else:
                with anyio.CancelScope(deadline=deadline):
                    await self._wakeup.wait()
            now = anyio.current_time()
            if now >= next_refresh:
                next_refresh = now + period
                await self._refresh()
            if now >= next_check:
                next_check = now + self._interval
                await self._give_up_idle()

    async def _work(self) -> None:
        """Give back the slots nobody needs; take slots for the pools that wait."""
        slots = self._slots
        while True:
            if self._free and not self._waiting and anyio.current_time() >= self._linger_until:
                member = self._free.pop()
                self._pending.add(member)
                try:
                    await slots.give_back(member)
                except Exception as exc:
                    self._failed(exc)  # (its lease runs out after lease_ttl)
                else:
                    self._answered()
                self._pending.discard(member)
                continue
            self._prune()
            if not self._waiting or self.local:
                break
            answer = await self._take()
            if answer is None:
                break
            member, taken = answer
            self._answered()
            self.at_limit = not taken
            if not taken:
                self._limit_reached()
                await self._announce(self._need())
                return
            self._poll = _POLL_FIRST
            self._free.append(member)
            self._serve()
        if self._announced and not self._waiting:
            await self._announce(0)

    def _prune(self) -> None:
        """Drop the pools that no longer need a slot (their borrowers left)."""
        for pool in list(self._waiting):
            if not pool._needs():
                del self._waiting[pool]

    def _need(self) -> int:
        """How many slots the waiting pools need, beyond idle connections being closed for them."""
        return max(0, sum(pool._needs() for pool in self._waiting) - len(self._freeing))

    def _limit_reached(self) -> None:
        """Redis refused a slot: each waiting pool meets the shared limit as it meets its own.

        The pool applies ``acquire_timeout=0`` and ``max_waiting`` to the
        borrowers no connection being opened will serve, and makes room for
        those who asked for a new connection by closing one of its idle ones.
        For what is left, idle connections of the other pools of this process
        (a group's other keys), longest idle first, are closed: their slots
        go to the pools that wait.
        """
        for pool in list(self._waiting):
            pool._at_shared_limit()
        self._prune()
        shortfall = self._need()
        while shortfall > 0:
            victim = self._victim()
            if victim is None:
                return
            owner, conn = victim
            self._freeing.add(conn)
            owner._retire(conn, Reason.MAKE_ROOM)
            shortfall -= 1

    def _victim(self) -> tuple[WebSocketPool[Any], Conn[Any]] | None:
        """The longest idle connection of a pool that does not wait, beyond its min_connections."""
        best: tuple[WebSocketPool[Any], Conn[Any]] | None = None
        for pool in self._pools:
            if pool in self._waiting or not pool._spare():
                continue
            conn = next(iter(pool._idle))
            if best is None or conn.idle_since < best[1].idle_since:
                best = (pool, conn)
        return best

    async def _take(self) -> tuple[str, bool] | None:
        """Ask Redis for a slot: its member and whether it was taken (None: Redis failed)."""
        member = self._slots.new_member()
        # (Left pending if the task is stopped meanwhile: aclose() gives it back.)
        self._pending.add(member)
        try:
            taken, _ = await self._slots.take(member)
        except Exception as exc:
            self._pending.discard(member)
            self._failed(exc)
            return None
        self._pending.discard(member)
        return member, taken

    async def _announce(self, need: int) -> None:
        """Tell Redis how many slots this process waits for (0: none; errors: the next try)."""
        try:
            await self._slots.set_waiting(self._slots.pool_id, need, _WAITING_TTL)
        except Exception as exc:
            self._failed(exc)
        else:
            self._announced = need

    async def _refresh(self) -> None:
        """Renew every slot's lease; a connection whose lease ran out holds none."""
        held = self._held
        try:
            lost = await self._slots.refresh([*held.values(), *self._free])
        except Exception as exc:
            self._failed(exc)
            return
        self._answered()
        if lost:
            self._free = [member for member in self._free if member not in lost]
            for conn, member in list(held.items()):
                if member in lost:
                    del held[conn]
                    self._unslotted[conn] = self._owner(conn)
        await self._slot_unslotted()

    async def _slot_unslotted(self) -> None:
        """Take a slot for each open connection without one; close idle ones that get none."""
        if self.local or self.error is not None:
            return
        for conn, pool in list(self._unslotted.items()):
            if conn.state >= State.CLOSING:
                self._unslotted.pop(conn, None)
                continue
            answer = await self._take()
            if answer is None:
                return
            member, taken = answer
            if conn not in self._unslotted:  # closed meanwhile
                if taken:
                    self._free.append(member)
                continue
            if taken:
                del self._unslotted[conn]
                self._held[conn] = member
            elif conn.state is State.IDLE:
                pool._retire(conn, Reason.SHARED_LIMIT)
            else:
                # Busy (lent, or handed from borrower to borrower): it is
                # closed when it comes back, never lent again.
                pool._over_shared_limit(conn)

    async def _give_up_idle(self) -> None:
        """Close the idle connections nobody here needs if other processes wait for a slot."""
        spare: list[tuple[float, Conn[Any], WebSocketPool[Any]]] = []
        for pool in self._pools:
            count = pool._spare()
            if count:
                spare += [(conn.idle_since, conn, pool) for conn in list(pool._idle)[:count]]
        if not spare or self.local or self.error is not None:
            return
        try:
            others = await self._slots.others_waiting(self._slots.pool_id)
        except Exception as exc:
            self._failed(exc)
            return
        spare.sort(key=lambda item: item[0])
        for _, conn, pool in spare:
            if others <= 0:
                return
            if conn.state is State.IDLE and pool._open_count() > pool._config.min_connections:
                pool._retire(conn, Reason.SHARED_LIMIT)
                others -= 1

    def _owner(self, conn: Conn[Any]) -> WebSocketPool[Any]:
        for pool in self._pools:
            if conn in pool._conns:
                return pool
        raise LookupError("a connection of no pool")  # pragma: no cover

    # -- Redis failing ------------------------------------------------------------------

    def _failed(self, error: Exception) -> None:
        """Redis did not answer: ``when_unavailable`` says what the waiting pools do."""
        first = self.error is None
        self.error = error
        if self._local_policy:
            if not self.local:
                self.local = True
                if first:
                    logger.warning(
                        "Redis of the shared capacity %s is unavailable (%s); the pools go on "
                        "under their own max_connections until it answers again",
                        self._capacity.key,
                        describe_error(error),
                    )
                self._serve()
            return
        if first:
            logger.warning(
                "Redis of the shared capacity %s is unavailable (%s); borrowers that need a "
                "new connection fail until it answers again",
                self._capacity.key,
                describe_error(error),
            )
        waiting = list(self._waiting)
        self._waiting.clear()
        for pool in waiting:
            pool._shed_for(partial(self._unavailable_error, pool))

    def _answered(self) -> None:
        """Redis answered: back to the shared limit if it had failed."""
        if self.error is None:
            return
        self.error = None
        logger.info(
            "Redis of the shared capacity %s answers again; connections hold shared slots again",
            self._capacity.key,
        )
        self.local = False

    def _unavailable_error(self, pool: WebSocketPool[Any]) -> PoolUnavailable:
        pool._counters.unavailable += 1
        error = PoolUnavailable(
            f"the shared capacity {self._capacity.key!r} is unavailable: Redis failed "
            f"({type(self.error).__name__}); connections already open are still lent"
        )
        error.__cause__ = self.error
        return error

    # -- closing ------------------------------------------------------------------------

    async def close(self, close_timeout: float) -> None:
        """Give back what is left (shielded, within ``close_timeout``); close the Redis client."""
        context, self._context = self._context, None
        try:
            if not self.closed or self._free or self._held or self._pending or self._announced:
                with anyio.CancelScope(shield=True), anyio.move_on_after(close_timeout):
                    await self.aclose()
        finally:
            if context is not None:
                # (Not shielded: the client's task group must be left in the
                # scope it was entered in; leaving it waits for nothing.)
                await context.__aexit__(None, None, None)

    async def aclose(self) -> None:
        """Give back every slot left (the pools' connections are closed); idempotent.

        Errors are logged: the slots' leases run out after ``lease_ttl`` anyway.
        Cancelled, it leaves what it did not give back for the next call.
        """
        self.closed = True
        self._waiting.clear()
        # The task stops first (a slot it is taking is left pending), so that
        # nothing it does afterwards holds a slot that is never given back.
        self._scope.cancel()
        if self._running is not None:
            await self._running.wait()
        members = [*self._free, *self._held.values()]
        members += self._pending  # (calls cut short may have reached Redis)
        slots = self._slots
        try:
            if members:
                await slots.give_back_all(members)
            if self._announced:
                await slots.set_waiting(slots.pool_id, 0)
        except Exception as exc:
            self._forget()
            logger.info(
                "could not give back the shared slots of %s (%s); they are free again "
                "after lease_ttl=%g s",
                self._capacity.key,
                describe_error(exc),
                self._capacity.lease_ttl,
            )
        else:
            self._forget()

    def _forget(self) -> None:
        """Nothing is left to give back (given back, or left to expire)."""
        self._free.clear()
        self._held.clear()
        self._pending.clear()
        self._announced = 0
