"""State machines over the pool: random operations, every invariant after each.

Hypothesis draws a list of operations together with the behaviour of the world
around the pool (which connection attempts fail or hang, which ``on_connect``
calls fail or hang, when the connector hands out an object it handed out
before, when the server pushes, closes or stops answering pings, and the step
at which the pool is closed); one async test interprets the list. (A
``RuleBasedStateMachine`` would need an event loop per rule; a list
interpreted inside one test runs on the three backends of anyio's plugin.)

Borrowers are tasks, each holding a stack of leases (a lease may be taken
inside another one, in the same task). After every step, once every task has
settled (scheduling rounds, then waiting for the next change the world or a
borrower reports, bounded), the pool's public state must agree with what the
borrowers hold:

- capacity (guarantee 1): connecting + idle + in use + draining + closing never
  exceed ``max_connections``; after a shrink, the pool never grows while above
  it, and lends nothing that would exceed it;
- exclusivity (2): no connection is lent to two live leases, counted per
  connection (the connector may yield one object for two connections);
- first come, first served (3): no borrower is served while one that was
  queued before it still waits;
- health and freshness (4, 7), real stack: no borrower reads a message sent
  before its lease began (another lease's reply, ``on_connect``'s login, a
  server push), and a connection the server closed before a borrower asked is
  never that borrower's;
- cancellation (6): a cancelled waiter leaves no trace, a borrower cancelled
  inside its block has its connection closed;
- gauges and counters equal what the borrowers hold and wait for;
- clean exit (8): after ``aclose()`` every waiter has ``PoolClosed`` at once,
  every connection opened was closed exactly once (the server sees none
  open), and closing, like leaving, takes at most about ``close_timeout``.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import anyio
import anyio.lowlevel
import pytest
from httpx_ws import AsyncWebSocketSession, HTTPXWSException
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from wsproto.events import TextMessage

from anyio_wspool import PoolClosed, PoolError, WebSocketPool, open_pool

from ._wsserver import WSServer, serve_ws

pytestmark = pytest.mark.anyio

R = TypeVar("R")

#: scheduling rounds that settle every chain of in-memory hand-offs
ROUNDS = 20
#: real seconds a step may take to settle (a borrower's exchange included)
SETTLE_LIMIT = 2.5
#: real seconds the last phase (everything given back) may take
FINAL_LIMIT = 5.0
#: what closing or leaving may take beyond close_timeout (scheduling, loopback)
SLACK = 0.25


class Notifier:
    """One event per change: a waiter takes ``event`` first, then checks, then waits."""

    def __init__(self) -> None:
        self.event = anyio.Event()

    def notify(self) -> None:
        self.event.set()
        self.event = anyio.Event()


@dataclass(eq=False)
class Task(Generic[R]):
    """A borrower's task: its leases, innermost last."""

    number: int
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    stack: list[Lease[R]] = field(default_factory=list)
    done: bool = False


@dataclass(eq=False)
class Lease(Generic[R]):
    """One ``pool.connection()`` (or ``acquire()``), from the driver's point of view."""

    #: arrival order: the step that asked for it
    number: int
    task: Task[R]
    kind: str = "connection"  # or "new" (new_connection), "manual" (acquire/release)
    got: R | None = None
    error: BaseException | None = None
    #: the task ran its code (it asked the pool)
    started: bool = False
    ended: bool = False
    #: ended by an exception while held (a discard, a cancellation): the pool closes it
    broken: bool = False
    #: the pool was closed when it ended (its release was a no-op)
    closed_pool: bool = False
    #: seen waiting at a settled moment, while the pool's queue held all waiters
    queued: bool = False
    #: set at the step that served it (for the first come, first served check)
    served_step: int = -1
    #: when it got its outcome (a connection or an error), on the backend's clock
    outcome_at: float = 0.0
    #: the driver's next order: "release", "release_unread", "discard", "nest", "exchange"
    command: str | None = None
    wake: anyio.Event = field(default_factory=anyio.Event)
    child: Lease[R] | None = None
    #: real stack: pushes done and server faults (closes, aborts) when it asked
    pushes_at_call: int = 0
    faults_at_call: int = 0
    #: real stack: the pushes it may not read (those numbered up to this one)
    forbidden_push: int = 0
    exchanges: int = 0

    @property
    def waiting(self) -> bool:
        return self.got is None and not self.ended

    @property
    def holding(self) -> bool:
        return self.got is not None and not self.ended


class Discard(Exception):
    """Raised in a block to have its connection closed instead of released."""


