"""The scenarios of issue 6, each measured against its baselines in the same process.

A worker process (``run.py --worker``) runs scenarios on one backend for one
repetition. Every contender of a scenario is set up in that process, then
their timed segments run in alternation (see :func:`interleave`), so that a
ratio between two contenders is taken from figures sampled over the same
stretch of time on the same loop. A scenario records its figures with
``ctx.add`` and never judges them: its targets, declared with
:func:`scenario`, are checked by the report, never asserted. Its docstring is
its section of ``RESULTS.md``: the first line the title, the rest the text.

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

import asyncio
import gc
import importlib
import importlib.metadata
import inspect
import math
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import deque
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import (
    AbstractAsyncContextManager,
    AsyncExitStack,
    asynccontextmanager,
    contextmanager,
)
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Literal, TypedDict, TypeVar

import anyio
import anyio.lowlevel
import httpx
import httpx2
from httpx_ws import AsyncWebSocketSession, aconnect_ws

from anyio_wspool import RedisCapacity, WebSocketPool, open_pool

if TYPE_CHECKING:
    from tests._wsserver import WSServer

#: the checkout (where tests/ is)
REPO = Path(__file__).resolve().parent.parent

T = TypeVar("T")
ACM = AbstractAsyncContextManager
BACKENDS = ("asyncio", "uvloop", "trio")
#: the payload of every round trip
PAYLOAD = b"x" * 64
#: the longest any single contender may run, so that a deadlock ends the worker
CONTENDER_TIME_LIMIT = 300.0


@dataclass(frozen=True, slots=True)
class Sizes:
    """How much work each scenario does: the issue's figures, or smaller ones for --quick."""

    overhead_cycles: int = 20_000
    #: acquisitions in all, over every task (scenario 8)
    contended_cycles: int = 64 * 500
    echo_tasks: int = 64
    echo_connections: int = 16
    echo_round_trips: int = 500
    #: connecting per request is ~20x slower: fewer requests give the same precision
    echo_per_request_round_trips: int = 25
    #: the websockets client is ~3x faster than httpx-ws: same work, same precision
    connector_round_trips: int = 500
    fairness_tasks: int = 2_000
    fairness_connections: int = 10
    #: small, medium, large
    scale_idle: tuple[int, int, int] = (10, 1_000, 10_000)
    #: small, large
    scale_waiting: tuple[int, int] = (10, 10_000)
    scale_cycles: int = 20_000
    scale_wait_ops: int = 30_000
    memory_connections: int = 64
    peers_overhead_cycles: int = 5_000
    peers_round_trips: int = 500
    throughput_concurrency: tuple[int, ...] = (1, 4, 16, 64)
    throughput_pool_round_trips: int = 6_400
    throughput_per_request_round_trips: int = 640
    throughput_max_connections: int = 16
    #: scenario 9: borrowers arriving at once at an empty pool of as many connections
    cold_start_borrowers: int = 200
    cold_start_handshake_delay: float = 0.02
    #: scenario 10: borrowers of a pool whose server accepts, then closes, every connection
    dead_server_borrowers: int = 100
    #: scenario 11: connections opened (and closed) by one task, per segment
    shared_opens: int = 200
    #: each contender's timed work is split into this many segments, run in
    #: alternation with the other contenders' (see interleave)
    segments: int = 5
    repetitions: int = 5
    worker_timeout: float = 600.0


FULL = Sizes()
QUICK = Sizes(
    overhead_cycles=6_000,
    contended_cycles=64 * 150,
    echo_round_trips=45,
    echo_per_request_round_trips=3,
    connector_round_trips=120,
    fairness_tasks=400,
    scale_idle=(10, 1_000, 5_000),
    scale_waiting=(10, 5_000),
    scale_cycles=3_000,
    scale_wait_ops=10_000,
    memory_connections=16,
    peers_overhead_cycles=600,
    peers_round_trips=60,
    throughput_pool_round_trips=640,
    throughput_per_request_round_trips=96,
    cold_start_borrowers=60,
    dead_server_borrowers=50,
    shared_opens=60,
    segments=3,
    repetitions=3,
    worker_timeout=90.0,
)


class Measurement(TypedDict):
    """One figure: what ``contender`` scored on ``metric`` in one repetition."""

    contender: str
    metric: str
    value: float


class Run(TypedDict):
    """One scenario in one worker process: its figures, or the error that stopped it."""

    scenario: str
    backend: str
    rep: int
    ok: bool
    seconds: float
    error: str | None
    measurements: list[Measurement]
    notes: dict[str, str]


@dataclass(slots=True)
class Context:
    """What a scenario needs (the server, how much work) and what it records."""

    backend: str
    port: int
    rep: int
    sizes: Sizes
    measurements: list[Measurement] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def uri(self) -> str:
        return f"ws://127.0.0.1:{self.port}/echo"

    def add(self, contender: str, metric: str, value: float) -> None:
        self.measurements.append(Measurement(contender=contender, metric=metric, value=value))


# -- what the report needs to know of a scenario ----------------------------------------------


@dataclass(frozen=True, slots=True)
class Metric:
    key: str
    #: may name the sizes of the run: ``{idle_small}``, ``{waiting_large}``, ...
    label: str
    better: Literal["lower", "higher", "none"]
    digits: int = 1
    ratio: bool = True
    #: the contender this metric's ratios are taken to, when not the scenario's baseline
    baseline: str | None = None


@dataclass(frozen=True, slots=True)
class Target:
    """One target of the issue: a ratio to ``baseline``, or (without one) a plain value."""

    label: str
    contender: str
    #: "metric op threshold", with op one of <=, >=, ==
    check: str
    baseline: str | None = None
    #: None: every backend the scenario runs on
    backends: tuple[str, ...] | None = None
    #: "target": the issue's target; "aim": the issue's stated aim beyond it;
    #: "reported": a figure the issue asks to show, or a diagnostic, with no target
    role: Literal["target", "aim", "reported"] = "target"


@dataclass(frozen=True, slots=True)
class Scenario:
    key: str
    number: str
    run: Callable[[Context], Awaitable[None]]
    baseline: str
    metrics: tuple[Metric, ...]
    targets: tuple[Target, ...]
    backends: tuple[str, ...]

    @property
    def title(self) -> str:
        return (inspect.getdoc(self.run) or self.key).split("\n", 1)[0]

    @property
    def text(self) -> str:
        """The docstring after its first line, each paragraph on one line."""
        body = (inspect.getdoc(self.run) or "").partition("\n")[2].strip()
        return "\n\n".join(" ".join(par.split()) for par in body.split("\n\n"))

    def baseline_of(self, metric: str) -> str | None:
        """The contender that ``metric``'s ratios are taken to (None: no ratio)."""
        for candidate in self.metrics:
            if candidate.key == metric and candidate.ratio:
                return candidate.baseline or self.baseline
        return None


#: every scenario, by key
SCENARIOS: dict[str, Scenario] = {}
ScenarioFunction = Callable[[Context], Awaitable[None]]


def scenario(
    number: str,
    baseline: str,
    metrics: Sequence[Metric],
    targets: Sequence[Target] = (),
    backends: tuple[str, ...] = BACKENDS,
) -> Callable[[ScenarioFunction], ScenarioFunction]:
    """Register ``scenario_<key>`` with what the report needs besides its docstring."""

    def register(run: ScenarioFunction) -> ScenarioFunction:
        key = run.__name__.removeprefix("scenario_")
        metrics_ = tuple(metrics)
        SCENARIOS[key] = Scenario(key, number, run, baseline, metrics_, tuple(targets), backends)
        return run

    return register


def run_on(backend: str, main: Callable[..., Awaitable[object]], *args: object) -> None:
    """Run ``main(*args)`` on a fresh event loop of ``backend``."""
    if backend == "uvloop":
        anyio.run(main, *args, backend="asyncio", backend_options={"use_uvloop": True})
    else:
        anyio.run(main, *args, backend=backend)


async def run_scenario(name: str, ctx: Context) -> None:
    try:
        loop = type(asyncio.get_running_loop())
    except RuntimeError:
        ctx.notes["loop"] = "trio"
    else:
        ctx.notes["loop"] = f"{loop.__module__}.{loop.__qualname__}"
    await SCENARIOS[name].run(ctx)


