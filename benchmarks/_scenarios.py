"""The scenarios of issue 6, each measured against its baselines in the same process.

A worker process (``_worker.py``) runs one scenario on one backend for one
repetition. Every contender of the scenario is set up in that process, then
their timed segments run in alternation (see :func:`interleave`), so that a
ratio between two contenders is taken from figures sampled over the same
stretch of time on the same loop. Each function here records its figures in
``ctx.rec`` and never judges them: targets are checked by the report, never
asserted.

The baselines are small hand-written equivalents of a technique, named for
what they are (no other project's code is copied):

* *floor*: an ``anyio.CapacityLimiter`` acquire/release around a deque
  pop/append, the least that a bounded pool must do;
* *unbounded deque*: a deque of idle items with no capacity bound, ``get`` pops
  one (or makes one) and ``put`` appends it (livekit-agents' technique);
* *queue of N sessions*: N connections opened up front and handed out through
  an anyio memory object stream, FIFO, with no health checks: the ceiling of
  what any pool of that client can do;
* *per request*: a new connection for every round trip.
"""

from __future__ import annotations

import gc
import time
import tracemalloc
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import anyio
import anyio.lowlevel
import httpx
from _common import PAYLOAD, Backend, Recorder, Sizes, percentile, rotate
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from httpx_ws import AsyncWebSocketSession, aconnect_ws

from anyio_wspool import WebSocketPool, open_pool

T = TypeVar("T")

#: the longest any single contender may run, so that a deadlock ends the worker
CONTENDER_TIME_LIMIT = 300.0


@dataclass(frozen=True, slots=True)
class Context:
    """What a scenario needs: where the server is, how much work, where to record."""

    backend: Backend
    port: int
    rep: int
    sizes: Sizes
    rec: Recorder

    @property
    def uri(self) -> str:
        return f"ws://127.0.0.1:{self.port}/echo"

    @property
    def count_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/count"


# -- the hand-written baselines ------------------------------------------------------------


class ItemQueue(Generic[T]):
    """A FIFO queue of ready items on an anyio memory object stream (baseline "queue of N").

    ``get`` waits for an item; waiting callers are served first come, first
    served. No health check, no capacity logic beyond the number of items.
    """

    __slots__ = ("_receive", "_send")

    def __init__(self, capacity: int) -> None:
        self._send: MemoryObjectSendStream[T]
        self._receive: MemoryObjectReceiveStream[T]
        self._send, self._receive = anyio.create_memory_object_stream[T](capacity)

    async def get(self) -> T:
        return await self._receive.receive()

    def put(self, item: T) -> None:
        self._send.send_nowait(item)

    @asynccontextmanager
    async def lease(self) -> AsyncIterator[T]:
        item = await self.get()
        try:
            yield item
        finally:
            self.put(item)


class UnboundedDeque(Generic[T]):
    """A deque of idle items with no capacity bound (livekit-agents' technique).

    ``get`` pops the most recently returned item or makes a new one; ``put``
    appends. Nothing limits how many items exist at once.
    """

    __slots__ = ("_idle", "_make")

    def __init__(self, make: Callable[[], Awaitable[T]]) -> None:
        self._idle: deque[T] = deque()
        self._make = make

    async def get(self) -> T:
        if self._idle:
            return self._idle.pop()
        return await self._make()

    async def put(self, item: T) -> None:
        self._idle.append(item)

    @asynccontextmanager
    async def lease(self) -> AsyncIterator[T]:
        item = await self.get()
        try:
            yield item
        finally:
            await self.put(item)


@asynccontextmanager
async def fake_resource() -> AsyncIterator[object]:
    """The generic connector's test double: opening and closing cost nothing."""
    yield object()


# -- helpers ------------------------------------------------------------------------------

#: one segment of a contender's work (a short one when warming up); returns its seconds
Segment = Callable[[bool], Awaitable[float]]
#: opens what a contender needs (a pool, a queue of connections) and yields its segment
ContenderFactory = Callable[[], AbstractAsyncContextManager[Segment]]