class Machine(Generic[R]):
    """What both state machines share: borrowers, leases, settling, the common checks."""

    def __init__(self, pool: WebSocketPool[R], tg: anyio.abc.TaskGroup, changed: Notifier) -> None:
        self.pool = pool
        self.tg = tg
        self.changed = changed
        self.tasks: list[Task[R]] = []
        self.leases: list[Lease[R]] = []
        self.arrivals = itertools.count()
        self.step = 0
        #: what the checks run from inside the pool's or the borrowers' tasks found
        self.violations: list[str] = []
        self.final = False
        self.nested = 0
        self.closed_at: float | None = None
        #: the live connections the pool may hold now (see note_capacity)
        self.allowance = pool.max_connections

    # -- borrowers ------------------------------------------------------------------

    def new_lease(self, task: Task[R], kind: str) -> Lease[R]:
        lease = Lease[R](next(self.arrivals), task, kind)
        self.leases.append(lease)
        return lease

    def borrow(self, kind: str = "connection") -> None:
        task = Task[R](len(self.tasks))
        self.tasks.append(task)
        lease = self.new_lease(task, kind)
        self.tg.start_soon(self.run_task, task, lease, name=f"borrower {task.number}")

    async def run_task(self, task: Task[R], lease: Lease[R]) -> None:
        try:
            with task.scope:
                await self.run_lease(lease)
        finally:
            task.done = True
            self.changed.notify()

    async def run_lease(self, lease: Lease[R]) -> None:
        task = lease.task
        task.stack.append(lease)
        lease.started = True
        self.on_call(lease)
        self.changed.notify()
        try:
            if lease.kind == "manual":
                await self.manual_lease(lease)
            else:
                await self.block_lease(lease)
        except Discard:
            lease.broken = True
        except BaseException:
            if lease.got is not None:
                lease.broken = True  # cancelled while held
            raise
        finally:
            lease.ended = True
            lease.closed_pool = self.pool.is_closed
            lease.command = None
            task.stack.pop()
            self.on_end(lease)
            self.changed.notify()

    async def block_lease(self, lease: Lease[R]) -> None:
        lease_cm = self.pool.new_connection() if lease.kind == "new" else self.pool.connection()
        try:
            resource = await lease_cm.__aenter__()
        except (OSError, TimeoutError, PoolError, Refused, HTTPXWSException) as exc:
            self.failed(lease, exc)
            return
        # The rest as `async with` does it, so that the block's exception is the pool's to see.
        try:
            await self.hold(lease, resource)
        except BaseException as exc:
            if not await lease_cm.__aexit__(type(exc), exc, exc.__traceback__):
                raise
        else:
            await lease_cm.__aexit__(None, None, None)

    async def manual_lease(self, lease: Lease[R]) -> None:
        try:
            resource = await self.pool.acquire()
        except (OSError, TimeoutError, PoolError, Refused, HTTPXWSException) as exc:
            self.failed(lease, exc)
            return
        try:
            await self.hold(lease, resource)
        except BaseException:
            # As a careful user does: a connection in an unknown state is discarded.
            with anyio.CancelScope(shield=True):
                await self.pool.release(resource, discard=True)
            raise
        else:
            await self.pool.release(resource)

    def failed(self, lease: Lease[R], exc: BaseException) -> None:
        lease.error = exc
        lease.outcome_at = anyio.current_time()
        self.changed.notify()

    async def hold(self, lease: Lease[R], resource: R) -> None:
        """The body of the block: take the driver's orders until told to let go."""
        lease.got = resource
        lease.outcome_at = anyio.current_time()
        lease.served_step = self.step
        self.granted(lease)
        self.changed.notify()
        await self.on_granted(lease)
        while not (self.final and lease.command is None):
            if lease.command is None:
                await lease.wake.wait()
                lease.wake = anyio.Event()
                continue
            command, lease.command = lease.command, None
            if command == "nest":
                assert lease.child is not None
                await self.run_lease(lease.child)
            elif command == "discard":
                raise Discard
            elif command in ("release", "release_unread"):
                await self.on_release(lease, command)
                return
            else:
                await self.on_command(lease, command)
            self.changed.notify()

    def order(self, lease: Lease[R], command: str) -> None:
        lease.command = command
        lease.wake.set()

    def innermost(self, index: int, *, holding: bool) -> Lease[R] | None:
        """The innermost lease of the ``index``-th live task, if it holds (or waits)."""
        live = [t for t in self.tasks if not t.done and t.stack and not t.scope.cancel_called]
        if not live:
            return None
        lease = live[index % len(live)].stack[-1]
        if holding and not lease.holding:
            return None
        if not holding and not lease.waiting:
            return None
        return lease

    def op_release(self, index: int, command: str = "release") -> None:
        lease = self.innermost(index, holding=True)
        if lease is not None:
            self.order(lease, command)

    def op_nest(self, index: int, kind: str) -> None:
        lease = self.innermost(index, holding=True)
        if lease is not None:
            lease.child = self.new_lease(lease.task, kind)
            self.nested += 1
            self.order(lease, "nest")

    def op_cancel(self, index: int) -> None:
        live = [t for t in self.tasks if not t.done and not t.scope.cancel_called]
        if live:
            live[index % len(live)].scope.cancel()

    # -- hooks of each machine ----------------------------------------------------------

    def on_call(self, lease: Lease[R]) -> None:
        """The lease's task is about to ask the pool."""

    def on_end(self, lease: Lease[R]) -> None:
        """The lease ended (its block was left, or it never got a connection)."""

    def granted(self, lease: Lease[R]) -> None:
        """Checks at the moment a borrower gets its connection (in its own task)."""
        stats = self.pool.stats
        if stats.in_use > self.pool.max_connections:
            self.violate(f"lease {lease.number} was lent a connection beyond capacity: {stats}")
        self.note_capacity(f"lease {lease.number} granted")

    async def on_granted(self, lease: Lease[R]) -> None:
        await anyio.lowlevel.checkpoint()

    async def on_release(self, lease: Lease[R], command: str) -> None:
        await anyio.lowlevel.checkpoint()

    async def on_command(self, lease: Lease[R], command: str) -> None:
        raise AssertionError(command)

    # -- checks ---------------------------------------------------------------------

    def violate(self, message: str) -> None:
        self.violations.append(f"step {self.step}: {message}")

    def live_count(self) -> int:
        stats = self.pool.stats
        return stats.connecting + stats.idle + stats.in_use + stats.draining + stats.closing

    def note_capacity(self, where: str) -> None:
        """Guarantee 1, checked wherever the pool hands control to the test.

        The allowance is ``max_connections``, or, right after a shrink, the
        connections the pool held then: above capacity it may only shrink.
        """
        live = self.live_count()
        if live > self.allowance:
            self.violate(
                f"{where}: {live} live connections, more than {self.allowance} "
                f"(max_connections={self.pool.max_connections}): {self.pool.stats}"
            )

    def resize(self, capacity: int) -> None:
        self.pool.max_connections = capacity
        self.allowance = max(capacity, self.live_count())

    def unsettled(self) -> str | None:
        """Why the borrowers and the pool do not agree yet (None: they do)."""
        pending = [lease.number for lease in self.leases if lease.command is not None]
        if pending:
            return f"orders not yet carried out by leases {pending}"
        unstarted = [t.number for t in self.tasks if not t.stack and not t.done]
        if unstarted:
            return f"tasks {unstarted} have not run yet"
        stats = self.pool.stats
        holding = sum(lease.holding for lease in self.leases)
        waiting = sum(lease.waiting for lease in self.leases)
        if self.pool.is_closed:
            gauges = (stats.connecting, stats.idle, stats.in_use, stats.draining, stats.waiting)
            if self.closed_at is not None and gauges != (0, 0, 0, 0, 0):
                return f"a closed pool still holds connections or waiters: {stats}"
            if waiting:
                return f"{waiting} borrowers still wait on a closed pool"
            return None
        return self.gauges_differ(stats, holding, waiting)

    def gauges_differ(self, stats: Any, holding: int, waiting: int) -> str | None:
        if (stats.in_use, stats.waiting) != (holding, waiting):
            return (
                f"gauges in_use={stats.in_use} waiting={stats.waiting}, but borrowers "
                f"hold {holding} and wait for {waiting}"
            )
        return None

    async def settle(self) -> None:
        """Let every task run until the pool and the borrowers agree, then check."""
        with anyio.move_on_after(SETTLE_LIMIT):
            while True:
                event = self.changed.event
                for _ in range(ROUNDS):
                    await anyio.lowlevel.checkpoint()
                if self.unsettled() is None:
                    break
                await event.wait()
        self.check()

    def check(self) -> None:
        assert not self.violations, "\n".join(self.violations)
        problem = self.unsettled()
        assert problem is None, f"step {self.step}, not settled after {SETTLE_LIMIT} s: {problem}"
        self.note_capacity("settled")
        assert not self.violations, "\n".join(self.violations)
        if not self.pool.is_closed and self.live_count() > self.pool.max_connections:
            assert self.pool.stats.idle == 0, f"idle connections above capacity: {self.pool.stats}"
        self.allowance = max(self.pool.max_connections, min(self.allowance, self.live_count()))
        self.check_fifo()
        self.check_more()
        self.step += 1

    def check_fifo(self) -> None:
        """Guarantee 3: nobody is served while one queued before it still waits.

        (Except a borrower who asked for a new connection: those behind it may
        be served a connection it would not take.)
        """
        served = [lease for lease in self.leases if lease.served_step == self.step]
        for waiter in self.leases:
            if not waiter.queued or not waiter.waiting or waiter.task.scope.cancel_called:
                continue
            # One who asked for a new connection waits for a new one: the
            # others may take a connection that it could not use.
            overtaking = [
                lease.number
                for lease in served
                if lease.number > waiter.number and (waiter.kind != "new" or lease.kind == "new")
            ]
            assert not overtaking, (
                f"step {self.step}: leases {overtaking} were served while lease "
                f"{waiter.number}, queued before them, still waits"
            )
        if self.queue_is_visible():
            for lease in self.leases:
                if lease.waiting:
                    lease.queued = True

    def queue_is_visible(self) -> bool:
        """Whether every waiting borrower is in the pool's queue now."""
        return not self.pool.is_closed

    def check_more(self) -> None:
        """What each machine checks on top, in a settled state."""

    def tell(self) -> None:
        """What this example exercised, for ``--hypothesis-show-statistics``."""
        served = sum(lease.got is not None for lease in self.leases)
        errors = sorted({type(lease.error).__name__ for lease in self.leases if lease.error})
        event("leases served", min(served, 5))
        event("errors: " + ",".join(errors))
        event("closed by aclose() mid-run", self.closed_at is not None)
        event("waited in a queue", min(sum(lease.queued for lease in self.leases), 3))

    async def close_pool(self, close_timeout: float) -> None:
        """``aclose()`` now: prompt for the waiters, bounded, and everything closed."""
        self.closed_at = anyio.current_time()
        waiting = [lease for lease in self.leases if lease.waiting]
        with anyio.move_on_after(close_timeout + SLACK) as scope:
            await self.pool.aclose()
        took = anyio.current_time() - self.closed_at
        assert not scope.cancelled_caught, f"aclose() took longer than {close_timeout + SLACK} s"
        for _ in range(ROUNDS):
            await anyio.lowlevel.checkpoint()
        for lease in waiting:
            if lease.task.scope.cancel_called and lease.ended:
                continue
            assert isinstance(lease.error, PoolClosed), (
                f"lease {lease.number} waiting at aclose() got {lease.error!r}, not PoolClosed, "
                f"{took:.3f} s later"
            )
            assert lease.outcome_at - self.closed_at <= SLACK, (
                f"lease {lease.number} got PoolClosed {lease.outcome_at - self.closed_at:.3f} s "
                "after aclose()"
            )

    async def give_everything_back(self) -> None:
        """The last phase: every lease is given back, every waiter served or failed."""
        self.final = True
        for task in self.tasks:
            if len(task.stack) > 1 and task.stack[-1].waiting:
                task.scope.cancel()  # waits under its own lease: may never be served
        with anyio.fail_after(FINAL_LIMIT):
            while not all(task.done for task in self.tasks):
                event = self.changed.event
                for task in self.tasks:
                    if task.stack and task.stack[-1].holding and task.stack[-1].command is None:
                        self.order(task.stack[-1], "release")
                for _ in range(ROUNDS):
                    await anyio.lowlevel.checkpoint()
                if not all(task.done for task in self.tasks):
                    await event.wait()
        await self.settle()