# -- the hand-written baselines ------------------------------------------------------------
class ItemQueue(Generic[T]):
    """A FIFO queue of ready items on an anyio memory object stream (baseline "queue of N").

    ``get`` waits for an item; waiting callers are served first come, first
    served. No health check, no capacity logic beyond the number of items.
    """

    __slots__ = ("_receive", "_send")

    def __init__(self, capacity: int) -> None:
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


class NativeQueue(Generic[T]):
    """The backend's own FIFO queue of ready items: what a user writes by hand.

    An ``asyncio.Queue`` on asyncio and uvloop, a trio memory channel on trio:
    no anyio layer, no health check, no capacity logic beyond the items.
    """

    __slots__ = ("_get", "_put")

    def __init__(self, capacity: int) -> None:
        self._get: Callable[[], Awaitable[T]]
        self._put: Callable[[T], None]
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            import trio

            send, receive = trio.open_memory_channel[T](capacity)
            self._get, self._put = receive.receive, send.send_nowait
        else:
            queue: asyncio.Queue[T] = asyncio.Queue(capacity)
            self._get, self._put = queue.get, queue.put_nowait

    async def get(self) -> T:
        return await self._get()

    def put(self, item: T) -> None:
        self._put(item)

    @asynccontextmanager
    async def lease(self) -> AsyncIterator[T]:
        item = await self._get()
        try:
            yield item
        finally:
            self._put(item)


class FifoQueue(Generic[T]):
    """A first-come, first-served hand-off written by hand: what the pool promises.

    ``asyncio.Queue`` lets a task that has just put an item back take it again
    ahead of the tasks already waiting (the waiter it woke finds the queue
    empty and queues again, last): with more tasks than items the same few
    tasks keep the items and the others wait. Here ``put`` hands the item to
    the first waiter directly, as the pool does. On trio the memory channel
    already hands off in order, so this is the channel.
    """

    __slots__ = ("_getters", "_items", "_loop", "_native")

    def __init__(self, capacity: int) -> None:
        self._items: deque[T] = deque()
        self._getters: deque[asyncio.Future[T]] = deque()
        self._native: NativeQueue[T] | None = None
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            self._native = NativeQueue(capacity)

    async def get(self) -> T:
        if self._native is not None:
            return await self._native.get()
        if self._items and not self._getters:
            return self._items.popleft()
        getter: asyncio.Future[T] = self._loop.create_future()
        self._getters.append(getter)
        return await getter  # (no cancellation in the benchmark: no repair here)

    def put(self, item: T) -> None:
        if self._native is not None:
            self._native.put(item)
            return
        getters = self._getters
        while getters:
            getter = getters.popleft()
            if not getter.done():
                getter.set_result(item)
                return
        self._items.append(item)


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


async def _make_object() -> object:
    return object()


# -- helpers ------------------------------------------------------------------------------

#: one segment of a contender's work (a short one when warming up); returns its seconds
Segment = Callable[[bool], Awaitable[float]]
#: opens what a contender needs (a pool, a queue of connections) and yields its segment
ContenderFactory = Callable[[], ACM[Segment]]


def rotate(items: Sequence[T], by: int) -> list[T]:
    """``items`` starting at position ``by``: each repetition runs its contenders in turn first."""
    shift = by % len(items) if items else 0
    return [*items[shift:], *items[:shift]]