def new_client() -> httpx.AsyncClient:
    """An httpx client whose own limit never gets in the way of the contenders."""
    return httpx.AsyncClient(
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=0),
        timeout=httpx.Timeout(30.0),
    )


async def server_handshakes(ctx: Context) -> int:
    """How many WebSocket handshakes the echo server has accepted so far."""
    async with httpx.AsyncClient(timeout=10.0) as client:
        response = await client.get(ctx.count_url)
        response.raise_for_status()
        return int(response.text)


def connect_ws(
    uri: str,
    client: httpx.AsyncClient,
    session_class: type[AsyncWebSocketSession] = AsyncWebSocketSession,
) -> AbstractAsyncContextManager[AsyncWebSocketSession]:
    """``httpx_ws.aconnect_ws``, typed."""
    return aconnect_ws(uri, client, session_class=session_class)


async def echo(ws: AsyncWebSocketSession) -> None:
    await ws.send_bytes(PAYLOAD)
    await ws.receive_bytes()


async def warm_pool(pool: WebSocketPool[T], connections: int) -> None:
    """Open ``connections`` connections and leave them idle, before the clock starts."""
    held = [await pool.acquire() for _ in range(connections)]
    for item in held:
        await pool.release(item)


async def wait_until(condition: Callable[[], bool], *, rounds: int = 100_000) -> None:
    """Let the other tasks run until ``condition`` holds (bounded in rounds and time)."""
    with anyio.fail_after(60):
        for _ in range(rounds):
            if condition():
                return
            await anyio.lowlevel.checkpoint()
    raise RuntimeError(f"condition not reached after {rounds} scheduling rounds")


def settle_garbage() -> None:
    gc.collect()


async def timed_tasks(count: int, task: Callable[[], Coroutine[Any, Any, None]]) -> float:
    """Run ``count`` copies of ``task`` at once; return the seconds until all are done."""
    settle_garbage()
    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(count):
            tg.start_soon(task)
    return time.perf_counter() - start