# == 1. the generic core, in memory ===============================================================


class Refused(Exception):
    """A connector error that is not worth another attempt."""


class Resource:
    """What the test connector yields: possibly for several connections at once."""

    __slots__ = ("number",)

    def __init__(self, number: int) -> None:
        self.number = number

    def __repr__(self) -> str:
        return f"<Resource {self.number}>"


@dataclass(eq=False)
class Handle:
    """One connection as the connector sees it: one entry into its context."""

    number: int
    resource: Resource
    #: on_connect returned: the pool counts it as opened
    ready: bool = False
    closes: int = 0


class World:
    """The connector and ``on_connect`` of the generic machine, scripted by Hypothesis.

    Each connection attempt takes the next outcome of ``attempts`` (then "ok"):
    "fail" raises a transient ``OSError``, "refuse" an error that is not
    retried, "hang" waits until the pool cancels it (``connect_timeout``),
    "same" yields the object of the last connection again (with ``share``,
    every connection does), "slow_close" opens
    normally but its close hangs (cut by ``close_timeout``). Each
    ``on_connect`` takes the next of ``hooks``: "ok", "fail" or "hang".
    """

    def __init__(
        self, attempts: list[str], hooks: list[str], changed: Notifier, *, share: bool = False
    ) -> None:
        #: every connection yields the same object (a shared handle)
        self.share = share
        self.attempts = deque(attempts)
        self.hooks = deque(hooks)
        self.changed = changed
        self.handles: list[Handle] = []
        #: the handle being opened by each host task (on_connect finds it here)
        self.opening: dict[int, Handle] = {}
        self.hanging = 0
        self.check: Callable[[str], None] = lambda where: None

    async def hang(self) -> None:
        self.hanging += 1
        try:
            await anyio.sleep_forever()
        finally:
            self.hanging -= 1
            self.changed.notify()

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[Resource]:
        outcome = self.attempts.popleft() if self.attempts else "ok"
        self.check("a connection attempt")
        await anyio.lowlevel.checkpoint()
        if outcome == "fail":
            raise ConnectionResetError("the test connector failed (transient)")
        if outcome == "refuse":
            raise Refused("the test connector refused (not retried)")
        if outcome == "hang":
            await self.hang()
        if (outcome == "same" or self.share) and self.handles:
            resource = self.handles[-1].resource
        else:
            resource = Resource(len(self.handles))
        handle = Handle(len(self.handles), resource)
        self.handles.append(handle)
        task_id = anyio.get_current_task().id
        self.opening[task_id] = handle
        try:
            yield resource
        finally:
            self.opening.pop(task_id, None)
            handle.closes += 1
            self.changed.notify()
            if outcome == "slow_close":
                await self.hang()

    async def on_connect(self, resource: Resource) -> None:
        outcome = self.hooks.popleft() if self.hooks else "ok"
        self.check("on_connect")
        await anyio.lowlevel.checkpoint()
        if outcome == "fail":
            raise ConnectionAbortedError("the test's on_connect failed (transient)")
        if outcome == "hang":
            await self.hang()
        handle = self.opening[anyio.get_current_task().id]
        assert handle.resource is resource
        handle.ready = True
        self.changed.notify()


