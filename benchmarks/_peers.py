"""Scenario 7: the peer pools from the package index, asyncio only.

``aio-websocket-pool`` and ``async-websocket-pool`` pin ``websockets<16`` (and
<17), so this worker runs in a virtual environment of its own that ``run.py``
creates (``websockets`` 15, both peers, and this project installed editable).
Every contender here uses the same ``websockets`` 15 client, so that the
comparison is between pools, not between clients:

* the hand-written queue of 16 ``websockets`` connections (the baseline);
* ``anyio_wspool`` given ``connect=`` around that client;
* ``aio-websocket-pool``'s ``WebsocketConnectionPool`` (audex's design: an
  asyncio lock around every acquire and release, a ping on every reuse, and no
  waiting: a borrower that finds the pool full gets ``ConnectionPoolExhaustedError``);
* ``async-websocket-pool``, which is not a lending pool but a set of
  reconnecting listeners driven by callbacks: it supports only the persistent
  echo shape (one conversation per connection), measured as such.

The peers are imported by name at run time, so that this file type-checks in an
environment where they are not installed.

Usage: ``python benchmarks/_peers.py PORT REP [--quick] [--cpu N]``
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import platform
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import anyio.lowlevel
from _common import CLIENT_CPU, PAYLOAD, Recorder, Sizes, pin_to_cpu, sizes_for
from _scenarios import (
    ContenderFactory,
    ItemQueue,
    Segment,
    borrowers_segment,
    cycles_segment,
    floor_segment,
    interleave,
    pooled_echo_segment,
    warm_pool,
)

from anyio_wspool import open_pool

QUEUE = "queue of 16 websockets connections"
ANYIO_WSPOOL = "anyio_wspool connect=websockets"
AIO_POOL = "aio-websocket-pool"
ASYNC_POOL = "async-websocket-pool (listener callbacks)"
FLOOR = "floor: CapacityLimiter + deque"

PEER_DISTRIBUTIONS = ("aio-websocket-pool", "async-websocket-pool", "websockets", "tenacity")
CONNECTIONS = 16
TIME_LIMIT = 180.0


class Peers:
    """The peers' modules and the ``websockets`` 15 client, looked up at run time."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.aio: Any = importlib.import_module("aio_websocket_pool")
        self.listener: Any = importlib.import_module("async_websocket_pool")
        client: Any = importlib.import_module("websockets.asyncio.client")
        self._connect: Callable[..., AbstractAsyncContextManager[Any]] = client.connect

    def connect(self) -> AbstractAsyncContextManager[Any]:
        return self._connect(self.uri, compression=None)

    def aio_pool(self) -> Any:
        return self.aio.WebsocketConnectionPool(
            uri=self.uri, max_connections=CONNECTIONS, compression=None
        )


# -- overhead: acquire + release of an idle connection -------------------------------------------