def borrowers_segment(tasks: int, rounds: int, one_round: Callable[[], Awaitable[None]]) -> Segment:
    """A segment in which ``tasks`` tasks each call ``one_round`` ``rounds`` times."""

    async def segment(warmup: bool) -> float:
        count = max(1, rounds // 5) if warmup else rounds

        async def borrower() -> None:
            for _ in range(count):
                await one_round()

        return await timed_tasks(tasks, borrower)

    return segment


async def interleave(
    contenders: dict[str, ContenderFactory], segments: int, rep: int
) -> dict[str, float]:
    """Open every contender, then run their segments in alternation; seconds per contender.

    The machine is shared and noisy: a contender measured in one block and its
    baseline in the next can see different weather. Here each contender runs
    ``segments`` times, alternating with the others (in an order that rotates
    with each segment and each repetition), after one untimed warm-up segment
    each, so that every contender samples the same stretch of time.
    """
    order = rotate(list(contenders), rep)
    totals = dict.fromkeys(order, 0.0)
    with anyio.fail_after(CONTENDER_TIME_LIMIT * len(order)):
        async with AsyncExitStack() as stack:
            runs: dict[str, Segment] = {}
            for name in order:
                runs[name] = await stack.enter_async_context(contenders[name]())
            for name in order:
                await runs[name](True)
            for index in range(segments):
                for name in rotate(order, index):
                    settle_garbage()
                    totals[name] += await runs[name](False)
    return totals


# -- 1. overhead ------------------------------------------------------------------------------

OVERHEAD_FLOOR = "floor: CapacityLimiter + deque"
OVERHEAD_UNBOUNDED = "unbounded deque get/put (livekit's technique)"
OVERHEAD_UNBOUNDED_CM = "unbounded deque, @asynccontextmanager lease"
OVERHEAD_POOL = "anyio_wspool pool.connection(), httpx-ws"
OVERHEAD_POOL_ACQUIRE = "anyio_wspool acquire()/release(), httpx-ws"
OVERHEAD_POOL_GENERIC = "anyio_wspool pool.connection(), generic fake resource"


def cycles_segment(cycles: int, loop: Callable[[int], Awaitable[None]]) -> Segment:
    """A segment that runs ``loop(cycles)`` in this task (a quarter when warming up)."""

    async def segment(warmup: bool) -> float:
        count = max(1, cycles // 4) if warmup else cycles
        start = time.perf_counter()
        await loop(count)
        return time.perf_counter() - start

    return segment


def pooled_echo_segment(pool: WebSocketPool[Any], tasks: int, rounds: int) -> Segment:
    """``tasks`` x ``rounds`` echoes of PAYLOAD, each in its own lease of a websockets client."""

    async def one_round() -> None:
        async with pool.connection() as ws:
            await ws.send(PAYLOAD)
            await ws.recv()

    return borrowers_segment(tasks, rounds, one_round)


def floor_segment(cycles: int, capacity: int) -> Segment:
    """The overhead floor: a bare ``CapacityLimiter`` acquire/release around a deque pop/append."""
    limiter = anyio.CapacityLimiter(capacity)
    idle: deque[object] = deque([object()])

    async def loop(count: int) -> None:
        for _ in range(count):
            async with limiter:
                idle.append(idle.pop())

    return cycles_segment(cycles, loop)


async def _make_object() -> object:
    return object()


async def scenario_overhead(ctx: Context) -> None:
    """Acquire + release of an idle connection, N times, one task (µs per cycle)."""
    sizes = ctx.sizes
    segments = sizes.segments
    cycles = sizes.overhead_cycles // segments

    @asynccontextmanager
    async def floor() -> AsyncIterator[Segment]:
        yield floor_segment(cycles, 16)

    @asynccontextmanager
    async def unbounded() -> AsyncIterator[Segment]:
        pool = UnboundedDeque(_make_object)

        async def loop(count: int) -> None:
            for _ in range(count):
                item = await pool.get()
                await pool.put(item)

        yield cycles_segment(cycles, loop)

    @asynccontextmanager
    async def unbounded_lease() -> AsyncIterator[Segment]:
        pool = UnboundedDeque(_make_object)

        async def loop(count: int) -> None:
            for _ in range(count):
                async with pool.lease():
                    pass

        yield cycles_segment(cycles, loop)

    def lease_loop(pool: WebSocketPool[Any]) -> Segment:
        async def loop(count: int) -> None:
            for _ in range(count):
                async with pool.connection():
                    pass

        return cycles_segment(cycles, loop)

    @asynccontextmanager
    async def pool_httpx_ws() -> AsyncIterator[Segment]:
        async with new_client() as client, open_pool(ctx.uri, client=client) as pool:
            await warm_pool(pool, 1)
            yield lease_loop(pool)

    @asynccontextmanager
    async def pool_acquire_release() -> AsyncIterator[Segment]:
        async with new_client() as client, open_pool(ctx.uri, client=client) as pool:
            await warm_pool(pool, 1)

            async def loop(count: int) -> None:
                for _ in range(count):
                    ws = await pool.acquire()
                    await pool.release(ws)

            yield cycles_segment(cycles, loop)

    @asynccontextmanager
    async def pool_generic() -> AsyncIterator[Segment]:
        async with open_pool(connect=fake_resource) as pool:
            await warm_pool(pool, 1)
            yield lease_loop(pool)

    contenders: dict[str, ContenderFactory] = {
        OVERHEAD_FLOOR: floor,
        OVERHEAD_UNBOUNDED: unbounded,
        OVERHEAD_UNBOUNDED_CM: unbounded_lease,
        OVERHEAD_POOL: pool_httpx_ws,
        OVERHEAD_POOL_ACQUIRE: pool_acquire_release,
        OVERHEAD_POOL_GENERIC: pool_generic,
    }
    totals = await interleave(contenders, segments, ctx.rep)
    for name, seconds in totals.items():
        ctx.rec.add(name, "us_per_cycle", seconds / (cycles * segments) * 1e6)


# -- 2. pooled echo (httpx-ws) ------------------------------------------------------------------

ECHO_POOL = "anyio_wspool, httpx-ws"
ECHO_QUEUE = "queue of 16 httpx-ws sessions"
ECHO_HARDENED = "queue of 16 hardened sessions (the pool's session class, no pool)"
ECHO_PER_REQUEST = "aconnect_ws per request"


async def scenario_echo(ctx: Context) -> None:
    """64 tasks, 16 connections, 500 round trips each, one lease per round trip."""
    sizes = ctx.sizes
    tasks, connections, segments = sizes.echo_tasks, sizes.echo_connections, sizes.segments
    rounds = max(1, sizes.echo_round_trips // segments)
    hardened: type[AsyncWebSocketSession] | None
    try:
        # A private name: the diagnostic row is skipped if it moves.
        from anyio_wspool._session import hardened_session_class
    except ImportError:
        hardened = None
        ctx.rec.note("diagnostic", "the pool's session class could not be imported")
    else:
        hardened = hardened_session_class(AsyncWebSocketSession)
    handshakes: dict[str, int] = {}

    def counted(name: str, factory: ContenderFactory) -> ContenderFactory:
        """Count the server's handshakes while ``factory`` sets its contender up."""

        @asynccontextmanager
        async def wrapper() -> AsyncIterator[Segment]:
            before = await server_handshakes(ctx)
            async with factory() as segment:
                handshakes[name] = await server_handshakes(ctx) - before
                yield segment

        return wrapper

    async with new_client() as client:

        @asynccontextmanager
        async def pooled() -> AsyncIterator[Segment]:
            async with open_pool(ctx.uri, client=client, max_connections=connections) as pool:
                await warm_pool(pool, connections)

                async def one_round() -> None:
                    async with pool.connection() as ws:
                        await echo(ws)

                yield borrowers_segment(tasks, rounds, one_round)
                # Connections the pool opened after its warm-up count as its own.
                extra.append(pool.stats.opened - connections)

        def queued(session_class: type[AsyncWebSocketSession]) -> ContenderFactory:
            @asynccontextmanager
            async def factory() -> AsyncIterator[Segment]:
                queue: ItemQueue[AsyncWebSocketSession] = ItemQueue(connections)
                async with AsyncExitStack() as stack:
                    for _ in range(connections):
                        queue.put(
                            await stack.enter_async_context(
                                connect_ws(ctx.uri, client, session_class)
                            )
                        )

                    async def one_round() -> None:
                        ws = await queue.get()
                        await echo(ws)
                        queue.put(ws)

                    yield borrowers_segment(tasks, rounds, one_round)

            return factory

        extra: list[int] = []
        contenders: dict[str, ContenderFactory] = {
            ECHO_POOL: counted(ECHO_POOL, pooled),
            ECHO_QUEUE: counted(ECHO_QUEUE, queued(AsyncWebSocketSession)),
        }
        if hardened is not None:
            contenders[ECHO_HARDENED] = counted(ECHO_HARDENED, queued(hardened))
        totals = await interleave(contenders, segments, ctx.rep)
        handshakes[ECHO_POOL] += sum(extra)
        for name, seconds in totals.items():
            ctx.rec.add(name, "round_trips_per_s", tasks * rounds * segments / seconds)
            ctx.rec.add(name, "server_handshakes", handshakes[name])

        # Connecting per request is measured on its own: its handshakes would
        # otherwise be mixed with the others'.
        per_request_rounds = sizes.echo_per_request_round_trips

        async def per_request_round() -> None:
            async with connect_ws(ctx.uri, client) as ws:
                await echo(ws)

        segment = borrowers_segment(tasks, per_request_rounds, per_request_round)
        await segment(True)
        before = await server_handshakes(ctx)
        seconds = await segment(False)
        after = await server_handshakes(ctx)
        ctx.rec.add(ECHO_PER_REQUEST, "round_trips_per_s", tasks * per_request_rounds / seconds)
        ctx.rec.add(ECHO_PER_REQUEST, "server_handshakes", after - before)


# -- 3. pooled echo through the generic connector (websockets) ----------------------------------

CONNECTOR_POOL = "anyio_wspool connect=websockets"
CONNECTOR_QUEUE = "queue of 16 websockets connections"


def websockets_connector(ctx: Context) -> Callable[[], AbstractAsyncContextManager[Any]]:
    """The ``websockets`` library's client for this backend (its asyncio or its trio one)."""
    connect: Callable[..., AbstractAsyncContextManager[Any]]
    if ctx.backend == "trio":
        from websockets.trio.client import connect
    else:
        from websockets.asyncio.client import connect
    uri = ctx.uri

    def open_connection() -> AbstractAsyncContextManager[Any]:
        return connect(uri, compression=None)

    return open_connection


async def scenario_connector(ctx: Context) -> None:
    """The echo workload with ``open_pool(connect=...)`` around the websockets client."""
    sizes = ctx.sizes
    tasks, connections, segments = sizes.echo_tasks, sizes.echo_connections, sizes.segments
    rounds = max(1, sizes.connector_round_trips // segments)
    connector = websockets_connector(ctx)
    ctx.rec.note(
        "client",
        "websockets.trio.client" if ctx.backend == "trio" else "websockets.asyncio.client",
    )

    @asynccontextmanager
    async def pooled() -> AsyncIterator[Segment]:
        async with open_pool(connect=connector, max_connections=connections) as pool:
            await warm_pool(pool, connections)
            yield pooled_echo_segment(pool, tasks, rounds)

    @asynccontextmanager
    async def queued() -> AsyncIterator[Segment]:
        queue: ItemQueue[Any] = ItemQueue(connections)
        async with AsyncExitStack() as stack:
            for _ in range(connections):
                queue.put(await stack.enter_async_context(connector()))

            async def one_round() -> None:
                ws = await queue.get()
                await ws.send(PAYLOAD)
                await ws.recv()
                queue.put(ws)

            yield borrowers_segment(tasks, rounds, one_round)

    contenders: dict[str, ContenderFactory] = {CONNECTOR_POOL: pooled, CONNECTOR_QUEUE: queued}
    totals = await interleave(contenders, segments, ctx.rep)
    for name, seconds in totals.items():
        ctx.rec.add(name, "round_trips_per_s", tasks * rounds * segments / seconds)


# -- 4. fairness under contention ------------------------------------------------------------

FAIRNESS_POOL = "anyio_wspool, httpx-ws"
FAIRNESS_QUEUE = "queue of 10 httpx-ws sessions"


@dataclass(slots=True)
class _Fairness:
    """What the borrowers of one contender saw, over all its timed segments."""

    waits: list[float] = field(default_factory=list)
    out_of_order: int = 0
    failures: int = 0
    segments: int = 0


def contention_segment(
    tasks: int,
    lease: Callable[[], AbstractAsyncContextManager[AsyncWebSocketSession]],
    seen: _Fairness,
) -> Segment:
    """``tasks`` borrowers at once, one round trip each; their waits and order go to ``seen``."""

    async def segment(warmup: bool) -> float:
        count = max(1, tasks // 10) if warmup else tasks
        arrivals = grants = 0
        waits: list[float] = []
        out_of_order = failures = 0

        async def borrower() -> None:
            nonlocal arrivals, grants, out_of_order, failures
            arrival = arrivals
            arrivals += 1
            start = time.perf_counter()
            try:
                async with lease() as ws:
                    waits.append(time.perf_counter() - start)
                    if grants != arrival:
                        out_of_order += 1
                    grants += 1
                    await echo(ws)
            except Exception:
                failures += 1

        seconds = await timed_tasks(count, borrower)
        if not warmup:
            seen.waits += waits
            seen.out_of_order += out_of_order
            seen.failures += failures
            seen.segments += 1
        return seconds

    return segment


async def scenario_fairness(ctx: Context) -> None:
    """2,000 tasks, 10 connections, one round trip each: total time, waits, FIFO order."""
    sizes = ctx.sizes
    tasks, connections = sizes.fairness_tasks, sizes.fairness_connections
    seen = {FAIRNESS_POOL: _Fairness(), FAIRNESS_QUEUE: _Fairness()}

    async with new_client() as client:

        @asynccontextmanager
        async def pooled() -> AsyncIterator[Segment]:
            async with open_pool(ctx.uri, client=client, max_connections=connections) as pool:
                await warm_pool(pool, connections)
                yield contention_segment(tasks, pool.connection, seen[FAIRNESS_POOL])

        @asynccontextmanager
        async def queued() -> AsyncIterator[Segment]:
            queue: ItemQueue[AsyncWebSocketSession] = ItemQueue(connections)
            async with AsyncExitStack() as stack:
                for _ in range(connections):
                    queue.put(await stack.enter_async_context(connect_ws(ctx.uri, client)))
                yield contention_segment(tasks, queue.lease, seen[FAIRNESS_QUEUE])

        contenders: dict[str, ContenderFactory] = {FAIRNESS_POOL: pooled, FAIRNESS_QUEUE: queued}
        totals = await interleave(contenders, sizes.segments, ctx.rep)
    rec = ctx.rec
    for name, seconds in totals.items():
        state = seen[name]
        rec.add(name, "total_s", seconds / state.segments)
        rec.add(name, "wait_p50_ms", percentile(state.waits, 0.50) * 1e3)
        rec.add(name, "wait_p99_ms", percentile(state.waits, 0.99) * 1e3)
        rec.add(name, "wait_max_ms", max(state.waits, default=0.0) * 1e3)
        rec.add(name, "failures", state.failures)
        rec.add(name, "out_of_fifo_order", state.out_of_order)


# -- 5. scale ----------------------------------------------------------------------------------

SCALE_POOL = "anyio_wspool, generic fake resource"
SCALE_FLOOR = "floor: CapacityLimiter + deque"


async def _pool_idle_cost(idle: int, cycles: int) -> float:
    async with open_pool(connect=fake_resource, max_connections=idle) as pool:
        await warm_pool(pool, idle)
        for _ in range(min(cycles, 1_000)):
            async with pool.connection():
                pass
        settle_garbage()
        start = time.perf_counter()
        for _ in range(cycles):
            async with pool.connection():
                pass
        return (time.perf_counter() - start) / cycles


async def _floor_idle_cost(idle: int, cycles: int) -> float:
    limiter = anyio.CapacityLimiter(idle)
    items: deque[object] = deque(object() for _ in range(idle))
    for _ in range(min(cycles, 1_000)):
        async with limiter:
            items.append(items.pop())
    settle_garbage()
    start = time.perf_counter()
    for _ in range(cycles):
        async with limiter:
            items.append(items.pop())
    return (time.perf_counter() - start) / cycles


async def _hand_off_cost(
    waiting: int,
    ops: int,
    hold: Callable[[], Awaitable[None]],
    release: Callable[[], Awaitable[None]],
    queued: Callable[[], int],
    lease: Callable[[], AbstractAsyncContextManager[object]],
) -> float:
    """Seconds per lease when ``waiting`` borrowers queue for one resource.

    The main task holds the resource until every borrower is queued, so that
    the clock starts with ``waiting`` waiters; each borrower then takes
    ``ops // waiting`` leases in turn, yielding once inside each, and the clock
    stops at the last give-back (task teardown is not counted).
    """
    per_task = max(1, ops // waiting)
    last = 0.0

    async def borrower() -> None:
        nonlocal last
        for _ in range(per_task):
            async with lease():
                await anyio.lowlevel.checkpoint()
        last = max(last, time.perf_counter())

    await hold()
    with anyio.fail_after(CONTENDER_TIME_LIMIT):
        async with anyio.create_task_group() as tg:
            for _ in range(waiting):
                tg.start_soon(borrower)
            await wait_until(lambda: queued() >= waiting)
            settle_garbage()
            start = time.perf_counter()
            await release()
    return (last - start) / (per_task * waiting)


async def _pool_wait_cost(waiting: int, ops: int) -> float:
    async with open_pool(connect=fake_resource, max_connections=1) as pool:
        await warm_pool(pool, 1)
        held: list[object] = []

        async def hold() -> None:
            held.append(await pool.acquire())

        async def release() -> None:
            await pool.release(held.pop())

        return await _hand_off_cost(
            waiting, ops, hold, release, lambda: pool.stats.waiting, pool.connection
        )


async def _floor_wait_cost(waiting: int, ops: int) -> float:
    limiter = anyio.CapacityLimiter(1)
    items: deque[object] = deque([object()])

    @asynccontextmanager
    async def lease() -> AsyncIterator[object]:
        async with limiter:
            item = items.pop()
            try:
                yield item
            finally:
                items.append(item)

    async def hold() -> None:
        await limiter.acquire()

    async def release() -> None:
        limiter.release()

    return await _hand_off_cost(
        waiting, ops, hold, release, lambda: limiter.statistics().tasks_waiting, lease
    )


#: how the scale metrics name the sizes (so that --quick can use smaller ones)
SCALE_IDLE_RANKS = ("small", "medium", "large")
SCALE_WAITING_RANKS = ("small", "large")


async def scenario_scale(ctx: Context) -> None:
    """Acquire + release cost with 10 … 10,000 idle connections and 10 … 10,000 waiters."""
    sizes = ctx.sizes
    rec = ctx.rec
    costs: dict[tuple[str, str, str], float] = {}
    for name in rotate([SCALE_POOL, SCALE_FLOOR], ctx.rep):
        for rank, idle in zip(SCALE_IDLE_RANKS, sizes.scale_idle, strict=True):
            idle_cost = _pool_idle_cost if name == SCALE_POOL else _floor_idle_cost
            with anyio.fail_after(CONTENDER_TIME_LIMIT):
                costs[name, "idle", rank] = await idle_cost(idle, sizes.scale_cycles)
        for rank, waiting in zip(SCALE_WAITING_RANKS, sizes.scale_waiting, strict=True):
            wait_cost = _pool_wait_cost if name == SCALE_POOL else _floor_wait_cost
            costs[name, "waiting", rank] = await wait_cost(waiting, sizes.scale_wait_ops)
    for (name, kind, rank), seconds in costs.items():
        rec.add(name, f"{kind}_{rank}_us", seconds * 1e6)
    for name in (SCALE_POOL, SCALE_FLOOR):
        for kind in ("idle", "waiting"):
            rec.add(name, f"{kind}_growth", costs[name, kind, "large"] / costs[name, kind, "small"])


# -- 6. memory ---------------------------------------------------------------------------------

MEMORY_BARE = "bare httpx-ws session"
MEMORY_POOLED = "anyio_wspool idle connection, httpx-ws"
MEMORY_OVERHEAD = "anyio_wspool own overhead (pooled - bare)"
MEMORY_GENERIC = "anyio_wspool idle connection, generic fake resource"


async def _traced_bytes_per_item(
    count: int, open_all: Callable[[AsyncExitStack], Awaitable[None]]
) -> float:
    """Bytes traced by tracemalloc per item while ``count`` items are held open."""
    async with AsyncExitStack() as stack:
        settle_garbage()
        before = tracemalloc.get_traced_memory()[0]
        await open_all(stack)
        await anyio.wait_all_tasks_blocked()
        settle_garbage()
        after = tracemalloc.get_traced_memory()[0]
    return (after - before) / count


async def scenario_memory(ctx: Context) -> None:
    """Bytes per idle pooled connection against a bare httpx-ws session (tracemalloc)."""
    count = ctx.sizes.memory_connections

    async with new_client() as client:

        async def bare(stack: AsyncExitStack) -> None:
            for _ in range(count):
                await stack.enter_async_context(connect_ws(ctx.uri, client))

        async def pooled(stack: AsyncExitStack) -> None:
            pool = await stack.enter_async_context(
                open_pool(ctx.uri, client=client, max_connections=count)
            )
            await warm_pool(pool, count)

        async def generic(stack: AsyncExitStack) -> None:
            pool = await stack.enter_async_context(
                open_pool(connect=fake_resource, max_connections=count)
            )
            await warm_pool(pool, count)

        # Load every lazily imported module and cache before measuring (on trio,
        # wait_all_tasks_blocked() imports trio.testing, and with it megabytes).
        for warm in (bare, pooled, generic):
            async with AsyncExitStack() as stack:
                await warm(stack)
                await anyio.wait_all_tasks_blocked()
        tracemalloc.start()
        try:
            figures: dict[str, float] = {}
            for name in rotate([MEMORY_BARE, MEMORY_POOLED, MEMORY_GENERIC], ctx.rep):
                how = {MEMORY_BARE: bare, MEMORY_POOLED: pooled, MEMORY_GENERIC: generic}[name]
                figures[name] = await _traced_bytes_per_item(count, how)
        finally:
            tracemalloc.stop()
    for name, value in figures.items():
        ctx.rec.add(name, "bytes_per_connection", value)
    ctx.rec.add(
        MEMORY_OVERHEAD, "bytes_per_connection", figures[MEMORY_POOLED] - figures[MEMORY_BARE]
    )


# -- throughput against concurrency (the plot) ---------------------------------------------------

THROUGHPUT_POOL = "anyio_wspool, httpx-ws (max_connections=16)"
THROUGHPUT_PER_REQUEST = "aconnect_ws per request"


async def _pool_against_per_request(
    ctx: Context, client: httpx.AsyncClient, tasks: int
) -> dict[str, float]:
    """Round trips/s of the pool and of connect-per-request with ``tasks`` tasks."""
    sizes = ctx.sizes
    segments = sizes.segments
    limit = sizes.throughput_max_connections
    pool_rounds = max(1, sizes.throughput_pool_round_trips // tasks // segments)
    request_rounds = max(1, sizes.throughput_per_request_round_trips // tasks // segments)

    @asynccontextmanager
    async def pooled() -> AsyncIterator[Segment]:
        async with open_pool(ctx.uri, client=client, max_connections=limit) as pool:
            await warm_pool(pool, min(tasks, limit))

            async def one_round() -> None:
                async with pool.connection() as ws:
                    await echo(ws)

            yield borrowers_segment(tasks, pool_rounds, one_round)

    @asynccontextmanager
    async def per_request() -> AsyncIterator[Segment]:
        async def one_round() -> None:
            async with connect_ws(ctx.uri, client) as ws:
                await echo(ws)

        yield borrowers_segment(tasks, request_rounds, one_round)

    contenders: dict[str, ContenderFactory] = {
        THROUGHPUT_POOL: pooled,
        THROUGHPUT_PER_REQUEST: per_request,
    }
    totals = await interleave(contenders, segments, ctx.rep)
    done = {
        THROUGHPUT_POOL: tasks * pool_rounds * segments,
        THROUGHPUT_PER_REQUEST: tasks * request_rounds * segments,
    }
    return {name: done[name] / seconds for name, seconds in totals.items()}


async def scenario_throughput(ctx: Context) -> None:
    """Round trips per second at 1, 4, 16 and 64 tasks: pool against connect-per-request."""
    concurrency = list(ctx.sizes.throughput_concurrency)
    async with new_client() as client:
        for index in rotate([str(i) for i in range(len(concurrency))], ctx.rep):
            tasks = concurrency[int(index)]
            rates = await _pool_against_per_request(ctx, client, tasks)
            for name, rate in rates.items():
                ctx.rec.add(name, f"tasks_{tasks}_round_trips_per_s", rate)


SCENARIO_FUNCTIONS: dict[str, Callable[[Context], Awaitable[None]]] = {
    "overhead": scenario_overhead,
    "echo": scenario_echo,
    "connector": scenario_connector,
    "fairness": scenario_fairness,
    "scale": scenario_scale,
    "memory": scenario_memory,
    "throughput": scenario_throughput,
}