class GenericMachine(Machine[Resource]):
    def __init__(
        self, pool: WebSocketPool[Resource], tg: anyio.abc.TaskGroup, world: World
    ) -> None:
        super().__init__(pool, tg, world.changed)
        self.world = world
        world.check = self.note_capacity
        self.shared_seen = False
        self.over_seen = False

    def granted(self, lease: Lease[Resource]) -> None:
        super().granted(lease)
        self.check_exclusive(f"lease {lease.number} granted")

    def check_exclusive(self, where: str) -> None:
        """Guarantee 2, per connection: no object is held by more leases than it has
        open connections (handles) behind it."""
        if self.pool.is_closed:
            return
        holders: dict[int, list[int]] = {}
        for lease in self.leases:
            if lease.holding:
                assert lease.got is not None
                holders.setdefault(id(lease.got), []).append(lease.number)
        self.shared_seen |= any(len(numbers) > 1 for numbers in holders.values())
        for handle in self.world.handles:
            if handle.ready and not handle.closes:
                key = id(handle.resource)
                if holders.get(key):
                    holders[key].pop()
        over = {key: numbers for key, numbers in holders.items() if numbers}
        if over:
            self.violate(f"{where}: leases {over} hold an object with no connection of its own")

    def gauges_differ(self, stats: Any, holding: int, waiting: int) -> str | None:
        problem = super().gauges_differ(stats, holding, waiting)
        if problem is not None:
            return problem
        handles = self.world.handles
        ready = sum(h.ready for h in handles)
        closed = sum(h.ready and h.closes > 0 for h in handles)
        if (stats.opened, stats.closed) != (ready, closed):
            return (
                f"counters opened={stats.opened} closed={stats.closed}, but {ready} "
                f"connections opened and {closed} of them closed"
            )
        acquired = sum(lease.got is not None for lease in self.leases)
        broken = sum(lease.broken and not lease.closed_pool for lease in self.leases)
        if (stats.acquired, stats.discarded) != (acquired, broken):
            return (
                f"counters acquired={stats.acquired} discarded={stats.discarded}, but "
                f"{acquired} leases granted and {broken} ended by an exception"
            )
        return None

    def check_more(self) -> None:
        self.over_seen |= self.live_count() > self.pool.max_connections
        self.check_exclusive("settled")
        assert not self.violations, "\n".join(self.violations)
        if self.pool.is_closed and self.closed_at is not None:
            self.check_all_closed()

    def tell(self) -> None:
        super().tell()
        event("generic: one object lent to two leases at once", self.shared_seen)
        event("generic: over capacity after a shrink", self.over_seen)
        event("generic: nested leases", min(self.nested, 3))

    def check_all_closed(self) -> None:
        twice = [h.number for h in self.world.handles if h.closes != 1]
        assert not twice, f"connections {twice} were not closed exactly once"


