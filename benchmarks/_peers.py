"""Scenario 7: the peer pools from the package index, asyncio only.

They pin ``websockets<16``, so this scenario runs in a virtual environment of
its own that ``run.py`` creates (``websockets`` 15, both peers, and this
project installed editable). The peers are imported by name at run time, so
that this file type-checks where they are not installed.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import anyio
from _scenarios import (
    OVERHEAD_FLOOR,
    PAYLOAD,
    RATE,
    US,
    ContenderFactory,
    Context,
    Metric,
    Segment,
    Target,
    borrowers_segment,
    echo_websockets,
    floor_segment,
    interleave,
    lease_loop,
    pooled,
    queued,
    scenario,
    wait_until,
    warm_pool,
)

from anyio_wspool import open_pool

QUEUE = "queue of 16 websockets connections"
ANYIO_WSPOOL = "anyio_wspool connect=websockets"
AIO_POOL = "aio-websocket-pool"
ASYNC_POOL = "async-websocket-pool (listener callbacks)"

PEER_DISTRIBUTIONS = ("aio-websocket-pool", "async-websocket-pool", "websockets", "tenacity")
CONNECTIONS = 16


@scenario(
    "7", QUEUE,
    [
        Metric("overhead_us_per_cycle", "overhead, " + US, "lower", 2, baseline=OVERHEAD_FLOOR),
        Metric("tasks_16_round_trips_per_s", "16 tasks on 16 connections, " + RATE, "higher", 0),
        Metric("tasks_64_round_trips_per_s", "64 tasks on 16 connections, " + RATE, "higher", 0),
        Metric("tasks_64_failed_acquires", "64 tasks: failed acquisitions", "lower", 0, False),
    ],
    [
        Target("peers, 64 tasks: anyio_wspool against the queue (websockets 15)",
               ANYIO_WSPOOL, "tasks_64_round_trips_per_s >= 0.95", QUEUE, role="reported"),
        Target("peers, 64 tasks: aio-websocket-pool against the queue",
               AIO_POOL, "tasks_64_round_trips_per_s >= 0.95", QUEUE, role="reported"),
        Target("peers, 16 tasks: async-websocket-pool against the queue",
               ASYNC_POOL, "tasks_16_round_trips_per_s >= 0.95", QUEUE, role="reported"),
        Target("peers, overhead: anyio_wspool against aio-websocket-pool",
               ANYIO_WSPOOL, "overhead_us_per_cycle <= 1.0", AIO_POOL, role="reported"),
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
            uri=ctx.uri, max_connections=CONNECTIONS, compression=None
        )

    await _overhead(ctx, connect, aio_pool)
    for tasks in (CONNECTIONS, 4 * CONNECTIONS):
        await _echo(ctx, connect, aio_pool, tasks)


async def _overhead(ctx: Context, connect: Callable[[], Any], aio_pool: Callable[[], Any]) -> None:
    """Acquire + release of an idle connection: anyio_wspool, aio-websocket-pool, the floor."""
    segments = ctx.sizes.segments
    cycles = max(1, ctx.sizes.peers_overhead_cycles // segments)

    @asynccontextmanager
    async def floor() -> AsyncIterator[Segment]:
        yield floor_segment(cycles, CONNECTIONS)

    @asynccontextmanager
    async def ours() -> AsyncIterator[Segment]:
        async with open_pool(connect=connect, max_connections=CONNECTIONS) as pool:
            await warm_pool(pool, 1)
            yield lease_loop(cycles, pool.connection)

    @asynccontextmanager
    async def aio() -> AsyncIterator[Segment]:
        async with aio_pool() as pool:
            async with pool.get_connection():
                pass
            yield lease_loop(cycles, pool.get_connection)

    contenders = {OVERHEAD_FLOOR: floor, ANYIO_WSPOOL: ours, AIO_POOL: aio}
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
            held = [await pool.acquire() for _ in range(CONNECTIONS)]
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
        QUEUE: queued(connect, CONNECTIONS, tasks, rounds, echo_websockets),
        ANYIO_WSPOOL: pooled(
            lambda: open_pool(connect=connect, max_connections=CONNECTIONS),
            CONNECTIONS,
            tasks,
            rounds,
            echo_websockets,
        ),
        AIO_POOL: aio,
    }
    if tasks == CONNECTIONS:
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
    left = [0] * CONNECTIONS
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
            if finished[0] == CONNECTIONS:
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
        tg.start_soon(listener.run_pool, [conversation(index) for index in range(CONNECTIONS)])
        await wait_until(lambda: len(sockets) == CONNECTIONS)
        yield segment
        tg.cancel_scope.cancel()