async def overhead(peers: Peers, sizes: Sizes, rep: int, rec: Recorder) -> None:
    segments = sizes.segments
    cycles = max(1, sizes.peers_overhead_cycles // segments)

    @asynccontextmanager
    async def floor() -> AsyncIterator[Segment]:
        yield floor_segment(cycles, CONNECTIONS)

    @asynccontextmanager
    async def ours() -> AsyncIterator[Segment]:
        async with open_pool(connect=peers.connect, max_connections=CONNECTIONS) as pool:
            await warm_pool(pool, 1)

            async def loop(count: int) -> None:
                for _ in range(count):
                    async with pool.connection():
                        pass

            yield cycles_segment(cycles, loop)

    @asynccontextmanager
    async def aio() -> AsyncIterator[Segment]:
        async with peers.aio_pool() as pool:
            async with pool.get_connection():
                pass

            async def loop(count: int) -> None:
                for _ in range(count):
                    async with pool.get_connection():
                        pass

            yield cycles_segment(cycles, loop)

    contenders: dict[str, ContenderFactory] = {FLOOR: floor, ANYIO_WSPOOL: ours, AIO_POOL: aio}
    totals = await interleave(contenders, segments, rep)
    for name, seconds in totals.items():
        rec.add(name, "overhead_us_per_cycle", seconds / (cycles * segments) * 1e6)


# -- echo: N tasks on 16 connections, one lease per round trip -------------------------------------


async def echo(peers: Peers, sizes: Sizes, rep: int, rec: Recorder, tasks: int) -> None:
    segments = sizes.segments
    rounds = max(1, sizes.peers_round_trips // segments)
    metric = f"tasks_{tasks}"
    aio_outcomes = [0, 0]  # successful round trips, failed acquisitions (timed segments)

    @asynccontextmanager
    async def queued() -> AsyncIterator[Segment]:
        queue: ItemQueue[Any] = ItemQueue(CONNECTIONS)
        async with AsyncExitStack() as stack:
            for _ in range(CONNECTIONS):
                queue.put(await stack.enter_async_context(peers.connect()))

            async def one_round() -> None:
                ws = await queue.get()
                await ws.send(PAYLOAD)
                await ws.recv()
                queue.put(ws)

            yield borrowers_segment(tasks, rounds, one_round)

    @asynccontextmanager
    async def ours() -> AsyncIterator[Segment]:
        async with open_pool(connect=peers.connect, max_connections=CONNECTIONS) as pool:
            await warm_pool(pool, CONNECTIONS)
            yield pooled_echo_segment(pool, tasks, rounds)

    @asynccontextmanager
    async def aio() -> AsyncIterator[Segment]:
        async with peers.aio_pool() as pool:
            held = [await pool.acquire() for _ in range(CONNECTIONS)]
            for connection in held:
                await pool.release(connection)
            counting = [False]

            async def one_round() -> None:
                try:
                    async with pool.get_connection() as connection:
                        await connection.send(PAYLOAD)
                        await connection.recv()
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

    contenders: dict[str, ContenderFactory] = {QUEUE: queued, ANYIO_WSPOOL: ours, AIO_POOL: aio}
    if tasks == CONNECTIONS:
        contenders[ASYNC_POOL] = lambda: listeners(peers, rounds)
    totals = await interleave(contenders, segments, rep)
    for name, seconds in totals.items():
        done = aio_outcomes[0] if name == AIO_POOL else tasks * rounds * segments
        rec.add(name, f"{metric}_round_trips_per_s", done / seconds)
        rec.add(name, f"{metric}_failed_acquires", aio_outcomes[1] if name == AIO_POOL else 0)


@asynccontextmanager
async def listeners(peers: Peers, rounds: int) -> AsyncIterator[Segment]:
    """async-websocket-pool: 16 listener connections, each echoing ``rounds`` times a segment.

    Its ``connect()`` reads messages and hands each to ``on_message`` in a new
    task; there is no acquire/release. Each connection keeps one message in
    flight: a segment sends the first message on every connection, and
    ``on_message`` sends the next one until the connection's count is reached.
    """
    sockets: list[Any] = []
    left = [0] * CONNECTIONS
    finished = [0]
    all_finished = [anyio.Event()]

    def conversation(index: int) -> Callable[[], Awaitable[None]]:
        async def on_connect(ws: Any) -> None:
            sockets.append((index, ws))

        async def on_message(message: Any) -> None:
            left[index] -= 1
            if left[index] > 0:
                await dict(sockets)[index].send(PAYLOAD)
                return
            finished[0] += 1
            if finished[0] == CONNECTIONS:
                all_finished[0].set()

        async def run() -> None:
            await peers.listener.connect(peers.uri, on_message, on_connect, compression=None)

        return run

    async def segment(warmup: bool) -> float:
        count = max(1, rounds // 5) if warmup else rounds
        finished[0] = 0
        all_finished[0] = anyio.Event()
        start = time.perf_counter()
        for index, ws in sockets:
            left[index] = count
            await ws.send(PAYLOAD)
        await all_finished[0].wait()
        return time.perf_counter() - start

    async with anyio.create_task_group() as tg:
        tg.start_soon(
            peers.listener.run_pool, [conversation(index) for index in range(CONNECTIONS)]
        )
        with anyio.fail_after(TIME_LIMIT):
            for _ in range(100_000):
                if len(sockets) == CONNECTIONS:
                    break
                await anyio.lowlevel.checkpoint()
        yield segment
        tg.cancel_scope.cancel()


async def _main(port: int, rep: int, sizes: Sizes, rec: Recorder) -> None:
    peers = Peers(f"ws://127.0.0.1:{port}/echo")
    await overhead(peers, sizes, rep, rec)
    await echo(peers, sizes, rep, rec, CONNECTIONS)
    await echo(peers, sizes, rep, rec, 4 * CONNECTIONS)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int)
    parser.add_argument("rep", type=int)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--cpu", type=int, default=CLIENT_CPU)
    args = parser.parse_args(argv)
    rec = Recorder("peers")
    rec.note("pinned", str(pin_to_cpu(args.cpu)))
    rec.note("python", platform.python_version())
    rec.note("loop", "asyncio")
    for name in PEER_DISTRIBUTIONS:
        rec.note(f"version {name}", importlib.metadata.version(name))
    start = time.monotonic()
    try:
        anyio.run(_main, args.port, args.rep, sizes_for(args.quick), rec)
    except Exception:
        rec.fail(traceback.format_exc())
    rec.seconds = time.monotonic() - start
    rec.emit()


if __name__ == "__main__":
    main()