def operations(
    table: dict[str, tuple[int, st.SearchStrategy[Any]]], min_size: int, max_size: int
) -> Any:
    """Lists of ``(operation, argument)``, each operation drawn as often as its weight."""
    names = [name for name, (weight, _) in table.items() for _ in range(weight)]
    return st.lists(
        st.sampled_from(names).flatmap(lambda name: st.tuples(st.just(name), table[name][1])),
        min_size=min_size,
        max_size=max_size,
    )


#: which task (or lease) an operation acts on, among the live ones
WHO = st.integers(0, 7)
NOTHING = st.just(0)

generic_ops = operations(
    {
        "borrow": (5, NOTHING),
        "new": (1, NOTHING),
        "manual": (1, NOTHING),
        "release": (4, WHO),
        "discard": (1, WHO),
        "cancel": (1, WHO),
        "cancel_waiter": (1, WHO),
        "nest": (1, WHO),
        "nest_manual": (1, WHO),
        "resize": (2, st.integers(1, 4)),
    },
    min_size=6,
    max_size=30,
)

attempt_outcomes = st.lists(
    st.sampled_from(["ok", "ok", "fail", "refuse", "hang", "same", "same", "same", "slow_close"]),
    max_size=16,
)
hook_outcomes = st.lists(st.sampled_from(["ok", "ok", "fail", "hang"]), max_size=8)