def percentile(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` quantile by the nearest-rank method (no interpolation)."""
    if not values:
        return math.nan
    return sorted(values)[max(1, math.ceil(fraction * len(values))) - 1]


def new_client() -> httpx.AsyncClient:
    """An httpx client whose own limit never gets in the way of the contenders."""
    return httpx.AsyncClient(
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=0),
        timeout=httpx.Timeout(30.0),
    )


def new_httpx2_client() -> httpx2.AsyncClient:
    """The same, for httpx2."""
    return httpx2.AsyncClient(
        limits=httpx2.Limits(max_connections=None, max_keepalive_connections=0),
        timeout=httpx2.Timeout(30.0),
    )


async def server_handshakes(ctx: Context) -> int:
    """How many WebSocket handshakes the echo server has accepted so far (``GET /count``)."""
    async with httpx.AsyncClient(timeout=10.0) as client:
        response = await client.get(f"http://127.0.0.1:{ctx.port}/count")
        response.raise_for_status()
        return int(response.text)


def connect_ws(
    uri: str,
    client: httpx.AsyncClient,
    session_class: type[AsyncWebSocketSession] = AsyncWebSocketSession,
) -> ACM[AsyncWebSocketSession]:
    """``httpx_ws.aconnect_ws``, typed."""
    return aconnect_ws(uri, client, session_class=session_class)


async def echo(ws: Any) -> None:
    """One round trip on a session of httpx-ws's API (httpx2's included)."""
    await ws.send_bytes(PAYLOAD)
    await ws.receive_bytes()


async def echo_websockets(ws: Any) -> None:
    """One round trip on a ``websockets`` client connection."""
    await ws.send(PAYLOAD)
    await ws.recv()


async def warm_pool(pool: WebSocketPool[Any], connections: int) -> None:
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


async def timed_tasks(count: int, task: Callable[[], Coroutine[Any, Any, None]]) -> float:
    """Run ``count`` copies of ``task`` at once; return the seconds until all are done."""
    gc.collect()
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


def cycles_segment(cycles: int, loop: Callable[[int], Awaitable[None]]) -> Segment:
    """A segment that runs ``loop(cycles)`` in this task (a quarter when warming up)."""

    async def segment(warmup: bool) -> float:
        count = max(1, cycles // 4) if warmup else cycles
        start = time.perf_counter()
        await loop(count)
        return time.perf_counter() - start

    return segment


def lease_loop(cycles: int, lease: Callable[[], ACM[object]]) -> Segment:
    """``cycles`` empty leases in this task."""

    async def loop(count: int) -> None:
        for _ in range(count):
            async with lease():
                pass

    return cycles_segment(cycles, loop)


def floor_segment(cycles: int, capacity: int) -> Segment:
    """The overhead floor: a bare ``CapacityLimiter`` acquire/release around a deque pop/append."""
    limiter = anyio.CapacityLimiter(capacity)
    idle: deque[object] = deque([object()])

    async def loop(count: int) -> None:
        for _ in range(count):
            async with limiter:
                idle.append(idle.pop())

    return cycles_segment(cycles, loop)


def pooled(
    open_one: Callable[[], ACM[WebSocketPool[T]]],
    warm: int,
    tasks: int,
    rounds: int,
    round_trip: Callable[[T], Awaitable[None]],
    on_exit: Callable[[WebSocketPool[T]], None] = lambda pool: None,
) -> ContenderFactory:
    """A pool, ``warm`` connections opened; ``tasks`` x ``rounds`` round trips, one lease each."""

    @asynccontextmanager
    async def factory() -> AsyncIterator[Segment]:
        async with open_one() as pool:
            await warm_pool(pool, warm)

            async def one_round() -> None:
                async with pool.connection() as ws:
                    await round_trip(ws)

            yield borrowers_segment(tasks, rounds, one_round)
            on_exit(pool)

    return factory


def queued(
    open_one: Callable[[], ACM[T]],
    connections: int,
    tasks: int,
    rounds: int,
    round_trip: Callable[[T], Awaitable[None]],
    *,
    native: bool = False,
    fifo: bool = False,
) -> ContenderFactory:
    """A queue of ``connections`` connections; ``tasks`` x ``rounds`` round trips, one get each.

    An anyio memory object stream, with ``native`` the backend's own queue,
    with ``fifo`` a first-come, first-served hand-off written by hand.
    """

    @asynccontextmanager
    async def factory() -> AsyncIterator[Segment]:
        queue: ItemQueue[T] | NativeQueue[T] | FifoQueue[T] = (
            FifoQueue(connections)
            if fifo
            else NativeQueue(connections)
            if native
            else ItemQueue(connections)
        )
        async with AsyncExitStack() as stack:
            for _ in range(connections):
                queue.put(await stack.enter_async_context(open_one()))

            async def one_round() -> None:
                ws = await queue.get()
                await round_trip(ws)
                queue.put(ws)

            yield borrowers_segment(tasks, rounds, one_round)

    return factory


async def interleave(
    contenders: Mapping[str, ContenderFactory], segments: int, rep: int
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
            runs = {name: await stack.enter_async_context(contenders[name]()) for name in order}
            for name in order:
                await runs[name](True)
            for index in range(segments):
                for name in rotate(order, index):
                    gc.collect()
                    totals[name] += await runs[name](False)
    return totals


X = "\u00d7"  # the multiplication sign (escaped: ruff flags look-alike characters)
US = "µs per cycle"
RATE = "round trips/s"


# -- 1. overhead ------------------------------------------------------------------------------

OVERHEAD_FLOOR = "floor: CapacityLimiter + deque"
OVERHEAD_UNBOUNDED = "unbounded deque get/put (livekit's technique)"
OVERHEAD_UNBOUNDED_CM = "unbounded deque, @asynccontextmanager lease"
OVERHEAD_POOL = "anyio_wspool pool.connection(), httpx-ws"
OVERHEAD_POOL_ACQUIRE = "anyio_wspool acquire()/release(), httpx-ws"
OVERHEAD_POOL_GENERIC = "anyio_wspool pool.connection(), generic fake resource"


@scenario(
    "1", OVERHEAD_FLOOR,
    [Metric("us_per_cycle", US, "lower", 2)],
    [
        Target(f"pool.connection() (httpx-ws) ≤ 1.0{X} the floor",
               OVERHEAD_POOL, "us_per_cycle <= 1.0", OVERHEAD_FLOOR),
        Target(f"acquire()/release() (httpx-ws) ≤ 1.0{X} the floor",
               OVERHEAD_POOL_ACQUIRE, "us_per_cycle <= 1.0", OVERHEAD_FLOOR),
        Target("aim: pool.connection() as cheap as the unbounded deque behind a context manager",
               OVERHEAD_POOL, "us_per_cycle <= 1.0", OVERHEAD_UNBOUNDED_CM, role="aim"),
        Target("pool.connection() against the bare unbounded deque get/put",
               OVERHEAD_POOL, "us_per_cycle <= 1.0", OVERHEAD_UNBOUNDED, role="reported"),
    ],
)  # fmt: skip
async def scenario_overhead(ctx: Context) -> None:
    """Overhead: acquire + release of an idle connection

    One task takes and gives back an idle connection N times (20,000 in a full
    run), nothing sent. The floor is a bare `anyio.CapacityLimiter`
    acquire/release around a deque pop/append; the unbounded deque is
    livekit-agents' technique (no capacity bound), bare and behind an
    `@asynccontextmanager` like livekit's `connection()`.
    """
    segments = ctx.sizes.segments
    cycles = ctx.sizes.overhead_cycles // segments

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
        yield lease_loop(cycles, UnboundedDeque(_make_object).lease)

    @asynccontextmanager
    async def pool_httpx_ws() -> AsyncIterator[Segment]:
        async with new_client() as client, open_pool(ctx.uri, client=client) as pool:
            await warm_pool(pool, 1)
            yield lease_loop(cycles, pool.connection)

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
            yield lease_loop(cycles, pool.connection)

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
        ctx.add(name, "us_per_cycle", seconds / (cycles * segments) * 1e6)


# -- 8. contended hand-off, in memory ------------------------------------------------------------

CONTENDED_POOL = "anyio_wspool, generic fake resource"
CONTENDED_FLOOR = "floor: CapacityLimiter + deque"
CONTENDED_NATIVE = "the backend's own queue (asyncio.Queue, trio memory channel)"


@scenario(
    "8", CONTENDED_FLOOR,
    [Metric("us_per_cycle", US, "lower", 2)],
    [
        Target(f"contended hand-off ≤ 1.0{X} the floor",
               CONTENDED_POOL, "us_per_cycle <= 1.0", CONTENDED_FLOOR),
        Target("against the backend's own queue",
               CONTENDED_POOL, "us_per_cycle <= 1.0", CONTENDED_NATIVE, role="reported"),
    ],
)  # fmt: skip
async def scenario_contended(ctx: Context) -> None:
    """Contended hand-off, in memory

    64 tasks share 16 resources of a generic connector (no sockets): each
    cycle takes one, passes one checkpoint, and gives it back, so that nearly
    every acquisition waits and nearly every release hands the resource to a
    waiter, which is what a busy pool does around a fast client. The floor is
    `anyio.CapacityLimiter` + a deque; the backend's own queue
    (`asyncio.Queue`, a trio memory channel) is what a user writes by hand
    without anyio.
    """
    sizes = ctx.sizes
    tasks, resources, segments = sizes.echo_tasks, sizes.echo_connections, sizes.segments
    rounds = max(1, sizes.contended_cycles // tasks // segments)

    @asynccontextmanager
    async def pool() -> AsyncIterator[Segment]:
        async with open_pool(connect=fake_resource, max_connections=resources) as pool:
            await warm_pool(pool, resources)
            lease = pool.connection

            async def one_round() -> None:
                async with lease():
                    await anyio.lowlevel.checkpoint()

            yield borrowers_segment(tasks, rounds, one_round)

    @asynccontextmanager
    async def floor() -> AsyncIterator[Segment]:
        limiter = anyio.CapacityLimiter(resources)
        idle: deque[object] = deque(object() for _ in range(resources))

        async def one_round() -> None:
            async with limiter:
                item = idle.pop()
                await anyio.lowlevel.checkpoint()
                idle.append(item)

        yield borrowers_segment(tasks, rounds, one_round)

    @asynccontextmanager
    async def native() -> AsyncIterator[Segment]:
        queue: NativeQueue[object] = NativeQueue(resources)
        for _ in range(resources):
            queue.put(object())
        checkpoint = _native_checkpoint()

        async def one_round() -> None:
            item = await queue.get()
            await checkpoint()
            queue.put(item)

        yield borrowers_segment(tasks, rounds, one_round)

    contenders = {CONTENDED_POOL: pool, CONTENDED_FLOOR: floor, CONTENDED_NATIVE: native}
    totals = await interleave(contenders, segments, ctx.rep)
    for name, seconds in totals.items():
        ctx.add(name, "us_per_cycle", seconds / (tasks * rounds * segments) * 1e6)


def _native_checkpoint() -> Callable[[], Awaitable[None]]:
    """The backend's own checkpoint: ``asyncio.sleep(0)``, ``trio.lowlevel.checkpoint``."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        import trio

        return trio.lowlevel.checkpoint
    return partial(asyncio.sleep, 0)


# -- 2. pooled echo (httpx-ws) ------------------------------------------------------------------

ECHO_POOL = "anyio_wspool, httpx-ws"
ECHO_QUEUE = "queue of 16 httpx-ws sessions"
ECHO_HARDENED = "queue of 16 hardened sessions (the pool's session class, no pool)"
ECHO_PER_REQUEST = "aconnect_ws per request"
ECHO_POOL_HTTPX2 = "anyio_wspool, httpx2"
ECHO_QUEUE_HTTPX2 = "queue of 16 httpx2 sessions"


@scenario(
    "2", ECHO_QUEUE,
    [
        Metric("round_trips_per_s", RATE, "higher", 0),
        Metric("server_handshakes", "handshakes seen by the server", "none", 0, False),
    ],
    [
        Target(f"pooled echo ≥ 0.95{X} queue of 16 httpx-ws sessions (b)",
               ECHO_POOL, "round_trips_per_s >= 0.95", ECHO_QUEUE),
        Target("lending alone: pool against a queue of the same hardened sessions",
               ECHO_POOL, "round_trips_per_s >= 0.95", ECHO_HARDENED, role="reported"),
        Target("multiple over aconnect_ws per request (a)",
               ECHO_POOL, "round_trips_per_s >= 1.0", ECHO_PER_REQUEST, role="reported"),
        Target("server-counted handshakes of the pool = 16", ECHO_POOL, "server_handshakes == 16"),
        Target(f"httpx2: pooled echo ≥ 0.95{X} queue of 16 httpx2 sessions",
               ECHO_POOL_HTTPX2, "round_trips_per_s >= 0.95", ECHO_QUEUE_HTTPX2),
        Target("httpx2 against httpx-ws, raw: queue of httpx2 sessions against queue of httpx-ws's",
               ECHO_QUEUE_HTTPX2, "round_trips_per_s >= 1.0", ECHO_QUEUE, role="reported"),
        Target("httpx2 against httpx-ws, pooled",
               ECHO_POOL_HTTPX2, "round_trips_per_s >= 1.0", ECHO_POOL, role="reported"),
    ],
)  # fmt: skip
async def scenario_echo(ctx: Context) -> None:
    """Pooled echo through httpx-ws

    64 tasks share 16 connections; each task makes 500 round trips of 64 bytes,
    one lease per round trip. Pool and queues are warmed (16 connections open)
    before the clock starts. Baselines: (b) 16 persistent httpx-ws sessions
    handed out by a FIFO queue (anyio memory object stream), the ceiling for
    httpx-ws; (a) `aconnect_ws` per request (fewer requests, same rate). The
    diagnostic row 'queue of 16 hardened sessions' uses the pool's own session
    class without the pool: it separates the cost of lending from the cost of
    the session. The same workload runs on httpx2 (its built-in WebSockets), the
    pool given an `httpx2.AsyncClient` against a queue of 16 httpx2 sessions, so
    that a user can see which stack to pick. `server_handshakes` is counted by
    the echo server.
    """
    sizes = ctx.sizes
    tasks, connections, segments = sizes.echo_tasks, sizes.echo_connections, sizes.segments
    rounds = max(1, sizes.echo_round_trips // segments)
    hardened: type[AsyncWebSocketSession] | None
    try:
        # A private name: the diagnostic row is skipped if it moves.
        from anyio_wspool._session import hardened_session_class
    except ImportError:
        hardened = None
        ctx.notes["diagnostic"] = "the pool's session class could not be imported"
    else:
        hardened = hardened_session_class(AsyncWebSocketSession)
    handshakes: dict[str, int] = {}
    # Connections the pool opened after its warm-up count as its own.
    extra: list[int] = []
    extra2: list[int] = []

    def counted(name: str, factory: ContenderFactory) -> ContenderFactory:
        """Count the server's handshakes while ``factory`` sets its contender up."""

        @asynccontextmanager
        async def wrapper() -> AsyncIterator[Segment]:
            before = await server_handshakes(ctx)
            async with factory() as segment:
                handshakes[name] = await server_handshakes(ctx) - before
                yield segment

        return wrapper

    async with new_client() as client, new_httpx2_client() as client2:
        sessions = {ECHO_QUEUE: AsyncWebSocketSession, ECHO_HARDENED: hardened}
        contenders = {
            ECHO_POOL: counted(
                ECHO_POOL,
                pooled(
                    lambda: open_pool(ctx.uri, client=client, max_connections=connections),
                    connections,
                    tasks,
                    rounds,
                    echo,
                    lambda pool: extra.append(pool.stats.opened - connections),
                ),
            )
        }
        for name, session_class in sessions.items():
            if session_class is not None:
                open_one = partial(connect_ws, ctx.uri, client, session_class)
                contenders[name] = counted(name, queued(open_one, connections, tasks, rounds, echo))
        contenders[ECHO_POOL_HTTPX2] = counted(
            ECHO_POOL_HTTPX2,
            pooled(
                lambda: open_pool(ctx.uri, client=client2, max_connections=connections),
                connections,
                tasks,
                rounds,
                echo,
                lambda pool: extra2.append(pool.stats.opened - connections),
            ),
        )
        contenders[ECHO_QUEUE_HTTPX2] = counted(
            ECHO_QUEUE_HTTPX2,
            queued(lambda: client2.websocket(ctx.uri), connections, tasks, rounds, echo),
        )
        totals = await interleave(contenders, segments, ctx.rep)
        handshakes[ECHO_POOL] += sum(extra)
        handshakes[ECHO_POOL_HTTPX2] += sum(extra2)
        for name, seconds in totals.items():
            ctx.add(name, "round_trips_per_s", tasks * rounds * segments / seconds)
            ctx.add(name, "server_handshakes", handshakes[name])

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
        ctx.add(ECHO_PER_REQUEST, "round_trips_per_s", tasks * per_request_rounds / seconds)
        ctx.add(ECHO_PER_REQUEST, "server_handshakes", after - before)


# -- 3. pooled echo through the generic connector (websockets) ----------------------------------

CONNECTOR_POOL = "anyio_wspool connect=websockets"
CONNECTOR_QUEUE = "queue of 16 websockets connections"
CONNECTOR_NATIVE = "asyncio.Queue (trio: memory channel) of 16 websockets connections"
CONNECTOR_FIFO = "first-come, first-served hand-off of 16 websockets connections, by hand"
CONNECTOR_BURST_POOL = "anyio_wspool, connect=websockets, 10 connections"
CONNECTOR_BURST_NATIVE = "asyncio.Queue (trio: memory channel) of 10 websockets connections"


@scenario(
    "3", CONNECTOR_QUEUE,
    [
        Metric("round_trips_per_s", RATE, "higher", 0),
        Metric("burst_ms", "2,000 borrowers, ms", "lower", 1, baseline=CONNECTOR_BURST_NATIVE),
    ],
    [
        Target(f"connect=websockets ≥ 0.95{X} queue of websockets connections",
               CONNECTOR_POOL, "round_trips_per_s >= 0.95", CONNECTOR_QUEUE),
        Target(f"connect=websockets ≥ 0.95{X} the backend's own queue",
               CONNECTOR_POOL, "round_trips_per_s >= 0.95", CONNECTOR_NATIVE),
        Target("connect=websockets against a first-come, first-served hand-off by hand",
               CONNECTOR_POOL, "round_trips_per_s >= 0.95", CONNECTOR_FIFO, role="reported"),
        Target(f"2,000 borrowers on 10 connections ≤ 1.05{X} the backend's own queue",
               CONNECTOR_BURST_POOL, "burst_ms <= 1.05", CONNECTOR_BURST_NATIVE),
    ],
)  # fmt: skip
async def scenario_connector(ctx: Context) -> None:
    """Pooled echo through the generic connector (websockets client)

    The workload of scenario 2 with `open_pool(connect=...)` around the
    `websockets` library's client (its asyncio client on asyncio and uvloop,
    its trio client on trio), against the same FIFO queue of 16 `websockets`
    connections (an anyio memory object stream) and against the queue a
    `websockets` user writes by hand: an `asyncio.Queue` (on trio a trio
    memory channel), and against a first-come, first-served hand-off written
    by hand (`asyncio.Queue` is not one: a task that puts a connection back
    takes it again ahead of the tasks that wait, so 16 of the 64 tasks keep the
    connections; the pool serves every task in turn). Then the fairness shape
    on that stack: a burst of 2,000 borrowers, one round trip each, on 10
    connections, total time of the burst against the hand-written queue's.
    """
    sizes = ctx.sizes
    tasks, connections, segments = sizes.echo_tasks, sizes.echo_connections, sizes.segments
    rounds = max(1, sizes.connector_round_trips // segments)
    connect: Callable[..., ACM[Any]]
    if ctx.backend == "trio":
        from websockets.trio.client import connect
    else:
        from websockets.asyncio.client import connect
    ctx.notes["client"] = connect.__module__
    connector = partial(connect, ctx.uri, compression=None)
    contenders = {
        CONNECTOR_POOL: pooled(
            lambda: open_pool(connect=connector, max_connections=connections),
            connections,
            tasks,
            rounds,
            echo_websockets,
        ),
        CONNECTOR_QUEUE: queued(connector, connections, tasks, rounds, echo_websockets),
        CONNECTOR_NATIVE: queued(
            connector, connections, tasks, rounds, echo_websockets, native=True
        ),
        CONNECTOR_FIFO: queued(connector, connections, tasks, rounds, echo_websockets, fifo=True),
    }
    totals = await interleave(contenders, segments, ctx.rep)
    for name, seconds in totals.items():
        ctx.add(name, "round_trips_per_s", tasks * rounds * segments / seconds)
    burst, burst_connections = sizes.fairness_tasks, sizes.fairness_connections
    bursts = {
        CONNECTOR_BURST_POOL: pooled(
            lambda: open_pool(connect=connector, max_connections=burst_connections),
            burst_connections,
            burst,
            1,
            echo_websockets,
        ),
        CONNECTOR_BURST_NATIVE: queued(
            connector, burst_connections, burst, 1, echo_websockets, native=True
        ),
    }
    totals = await interleave(bursts, segments, ctx.rep)
    for name, seconds in totals.items():
        ctx.add(name, "burst_ms", seconds / segments * 1e3)


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
    tasks: int, lease: Callable[[], ACM[AsyncWebSocketSession]], seen: _Fairness
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


@scenario(
    "4", FAIRNESS_QUEUE,
    [
        Metric("total_s", "total seconds", "lower", 3),
        Metric("wait_p50_ms", "wait p50, ms", "lower", 1),
        Metric("wait_p99_ms", "wait p99, ms", "lower", 1),
        Metric("wait_max_ms", "wait max, ms", "lower", 1),
        Metric("failures", "failures", "lower", 0, False),
        Metric("out_of_fifo_order", "out of FIFO order", "lower", 0, False),
    ],
    [
        Target(f"total time ≤ 1.05{X} the queue of the same stack",
               FAIRNESS_POOL, "total_s <= 1.05", FAIRNESS_QUEUE),
        Target("zero failures", FAIRNESS_POOL, "failures == 0"),
        Target("FIFO order kept (asyncio)",
               FAIRNESS_POOL, "out_of_fifo_order == 0", backends=("asyncio", "uvloop")),
    ],
)  # fmt: skip
async def scenario_fairness(ctx: Context) -> None:
    """Fairness under contention

    2,000 tasks, 10 connections (warmed), one round trip each; each timed
    segment is one such burst, so *total seconds* is per burst, waits are
    pooled over all timed bursts, and failures and 'out of FIFO order' are
    counted over all of them (5 bursts of 2,000 borrowers in a full run). 'Out
    of FIFO order' counts borrowers that got a connection at another position
    than the one they arrived at (trio's scheduler reorders tasks woken
    together, so only asyncio is held to zero).
    """
    sizes = ctx.sizes
    tasks, connections = sizes.fairness_tasks, sizes.fairness_connections
    seen = {FAIRNESS_POOL: _Fairness(), FAIRNESS_QUEUE: _Fairness()}

    async with new_client() as client:

        @asynccontextmanager
        async def pool() -> AsyncIterator[Segment]:
            async with open_pool(ctx.uri, client=client, max_connections=connections) as pool:
                await warm_pool(pool, connections)
                yield contention_segment(tasks, pool.connection, seen[FAIRNESS_POOL])

        @asynccontextmanager
        async def queue() -> AsyncIterator[Segment]:
            queue: ItemQueue[AsyncWebSocketSession] = ItemQueue(connections)
            async with AsyncExitStack() as stack:
                for _ in range(connections):
                    queue.put(await stack.enter_async_context(connect_ws(ctx.uri, client)))
                yield contention_segment(tasks, queue.lease, seen[FAIRNESS_QUEUE])

        totals = await interleave(
            {FAIRNESS_POOL: pool, FAIRNESS_QUEUE: queue}, sizes.segments, ctx.rep
        )
    for name, seconds in totals.items():
        state = seen[name]
        ctx.add(name, "total_s", seconds / state.segments)
        ctx.add(name, "wait_p50_ms", percentile(state.waits, 0.50) * 1e3)
        ctx.add(name, "wait_p99_ms", percentile(state.waits, 0.99) * 1e3)
        ctx.add(name, "wait_max_ms", max(state.waits, default=0.0) * 1e3)
        ctx.add(name, "failures", state.failures)
        ctx.add(name, "out_of_fifo_order", state.out_of_order)


# -- 5. scale ----------------------------------------------------------------------------------

SCALE_POOL = "anyio_wspool, generic fake resource"
SCALE_FLOOR = "floor: CapacityLimiter + deque"
#: how the scale metrics name the sizes (so that --quick can use smaller ones)
SCALE_IDLE_RANKS = ("small", "medium", "large")
SCALE_WAITING_RANKS = ("small", "large")


async def _idle_cost(lease: Callable[[], ACM[object]], cycles: int) -> float:
    for _ in range(min(cycles, 1_000)):
        async with lease():
            pass
    gc.collect()
    start = time.perf_counter()
    for _ in range(cycles):
        async with lease():
            pass
    return (time.perf_counter() - start) / cycles


async def pool_idle_cost(idle: int, cycles: int) -> float:
    async with open_pool(connect=fake_resource, max_connections=idle) as pool:
        await warm_pool(pool, idle)
        return await _idle_cost(pool.connection, cycles)


async def _floor_idle_cost(idle: int, cycles: int) -> float:
    limiter = anyio.CapacityLimiter(idle)
    items: deque[object] = deque(object() for _ in range(idle))
    for _ in range(min(cycles, 1_000)):
        async with limiter:
            items.append(items.pop())
    gc.collect()
    start = time.perf_counter()
    for _ in range(cycles):
        async with limiter:
            items.append(items.pop())
    return (time.perf_counter() - start) / cycles


async def _hand_off_cost(
    waiting: int,
    ops: int,
    hold: Callable[[], Awaitable[object]],
    release: Callable[[], Awaitable[None]],
    queued: Callable[[], int],
    lease: Callable[[], ACM[object]],
) -> float:
    """Seconds per lease when ``waiting`` borrowers queue for one resource.

    The main task holds the resource until every borrower is queued, so that
    the clock starts with ``waiting`` waiters; the borrowers then take leases
    in turn, yielding once inside each, and the clock stops at the give-back
    of lease number ``ops`` (rounded down to a multiple of ``waiting``). No
    borrower ends before then: each takes one more lease afterwards, untimed,
    and leaves. (Were each to leave after its share, the clock would also
    count the end of ``waiting`` tasks, one every other lease at 10,000
    waiters and one in 2,000 at 10: a cost of the task group, not of the
    hand-off, that would pass for growth with the queue's length.)
    """
    timed = max(1, ops // waiting) * waiting
    done = 0
    last = 0.0

    async def borrower() -> None:
        nonlocal done, last
        while True:
            async with lease():
                if done >= timed:
                    return  # (the clock has stopped)
                await anyio.lowlevel.checkpoint()
            done += 1
            if done == timed:
                last = time.perf_counter()

    await hold()
    with anyio.fail_after(CONTENDER_TIME_LIMIT):
        async with anyio.create_task_group() as tg:
            for _ in range(waiting):
                tg.start_soon(borrower)
            await wait_until(lambda: queued() >= waiting)
            gc.collect()
            start = time.perf_counter()
            await release()
    return (last - start) / timed


async def pool_wait_cost(waiting: int, ops: int) -> float:
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

    async def release() -> None:
        limiter.release()

    return await _hand_off_cost(
        waiting, ops, limiter.acquire, release, lambda: limiter.statistics().tasks_waiting, lease
    )


@scenario(
    "5", SCALE_FLOOR,
    [
        Metric("idle_small_us", "idle {idle_small}: µs per cycle", "lower", 2),
        Metric("idle_medium_us", "idle {idle_medium}: µs per cycle", "lower", 2),
        Metric("idle_large_us", "idle {idle_large}: µs per cycle", "lower", 2),
        Metric("waiting_small_us", "waiting {waiting_small}: µs per lease", "lower", 2),
        Metric("waiting_large_us", "waiting {waiting_large}: µs per lease", "lower", 2),
        Metric("idle_growth", "growth, idle {idle_small} → {idle_large}", "lower", 2),
        Metric("waiting_growth", "growth, waiting {waiting_small} → {waiting_large}", "lower", 2),
    ],
    [
        Target(f"idle {{idle_small}} → {{idle_large}}: cost growth ≤ 1.2{X}",
               SCALE_POOL, "idle_growth <= 1.2"),
        Target(f"waiting {{waiting_small}} → {{waiting_large}}: cost growth ≤ 1.2{X}",
               SCALE_POOL, "waiting_growth <= 1.2"),
        Target("diagnostic: waiting growth against the floor's own growth",
               SCALE_POOL, "waiting_growth <= 1.0", SCALE_FLOOR, role="reported"),
        Target("diagnostic: hand-off to a waiter against the floor's (waiting {waiting_small})",
               SCALE_POOL, "waiting_small_us <= 1.0", SCALE_FLOOR, role="reported"),
    ],
)  # fmt: skip
async def scenario_scale(ctx: Context) -> None:
    """Scale: cost per acquire + release against pool size and queue length

    The generic connector with a fake resource. *idle N*: one task takes and
    gives back a connection while N are idle. *waiting N*: N borrowers queue
    for a single connection and take it in turn (one scheduling point inside
    each lease, so every lease is a hand-off to a waiter); the clock starts
    with all N queued and stops before any of them ends. *growth* is the cost
    at the largest size ÷ the cost at the smallest (target ≤ 1.2: nothing on
    the hot path loops over connections or waiters); its ratio to the floor's
    growth separates what the pool adds from what 10,000 live tasks cost the
    runtime itself (cache misses, garbage collection), which the floor, an
    `anyio.CapacityLimiter` with its O(1) queue, pays as well.
    """
    sizes = ctx.sizes
    costs: dict[tuple[str, str, str], float] = {}
    for name in rotate([SCALE_POOL, SCALE_FLOOR], ctx.rep):
        idle_cost = pool_idle_cost if name == SCALE_POOL else _floor_idle_cost
        wait_cost = pool_wait_cost if name == SCALE_POOL else _floor_wait_cost
        for rank, idle in zip(SCALE_IDLE_RANKS, sizes.scale_idle, strict=True):
            with anyio.fail_after(CONTENDER_TIME_LIMIT):
                costs[name, "idle", rank] = await idle_cost(idle, sizes.scale_cycles)
        for rank, waiting in zip(SCALE_WAITING_RANKS, sizes.scale_waiting, strict=True):
            costs[name, "waiting", rank] = await wait_cost(waiting, sizes.scale_wait_ops)
    for (name, kind, rank), seconds in costs.items():
        ctx.add(name, f"{kind}_{rank}_us", seconds * 1e6)
    for name in (SCALE_POOL, SCALE_FLOOR):
        for kind in ("idle", "waiting"):
            ctx.add(name, f"{kind}_growth", costs[name, kind, "large"] / costs[name, kind, "small"])


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
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        await open_all(stack)
        await anyio.wait_all_tasks_blocked()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    return (after - before) / count


@scenario(
    "6", MEMORY_BARE,
    [Metric("bytes_per_connection", "bytes per connection", "lower", 0)],
    [
        Target("pool's own bytes per idle connection (pooled - bare)",
               MEMORY_OVERHEAD, "bytes_per_connection >= 0", role="reported"),
    ],
)  # fmt: skip
async def scenario_memory(ctx: Context) -> None:
    """Memory per idle connection

    Bytes traced by `tracemalloc` per connection while N connections (64 in a
    full run) are open: bare httpx-ws sessions, idle pooled ones (the pool's
    hardened session, its host task, its bookkeeping), and idle pooled fake
    resources (the pool's own cost per connection, nothing else). Python
    allocations only: kernel socket buffers are not counted.
    """
    count = ctx.sizes.memory_connections

    async with new_client() as client:

        async def bare(stack: AsyncExitStack) -> None:
            for _ in range(count):
                await stack.enter_async_context(connect_ws(ctx.uri, client))

        async def pooled_httpx_ws(stack: AsyncExitStack) -> None:
            pool = open_pool(ctx.uri, client=client, max_connections=count)
            await warm_pool(await stack.enter_async_context(pool), count)

        async def generic(stack: AsyncExitStack) -> None:
            pool = open_pool(connect=fake_resource, max_connections=count)
            await warm_pool(await stack.enter_async_context(pool), count)

        how = {MEMORY_BARE: bare, MEMORY_POOLED: pooled_httpx_ws, MEMORY_GENERIC: generic}
        # Load every lazily imported module and cache before measuring (on trio,
        # wait_all_tasks_blocked() imports trio.testing, and with it megabytes).
        for warm in how.values():
            async with AsyncExitStack() as stack:
                await warm(stack)
                await anyio.wait_all_tasks_blocked()
        tracemalloc.start()
        try:
            figures = {
                name: await _traced_bytes_per_item(count, how[name])
                for name in rotate(list(how), ctx.rep)
            }
        finally:
            tracemalloc.stop()
    for name, value in figures.items():
        ctx.add(name, "bytes_per_connection", value)
    ctx.add(MEMORY_OVERHEAD, "bytes_per_connection", figures[MEMORY_POOLED] - figures[MEMORY_BARE])


# -- 7. peers from the package index -----------------------------------------------------------
#
# They pin websockets<16, so this scenario runs in a virtual environment of its
# own that run.py creates (websockets 15, both peers, and this project installed
# editable). The peers are imported by name at run time, so that this file
# type-checks where they are not installed.

AIO_POOL = "aio-websocket-pool"
ASYNC_POOL = "async-websocket-pool (listener callbacks)"

PEER_DISTRIBUTIONS = ("aio-websocket-pool", "async-websocket-pool", "websockets", "tenacity")
PEER_CONNECTIONS = 16


@scenario(
    "7", CONNECTOR_QUEUE,
    [
        Metric("overhead_us_per_cycle", "overhead, " + US, "lower", 2, baseline=OVERHEAD_FLOOR),
        Metric("tasks_16_round_trips_per_s", "16 tasks on 16 connections, " + RATE, "higher", 0),
        Metric("tasks_64_round_trips_per_s", "64 tasks on 16 connections, " + RATE, "higher", 0),
        Metric("tasks_64_failed_acquires", "64 tasks: failed acquisitions", "lower", 0, False),
    ],
    [
        Target("peers, 64 tasks: anyio_wspool against the queue (websockets 15)",
               CONNECTOR_POOL, "tasks_64_round_trips_per_s >= 0.95", CONNECTOR_QUEUE,
               role="reported"),
        Target("peers, 64 tasks: aio-websocket-pool against the queue",
               AIO_POOL, "tasks_64_round_trips_per_s >= 0.95", CONNECTOR_QUEUE, role="reported"),
        Target("peers, 16 tasks: async-websocket-pool against the queue",
               ASYNC_POOL, "tasks_16_round_trips_per_s >= 0.95", CONNECTOR_QUEUE, role="reported"),
        Target("peers, overhead: anyio_wspool against aio-websocket-pool",
               CONNECTOR_POOL, "overhead_us_per_cycle <= 1.0", AIO_POOL, role="reported"),
    ],
    backends=("asyncio",),
)  # fmt: skip
async def scenario_peers(ctx: Context) -> None:
    """Peers from the package index (asyncio only, websockets 15, own venv)

    `aio-websocket-pool` and `async-websocket-pool` pin `websockets<16`: they
    run in a virtual environment of their own with websockets 15, and every
    contender of this scenario uses that same client, so that the comparison
    is between pools, not between clients. `aio-websocket-pool` (an asyncio
    lock around every acquire and release, a ping on every reuse) fails at
    once when all its connections are busy (`ConnectionPoolExhaustedError`):
    with 64 tasks its failed acquisitions are counted and its rate counts
    successful round trips only. `async-websocket-pool` is not a lending pool
    (reconnecting listeners with callbacks, no acquire/release): it is
    measured on the only shape it supports, one conversation per connection
    (16 tasks).
    """
    for name in PEER_DISTRIBUTIONS:
        ctx.notes[f"version {name}"] = importlib.metadata.version(name)
    client: Any = importlib.import_module("websockets.asyncio.client")
    connect = partial(client.connect, ctx.uri, compression=None)
    aio_module: Any = importlib.import_module("aio_websocket_pool")

    def aio_pool() -> Any:
        return aio_module.WebsocketConnectionPool(
            uri=ctx.uri, max_connections=PEER_CONNECTIONS, compression=None
        )

    await _overhead(ctx, connect, aio_pool)
    for tasks in (PEER_CONNECTIONS, 4 * PEER_CONNECTIONS):
        await _echo(ctx, connect, aio_pool, tasks)


async def _overhead(ctx: Context, connect: Callable[[], Any], aio_pool: Callable[[], Any]) -> None:
    """Acquire + release of an idle connection: anyio_wspool, aio-websocket-pool, the floor."""
    segments = ctx.sizes.segments
    cycles = max(1, ctx.sizes.peers_overhead_cycles // segments)

    @asynccontextmanager
    async def floor() -> AsyncIterator[Segment]:
        yield floor_segment(cycles, PEER_CONNECTIONS)

    @asynccontextmanager
    async def ours() -> AsyncIterator[Segment]:
        async with open_pool(connect=connect, max_connections=PEER_CONNECTIONS) as pool:
            await warm_pool(pool, 1)
            yield lease_loop(cycles, pool.connection)

    @asynccontextmanager
    async def aio() -> AsyncIterator[Segment]:
        async with aio_pool() as pool:
            async with pool.get_connection():
                pass
            yield lease_loop(cycles, pool.get_connection)

    contenders = {OVERHEAD_FLOOR: floor, CONNECTOR_POOL: ours, AIO_POOL: aio}
    totals = await interleave(contenders, segments, ctx.rep)
    for name, seconds in totals.items():
        ctx.add(name, "overhead_us_per_cycle", seconds / (cycles * segments) * 1e6)


async def _echo(
    ctx: Context, connect: Callable[[], Any], aio_pool: Callable[[], Any], tasks: int
) -> None:
    """``tasks`` tasks on 16 connections, one lease per round trip."""
    segments = ctx.sizes.segments
    rounds = max(1, ctx.sizes.peers_round_trips // segments)
    aio_outcomes = [0, 0]  # successful round trips, failed acquisitions (timed segments)

    @asynccontextmanager
    async def aio() -> AsyncIterator[Segment]:
        async with aio_pool() as pool:
            held = [await pool.acquire() for _ in range(PEER_CONNECTIONS)]
            for connection in held:
                await pool.release(connection)
            counting = [False]

            async def one_round() -> None:
                try:
                    async with pool.get_connection() as connection:
                        await echo_websockets(connection)
                except Exception:
                    # The pool does not wait: a full pool is an error at once.
                    aio_outcomes[1] += counting[0]
                else:
                    aio_outcomes[0] += counting[0]

            segment = borrowers_segment(tasks, rounds, one_round)

            async def counted(warmup: bool) -> float:
                counting[0] = not warmup
                return await segment(warmup)

            yield counted

    contenders: dict[str, ContenderFactory] = {
        CONNECTOR_QUEUE: queued(connect, PEER_CONNECTIONS, tasks, rounds, echo_websockets),
        CONNECTOR_POOL: pooled(
            lambda: open_pool(connect=connect, max_connections=PEER_CONNECTIONS),
            PEER_CONNECTIONS,
            tasks,
            rounds,
            echo_websockets,
        ),
        AIO_POOL: aio,
    }
    if tasks == PEER_CONNECTIONS:
        contenders[ASYNC_POOL] = partial(_listeners, ctx.uri, rounds)
    totals = await interleave(contenders, segments, ctx.rep)
    for name, seconds in totals.items():
        done = aio_outcomes[0] if name == AIO_POOL else tasks * rounds * segments
        ctx.add(name, f"tasks_{tasks}_round_trips_per_s", done / seconds)
        ctx.add(name, f"tasks_{tasks}_failed_acquires", aio_outcomes[1] if name == AIO_POOL else 0)


@asynccontextmanager
async def _listeners(uri: str, rounds: int) -> AsyncIterator[Segment]:
    """async-websocket-pool: 16 listener connections, each echoing ``rounds`` times a segment.

    Its ``connect()`` reads messages and hands each to ``on_message`` in a new
    task; there is no acquire/release. Each connection keeps one message in
    flight: a segment sends the first message on every connection, and
    ``on_message`` sends the next one until the connection's count is reached.
    """
    listener: Any = importlib.import_module("async_websocket_pool")
    sockets: dict[int, Any] = {}
    left = [0] * PEER_CONNECTIONS
    finished = [0]
    all_finished = [anyio.Event()]

    def conversation(index: int) -> Callable[[], Awaitable[None]]:
        async def on_connect(ws: Any) -> None:
            sockets[index] = ws

        async def on_message(message: Any) -> None:
            left[index] -= 1
            if left[index] > 0:
                await sockets[index].send(PAYLOAD)
                return
            finished[0] += 1
            if finished[0] == PEER_CONNECTIONS:
                all_finished[0].set()

        return partial(listener.connect, uri, on_message, on_connect, compression=None)

    async def segment(warmup: bool) -> float:
        count = max(1, rounds // 5) if warmup else rounds
        finished[0] = 0
        all_finished[0] = anyio.Event()
        start = time.perf_counter()
        for index, ws in sockets.items():
            left[index] = count
            await ws.send(PAYLOAD)
        await all_finished[0].wait()
        return time.perf_counter() - start

    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.run_pool, [conversation(index) for index in range(PEER_CONNECTIONS)])
        await wait_until(lambda: len(sockets) == PEER_CONNECTIONS)
        yield segment
        tg.cancel_scope.cancel()


# -- throughput against concurrency (the plot) ---------------------------------------------------

THROUGHPUT_POOL = "anyio_wspool, httpx-ws (max_connections=16)"
THROUGHPUT_PER_REQUEST = "aconnect_ws per request"
THROUGHPUT_TASKS = (1, 4, 16, 64)


@scenario(
    "—", THROUGHPUT_PER_REQUEST,
    [
        Metric(f"tasks_{n}_round_trips_per_s", f"{n} tasks, {RATE}", "higher", 0)
        for n in THROUGHPUT_TASKS
    ],
)  # fmt: skip
async def scenario_throughput(ctx: Context) -> None:
    """Throughput against concurrency (the plot)

    Round trips/s with 1, 4, 16 and 64 tasks: the pool (16 connections,
    httpx-ws) against a new `aconnect_ws` connection per request. Plotted in
    [throughput.png](throughput.png).
    """
    sizes = ctx.sizes
    segments, limit = sizes.segments, sizes.throughput_max_connections
    async with new_client() as client:

        async def per_request_round() -> None:
            async with connect_ws(ctx.uri, client) as ws:
                await echo(ws)

        @asynccontextmanager
        async def per_request(tasks: int, rounds: int) -> AsyncIterator[Segment]:
            yield borrowers_segment(tasks, rounds, per_request_round)

        for tasks in rotate(sizes.throughput_concurrency, ctx.rep):
            rounds = {
                THROUGHPUT_POOL: max(1, sizes.throughput_pool_round_trips // tasks // segments),
                THROUGHPUT_PER_REQUEST: max(
                    1, sizes.throughput_per_request_round_trips // tasks // segments
                ),
            }
            contenders: dict[str, ContenderFactory] = {
                THROUGHPUT_POOL: pooled(
                    lambda: open_pool(ctx.uri, client=client, max_connections=limit),
                    min(tasks, limit),
                    tasks,
                    rounds[THROUGHPUT_POOL],
                    echo,
                ),
                THROUGHPUT_PER_REQUEST: partial(per_request, tasks, rounds[THROUGHPUT_PER_REQUEST]),
            }
            totals = await interleave(contenders, segments, ctx.rep)
            for name, seconds in totals.items():
                rate = tasks * rounds[name] * segments / seconds
                ctx.add(name, f"tasks_{tasks}_round_trips_per_s", rate)


# -- 9. cold start, 10. dead server (production features) -------------------------------------


def _fault_server(**faults: Any) -> AbstractAsyncContextManager[WSServer]:
    """The tests' own anyio + wsproto server (``tests/_wsserver.py``), in this event loop.

    It counts what these scenarios report (upgrades in flight and their peak,
    handshakes) and injects their faults (a slow handshake, a close right after
    the upgrade). Imported from the checkout: the tests are not a package that
    gets installed.
    """
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    module = importlib.import_module("tests._wsserver")
    server: AbstractAsyncContextManager[WSServer] = module.serve_ws(**faults)
    return server


COLD_LIMITS: tuple[int | None, ...] = (1, 4, 16, None)


def _cold_name(limit: int | None) -> str:
    if limit is None:
        return "max_connecting=None (no limit)"
    return f"max_connecting={limit}" + (" (the default)" if limit == 4 else "")


@scenario(
    "9", _cold_name(4),
    [
        Metric("ms", "ms until every borrower holds a connection", "lower", 0),
        Metric("peak_upgrading", "peak of upgrades in flight at the server", "none", 0,
               ratio=False),
    ],
    [
        Target("max_connecting=4: at most 4 upgrades in flight", _cold_name(4),
               "peak_upgrading <= 4"),
        Target("max_connecting=16: at most 16 upgrades in flight", _cold_name(16),
               "peak_upgrading <= 16"),
    ],
)  # fmt: skip
async def scenario_cold_start(ctx: Context) -> None:
    """Cold start: many borrowers at once on an empty pool, by `max_connecting`

    200 borrowers (60 with `--quick`) arrive together at an empty pool of as
    many connections, against a server whose upgrade takes 20 ms to answer
    (the anyio + wsproto server of the tests, in the same process). Each
    borrower keeps its connection until every one holds one, so each needs a
    handshake of its own. The time until all are served, and the peak of
    upgrades in flight counted by the server: `max_connecting` trades the one
    for the other, so that a cold start or a recovery does not stampede the
    provider with hundreds of simultaneous handshakes.
    """
    sizes = ctx.sizes
    for limit in rotate(list(COLD_LIMITS), ctx.rep):
        elapsed, peak = await _cold_start(
            limit, sizes.cold_start_borrowers, sizes.cold_start_handshake_delay
        )
        ctx.add(_cold_name(limit), "ms", elapsed * 1e3)
        ctx.add(_cold_name(limit), "peak_upgrading", peak)


async def _cold_start(limit: int | None, borrowers: int, delay: float) -> tuple[float, int]:
    """Seconds until ``borrowers`` hold a connection each, and the peak of upgrades in flight."""
    async with _fault_server(handshake_delay=delay) as server:
        all_served = anyio.Event()
        served = 0
        async with (
            new_client() as client,
            open_pool(
                server.url,
                client=client,
                max_connections=borrowers,
                max_connecting=limit,
                acquire_timeout=None,
            ) as pool,
        ):

            async def borrow() -> None:
                nonlocal served
                async with pool.connection():
                    served += 1
                    if served == borrowers:
                        all_served.set()
                    await all_served.wait()

            gc.collect()
            with anyio.fail_after(CONTENDER_TIME_LIMIT):
                start = time.perf_counter()
                async with anyio.create_task_group() as tg:
                    for _ in range(borrowers):
                        tg.start_soon(borrow)
                    await all_served.wait()
                    elapsed = time.perf_counter() - start
        if server.handshakes != borrowers:
            raise RuntimeError(f"{server.handshakes} handshakes for {borrowers} borrowers")
        return elapsed, server.max_upgrading


DEAD_OFF = "circuit breaker off (the default)"
DEAD_ON = "circuit breaker on (failure_threshold=5)"


@scenario(
    "10", DEAD_OFF,
    [
        Metric("ms", "ms until every borrower has its answer", "lower", 0),
        Metric("handshakes", "handshakes the server saw", "lower", 0),
    ],
    [Target(f"with the breaker, everyone answered sooner (≤ 0.5{X})", DEAD_ON, "ms <= 0.5",
            DEAD_OFF)],
)  # fmt: skip
async def scenario_dead_server(ctx: Context) -> None:
    """Dead server: a server that accepts, then closes, every connection

    100 borrowers (50 with `--quick`), on a pool of 10 connections, each wait
    for a reply on their connection; the server completes every upgrade and
    closes the connection at once (code 1011). Every borrower gets an error;
    what differs is how soon, and how many handshakes the server has to take
    meanwhile. Without the circuit breaker every borrower's connection is
    opened and closed in turn (each replacement backing off a little more);
    with `failure_threshold=5` the pool stops connecting after five failures
    in a row and answers the rest with `PoolUnavailable` at once.
    """
    borrowers = ctx.sizes.dead_server_borrowers
    contenders = {DEAD_OFF: None, DEAD_ON: 5}
    for name in rotate(list(contenders), ctx.rep):
        elapsed, handshakes = await _dead_server(contenders[name], borrowers)
        ctx.add(name, "ms", elapsed * 1e3)
        ctx.add(name, "handshakes", handshakes)


async def _dead_server(failure_threshold: int | None, borrowers: int) -> tuple[float, int]:
    """Seconds until ``borrowers`` all failed against a server that hangs up; its handshakes."""
    async with _fault_server(close_new_after=0.0, close_new_code=1011) as server:
        errors = 0
        async with (
            new_client() as client,
            open_pool(
                server.url,
                client=client,
                max_connections=10,
                failure_threshold=failure_threshold,
                circuit_reset=60.0,
                acquire_timeout=60.0,
            ) as pool,
        ):

            async def borrow() -> None:
                nonlocal errors
                try:
                    async with pool.connection() as ws:
                        await ws.receive_text()
                except Exception:
                    errors += 1

            gc.collect()
            with anyio.fail_after(CONTENDER_TIME_LIMIT):
                start = time.perf_counter()
                async with anyio.create_task_group() as tg:
                    for _ in range(borrowers):
                        tg.start_soon(borrow)
                elapsed = time.perf_counter() - start
        if errors != borrowers:
            raise RuntimeError(f"{borrowers - errors} borrowers got a reply from a dead server")
        return elapsed, server.handshakes


# -- 11. shared capacity (Redis) --------------------------------------------------------------

SHARED_OPEN_LOCAL = "open + close, no shared capacity"
SHARED_OPEN_REDIS = "open + close, shared_capacity (Redis on 127.0.0.1)"
SHARED_OPEN_ROUND_TRIP = "open + close, shared_capacity, every slot from Redis (no reuse)"
SHARED_LEND_LOCAL = "lend + give back, no shared capacity"
SHARED_LEND_REDIS = "lend + give back, shared_capacity"


@scenario(
    "11", SHARED_OPEN_LOCAL,
    [
        Metric("ms_per_open", "ms per connection opened and closed", "lower", 3,
               baseline=SHARED_OPEN_LOCAL),
        Metric("us_per_cycle", US, "lower", 2, baseline=SHARED_LEND_LOCAL),
    ],
    [
        Target(f"lending with a shared capacity costs the same (≤ 1.1{X})",
               SHARED_LEND_REDIS, "us_per_cycle <= 1.1", SHARED_LEND_LOCAL),
        Target("opening after a close (the slot is reused)",
               SHARED_OPEN_REDIS, "ms_per_open <= 1.1", SHARED_OPEN_LOCAL, role="reported"),
        Target("opening with a slot from Redis: one round trip more",
               SHARED_OPEN_ROUND_TRIP, "ms_per_open <= 2.0", SHARED_OPEN_LOCAL, role="reported"),
    ],
)  # fmt: skip
async def scenario_shared(ctx: Context) -> None:
    """Shared capacity: what a limit held in Redis costs

    `shared_capacity=RedisCapacity(...)` against a `redis-server` started on
    127.0.0.1 for the run, on the echo server. Opening: one task opens a new
    connection (`acquire_new()`) and closes it (`release(discard=True)`), N
    times (200 per segment in a full run). The slot of a connection closed
    stays with the process for 50 ms before it goes back to Redis, so that
    the next opening reuses it with no round trip; the third contender turns
    that off (each opening takes a slot from Redis first: one round trip, the
    slot of the connection closed given back by the pool's task, off the
    borrower's path). Lending: one task takes and gives back an idle
    connection, as in scenario 1, with and without a shared capacity: lending
    never touches Redis.
    """
    segments = ctx.sizes.segments
    opens = ctx.sizes.shared_opens
    cycles = ctx.sizes.overhead_cycles // segments
    with redis_server() as redis_url:
        capacity = RedisCapacity(redis_url, key=f"bench:{ctx.backend}:{ctx.rep}", limit=1000)

        def pool_of(shared: bool) -> ACM[WebSocketPool[AsyncWebSocketSession]]:
            if shared:
                return open_pool(ctx.uri, shared_capacity=capacity, max_connections=16)
            return open_pool(ctx.uri, max_connections=16)

        def opener(shared: bool, reuse: bool = True) -> ContenderFactory:
            @asynccontextmanager
            async def factory() -> AsyncIterator[Segment]:
                async with pool_of(shared) as pool:
                    if not reuse:
                        assert pool._fleet is not None
                        pool._fleet._linger = 0.0

                    async def loop(count: int) -> None:
                        for _ in range(count):
                            ws = await pool.acquire_new()
                            await pool.release(ws, discard=True)

                    yield cycles_segment(opens, loop)

            return factory

        def lender(shared: bool) -> ContenderFactory:
            @asynccontextmanager
            async def factory() -> AsyncIterator[Segment]:
                async with pool_of(shared) as pool:
                    await warm_pool(pool, 1)
                    yield lease_loop(cycles, pool.connection)

            return factory

        opening = await interleave(
            {
                SHARED_OPEN_LOCAL: opener(False),
                SHARED_OPEN_REDIS: opener(True),
                SHARED_OPEN_ROUND_TRIP: opener(True, reuse=False),
            },
            segments,
            ctx.rep,
        )
        for name, seconds in opening.items():
            ctx.add(name, "ms_per_open", seconds / (opens * segments) * 1e3)
        lending = await interleave(
            {SHARED_LEND_LOCAL: lender(False), SHARED_LEND_REDIS: lender(True)}, segments, ctx.rep
        )
        for name, seconds in lending.items():
            ctx.add(name, "us_per_cycle", seconds / (cycles * segments) * 1e6)


@contextmanager
def redis_server() -> Iterator[str]:
    """A ``redis-server`` on 127.0.0.1 at a free port for the block; yields its URL."""
    executable = shutil.which("redis-server")
    if executable is None:
        raise RuntimeError("redis-server is not installed (Debian: apt install redis-server)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory() as workdir:
        args = [executable, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", workdir, "--logfile", ""]  # fmt: skip
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                        sock.sendall(b"PING\r\n")
                        if sock.recv(16).startswith(b"+PONG"):
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("redis-server did not start")
                time.sleep(0.01)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            process.wait(10)