GENERIC_CLOSE_TIMEOUT = 0.05


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    capacity=st.sampled_from([1, 2, 2, 3, 4]),
    min_connections=st.integers(0, 1),
    acquire_timeout=st.sampled_from([None, None, 0, 0.5]),
    connect_attempts=st.integers(1, 3),
    retry_backoff=st.sampled_from([0.0, 0.01]),
    connect_timeout=st.sampled_from([0.05, 0.1, 0.2]),
    attempts=attempt_outcomes,
    hooks=hook_outcomes,
    share=st.booleans(),
    steps=generic_ops,
    close_at=st.none() | st.sampled_from(range(41)),
)
async def test_generic_pool_keeps_every_invariant(
    capacity: int,
    min_connections: int,
    acquire_timeout: float | None,
    connect_attempts: int,
    retry_backoff: float,
    connect_timeout: float,
    attempts: list[str],
    hooks: list[str],
    share: bool,
    steps: list[tuple[str, int]],
    close_at: int | None,
) -> None:
    world = World(attempts, hooks, Notifier(), share=share)
    pool = open_pool(
        connect=world.connect,
        on_connect=world.on_connect,
        max_connections=capacity,
        min_connections=min_connections,
        acquire_timeout=acquire_timeout,
        connect_attempts=connect_attempts,
        retry_backoff=retry_backoff,
        retry_backoff_max=0.02,
        connect_timeout=connect_timeout,
        close_timeout=GENERIC_CLOSE_TIMEOUT,
    )
    async with pool, anyio.create_task_group() as tg:
        m = GenericMachine(pool, tg, world)
        await m.settle()
        for index, (op, arg) in enumerate(steps):
            if index == close_at:
                await m.close_pool(GENERIC_CLOSE_TIMEOUT)
                await m.settle()
            if op == "borrow":
                m.borrow()
            elif op == "new":
                m.borrow("new")
            elif op == "manual":
                m.borrow("manual")
            elif op in ("release", "discard"):
                m.op_release(arg, op)
            elif op == "nest":
                m.op_nest(arg, "connection")
            elif op == "nest_manual":
                m.op_nest(arg, "manual")
            elif op == "cancel":
                m.op_cancel(arg)
            elif op == "cancel_waiter":
                lease = m.innermost(arg, holding=False)
                if lease is not None:
                    lease.task.scope.cancel()
            elif op == "resize":
                m.resize(arg)
            await m.settle()
        if close_at is not None and close_at >= len(steps):
            await m.close_pool(GENERIC_CLOSE_TIMEOUT)
        await m.give_everything_back()
        if not pool.is_closed:
            stats = pool.stats
            assert (stats.in_use, stats.waiting) == (0, 0), stats
        leaving = anyio.current_time()
    left_in = anyio.current_time() - leaving
    assert left_in <= GENERIC_CLOSE_TIMEOUT + SLACK, f"leaving the pool took {left_in:.3f} s"
    m.check_all_closed()
    assert world.hanging == 0, "a connection attempt or on_connect outlived the pool"
    stats = pool.stats
    assert (stats.connecting, stats.idle, stats.in_use, stats.closing) == (0, 0, 0, 0), stats
    assert stats.opened == stats.closed == sum(h.ready for h in world.handles), stats
    m.tell()


# == 2. the real stack: httpx-ws sessions against the test server on 127.0.0.1 ==================

#: real seconds a borrower's exchange may take (its echo, or the error of a closed connection)
IO_LIMIT = 2.0
WS_CLOSE_TIMEOUT = 0.3
#: longer than the slack allowed for PoolClosed: a waiter that waits out a ping is caught
WS_CONNECT_TIMEOUT = 0.4
#: errors of a borrower's I/O on a connection that the server closed or dropped
IO_ERRORS = (HTTPXWSException, OSError, anyio.BrokenResourceError, anyio.ClosedResourceError)


class WsMachine(Machine[AsyncWebSocketSession]):
    """Borrowers that tag every message with their lease and check every message they read.

    Each exchange sends ``L<lease>:<k>`` and reads until the echo of it comes
    back. Anything else read on the way is judged: another lease's tag, or
    ``on_connect``'s ``login``, was sent before this lease began (guarantee
    7); a server push may be read only if it was not yet sent (nor drained)
    when the lease asked for its connection, nor before the connection's
    previous lease ended.
    """

    def __init__(
        self,
        pool: WebSocketPool[AsyncWebSocketSession],
        tg: anyio.abc.TaskGroup,
        server: WSServer,
        changed: Notifier,
        drained: dict[str, int],
    ) -> None:
        super().__init__(pool, tg, changed)
        self.server = server
        self.drained = drained
        self.pushes = 0
        self.faults = 0
        #: pushes done when the last lease of each session ended (by id; sessions kept alive)
        self.session_pushes: dict[int, int] = {}
        self.sessions: list[AsyncWebSocketSession] = []
        self.pushes_read = 0

    def on_call(self, lease: Lease[AsyncWebSocketSession]) -> None:
        lease.pushes_at_call = self.pushes
        lease.faults_at_call = self.faults

    def on_end(self, lease: Lease[AsyncWebSocketSession]) -> None:
        if lease.got is not None:
            self.session_pushes[id(lease.got)] = self.pushes

    def granted(self, lease: Lease[AsyncWebSocketSession]) -> None:
        super().granted(lease)
        ws = lease.got
        assert ws is not None
        others = [
            other.number
            for other in self.leases
            if other.holding and other.got is ws and other is not lease
        ]
        if others:
            self.violate(f"lease {lease.number} was lent the session that leases {others} hold")
        if id(ws) not in self.session_pushes:
            self.sessions.append(ws)
            self.session_pushes[id(ws)] = 0
        lease.forbidden_push = max(lease.pushes_at_call, self.session_pushes[id(ws)])

    async def on_granted(self, lease: Lease[AsyncWebSocketSession]) -> None:
        await self.exchange(lease)

    async def on_command(self, lease: Lease[AsyncWebSocketSession], command: str) -> None:
        assert command == "exchange", command
        await self.exchange(lease)

    async def on_release(self, lease: Lease[AsyncWebSocketSession], command: str) -> None:
        if command == "release_unread":
            # The echo comes back after the release: the next borrower must never read it.
            await self.io(lease, self.send(lease))

    async def send(self, lease: Lease[AsyncWebSocketSession]) -> str:
        ws = lease.got
        assert ws is not None
        tag = f"L{lease.number}:{lease.exchanges}"
        lease.exchanges += 1
        await ws.send_text(tag)
        return tag

    async def exchange(self, lease: Lease[AsyncWebSocketSession]) -> None:
        async def echo() -> None:
            ws = lease.got
            assert ws is not None
            tag = await self.send(lease)
            while (text := await ws.receive_text()) != tag:
                self.judge(lease, text)

        await self.io(lease, echo())

    async def io(self, lease: Lease[AsyncWebSocketSession], work: Any) -> None:
        """Run a borrower's I/O, bounded; a failure closes its connection (Discard)."""
        try:
            with anyio.fail_after(IO_LIMIT):
                await work
        except TimeoutError:
            self.violate(f"lease {lease.number} hung for {IO_LIMIT} s in its exchange")
            raise Discard from None
        except IO_ERRORS as exc:
            if self.faults == lease.faults_at_call and not self.pool.is_closed:
                self.violate(
                    f"lease {lease.number} was lent a broken connection ({exc!r}); the server "
                    "closed none since it asked"
                )
            raise Discard from None

    def judge(self, lease: Lease[AsyncWebSocketSession], text: str) -> None:
        """A message that is not the echo this lease waits for: may it read it?"""
        if text.startswith("push:"):
            number = int(text.removeprefix("push:"))
            if number <= lease.forbidden_push:
                self.violate(
                    f"lease {lease.number} read {text!r}, sent before its lease began "
                    f"(pushes up to {lease.forbidden_push} were)"
                )
            self.pushes_read += 1
        else:
            self.violate(f"lease {lease.number} read {text!r}, sent before its lease began")

    async def push(self) -> None:
        """A server push to every open connection; wait until the idle ones drained it."""
        text = f"push:{self.pushes + 1}"
        stats = self.pool.stats
        expected = stats.idle + stats.draining
        await self.server.push(text)
        self.pushes += 1
        # What is still in flight to an idle connection is no borrower's either,
        # but a borrower taking it now could not tell it from a later push.
        with anyio.move_on_after(0.5):
            while self.drained.get(text, 0) < expected:
                await self.changed.event.wait()

    async def close_all(self, code: int) -> None:
        self.faults += 1
        await self.server.close_all(code)

    async def abort_all(self) -> None:
        self.faults += 1
        await self.server.abort_all()

    def tell(self) -> None:
        """What this example exercised, for ``--hypothesis-show-statistics``."""
        super().tell()
        event("ws: pushes read by a borrower", min(self.pushes_read, 3))
        event(
            "ws: pushes drained",
            min(sum(n for t, n in self.drained.items() if t.startswith("push")), 3),
        )
        event("ws: leases broken by the server", min(sum(lease.broken for lease in self.leases), 3))
        event("ws: connections opened", min(self.pool.stats.opened, 5))
        event("ws: drained messages", min(self.pool.stats.drained_messages, 5))

    def queue_is_visible(self) -> bool:
        waiting = sum(lease.waiting for lease in self.leases)
        return not self.pool.is_closed and self.pool.stats.waiting == waiting

    def gauges_differ(self, stats: Any, holding: int, waiting: int) -> str | None:
        # A borrower whose check_on_acquire ping is in flight holds a lent
        # connection but is not in the queue.
        if stats.in_use < holding or stats.in_use + stats.waiting != holding + waiting:
            return (
                f"gauges in_use={stats.in_use} waiting={stats.waiting}, but borrowers "
                f"hold {holding} and wait for {waiting} (some maybe in a ping)"
            )
        return None


ws_ops = operations(
    {
        "borrow": (5, NOTHING),
        "release": (2, WHO),
        "release_unread": (2, WHO),
        "exchange": (2, WHO),
        "cancel": (1, WHO),
        "push": (3, NOTHING),
        "close": (1, st.sampled_from([1000, 1001, 1008, 1011, 1012, 4000])),
        "abort": (1, NOTHING),
        "pings_off": (1, NOTHING),
        "pings_on": (1, NOTHING),
        "reject": (1, st.sampled_from([None, 503, 403])),
    },
    min_size=5,
    max_size=16,
)


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    capacity=st.integers(1, 3),
    login=st.booleans(),
    steps=ws_ops,
    close_at=st.none() | st.sampled_from(range(21)),
)
async def test_websocket_pool_keeps_every_invariant(
    capacity: int, login: bool, steps: list[tuple[str, Any]], close_at: int | None
) -> None:
    drained: dict[str, int] = {}
    changed = Notifier()

    def on_drained(event: object) -> None:
        if isinstance(event, TextMessage):
            drained[event.data] = drained.get(event.data, 0) + 1
        changed.notify()

    async def send_login(ws: AsyncWebSocketSession) -> None:
        await ws.send_text("login")  # its echo is left unread: the pool must drain it

    async with serve_ws() as server:
        server.close_timeout = WS_CLOSE_TIMEOUT
        pool = open_pool(
            server.url,
            max_connections=capacity,
            acquire_timeout=2.0,
            connect_timeout=WS_CONNECT_TIMEOUT,
            connect_attempts=2,
            retry_backoff=0.02,
            retry_backoff_max=0.1,
            close_timeout=WS_CLOSE_TIMEOUT,
            check_on_acquire=True,
            drain_on_release=True,
            drain_quiet_period=0.05,
            drain_timeout=1.0,
            on_drained=on_drained,
            on_connect=send_login if login else None,
        )
        async with pool, anyio.create_task_group() as tg:
            m = WsMachine(pool, tg, server, changed, drained)
            for index, (op, arg) in enumerate(steps):
                if index == close_at:
                    await m.close_pool(WS_CLOSE_TIMEOUT)
                    await m.settle()
                if op == "borrow":
                    m.borrow()
                elif op in ("release", "release_unread", "exchange"):
                    m.op_release(arg, op)
                elif op == "cancel":
                    m.op_cancel(arg)
                elif op == "push":
                    await m.push()
                elif op == "close":
                    await m.close_all(arg)
                elif op == "abort":
                    await m.abort_all()
                elif op == "pings_off":
                    server.answer_pings = False
                elif op == "pings_on":
                    server.answer_pings = True
                elif op == "reject":
                    server.reject_status = arg
                await m.settle()
            if close_at is not None and close_at >= len(steps):
                await m.close_pool(WS_CLOSE_TIMEOUT)
            await m.give_everything_back()
            if not pool.is_closed:
                stats = pool.stats
                assert (stats.in_use, stats.waiting) == (0, 0), stats
            leaving = anyio.current_time()
        left_in = anyio.current_time() - leaving
        assert left_in <= WS_CLOSE_TIMEOUT + SLACK, f"leaving the pool took {left_in:.3f} s"
        stats = pool.stats
        assert (stats.connecting, stats.idle, stats.in_use, stats.closing) == (0, 0, 0, 0), stats
        assert stats.opened == stats.closed, stats
        # The server saw every connection closed (guarantee 8).
        await server.wait_until(lambda: server.open_connections == 0, timeout=2.0)
        assert not m.violations, "\n".join(m.violations)
    m.tell()
