"""``python -m anyio_wspool``: the pool's main job, against a local echo server.

Starts a small echo server on 127.0.0.1 (an ephemeral port, in the same event
loop), runs a bounded concurrent workload of round trips through the pool, then
the same workload opening a connection per request, and prints what each cost:
handshakes (counted by the server), round trips per second, the pool's stats.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
from anyio.abc import SocketStream
from httpx_ws import AsyncWebSocketSession, aconnect_ws
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Request,
    TextMessage,
)

from ._api import open_pool


@dataclass
class EchoServer:
    """Counts what a real server would see: handshakes and open sockets."""

    port: int = 0
    handshakes: int = 0
    open: int = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/echo"

    async def serve(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=self.port)
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with listener:
            task_status.started()
            await listener.serve(self._handle)

    async def _handle(self, stream: SocketStream) -> None:
        ws = WSConnection(ConnectionType.SERVER)
        upgraded = False
        async with stream:
            try:
                while True:
                    data = await stream.receive()
                    ws.receive_data(data)
                    for event in ws.events():
                        if isinstance(event, Request):
                            self.handshakes += 1
                            self.open += 1
                            upgraded = True
                            await stream.send(ws.send(AcceptConnection()))
                        elif isinstance(event, TextMessage | BytesMessage):
                            await stream.send(ws.send(event))
                        elif isinstance(event, Ping):
                            await stream.send(ws.send(event.response()))
                        elif isinstance(event, CloseConnection):
                            await stream.send(ws.send(event.response()))
                            return
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                return
            finally:
                if upgraded:
                    self.open -= 1


class Progress:
    """One status line, rewritten in place on a terminal, every quarter second."""

    def __init__(self, label: str, total: int) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self.tty = sys.stdout.isatty()

    def line(self, elapsed: float) -> str:
        rate = self.done / elapsed if elapsed > 0 else 0.0
        return f"  {self.label:<26} {self.done:>6}/{self.total} round trips  {rate:>8.0f}/s"

    async def show(self, started: float) -> None:
        while True:
            await anyio.sleep(0.25)
            text = self.line(anyio.current_time() - started)
            if self.tty:
                print("\r" + text, end="", flush=True)
            else:
                print(text, flush=True)


async def timed(label: str, total: int, work: Callable[[Progress], Awaitable[None]]) -> float:
    progress = Progress(label, total)
    started = anyio.current_time()
    async with anyio.create_task_group() as tg:
        tg.start_soon(progress.show, started)
        await work(progress)
        tg.cancel_scope.cancel()
    elapsed = anyio.current_time() - started
    print(("\r" if progress.tty else "") + progress.line(elapsed), flush=True)
    return elapsed


async def run(tasks: int, round_trips: int, max_connections: int) -> None:
    total = tasks * round_trips
    async with anyio.create_task_group() as tg:
        server = EchoServer()
        await tg.start(server.serve)
        print(f"echo server on {server.url}; {tasks} tasks x {round_trips} round trips")

        async def workload(
            progress: Progress, connect: Callable[[], AbstractAsyncContextManager[Any]]
        ) -> None:
            async def worker(n: int) -> None:
                for i in range(round_trips):
                    async with connect() as ws:
                        await ws.send_text(f"{n}:{i}")
                        if await ws.receive_text() != f"{n}:{i}":
                            raise RuntimeError("the echo did not match")
                    progress.done += 1

            async with anyio.create_task_group() as workers:
                for n in range(tasks):
                    workers.start_soon(worker, n)

        async def through_pool(progress: Progress) -> None:
            async with open_pool(server.url, max_connections=max_connections) as pool:
                await workload(progress, pool.connection)
                stats.append(pool.stats)

        async def per_request(progress: Progress) -> None:
            limit = anyio.CapacityLimiter(max_connections)
            async with httpx.AsyncClient() as client:

                @asynccontextmanager
                async def connect() -> AsyncIterator[AsyncWebSocketSession]:
                    async with (
                        limit,
                        aconnect_ws(server.url, client, session_class=AsyncWebSocketSession) as ws,
                    ):
                        yield ws

                await workload(progress, connect)

        stats: list[object] = []
        before = server.handshakes
        pooled = await timed("through the pool", total, through_pool)
        pooled_handshakes = server.handshakes - before
        before = server.handshakes
        direct = await timed("connecting per request", total, per_request)
        direct_handshakes = server.handshakes - before
        tg.cancel_scope.cancel()

    print()
    print(f"{'':<26} {'handshakes':>10} {'round trips/s':>14}")
    print(f"{'pool':<26} {pooled_handshakes:>10} {total / pooled:>14.0f}")
    print(f"{'connect per request':<26} {direct_handshakes:>10} {total / direct:>14.0f}")
    print(f"the pool was {direct / pooled:.1f}x faster with {pooled_handshakes} handshakes")
    print(f"pool stats: {stats[0]}")
    if server.open:
        raise RuntimeError(f"{server.open} connections were left open")


async def serve_echo(port: int) -> None:
    """Only the echo server, until interrupted (for the examples)."""
    async with anyio.create_task_group() as tg:
        server = EchoServer(port=port)
        await tg.start(server.serve)
        print(f"echo server on {server.url} (Ctrl-C to stop)", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m anyio_wspool",
        description="Run a workload through the pool against a local echo server.",
    )
    parser.add_argument("--backend", choices=["asyncio", "uvloop", "trio"], default="asyncio")
    parser.add_argument("--tasks", type=int, default=32, help="concurrent tasks (default 32)")
    parser.add_argument(
        "--round-trips", type=int, default=100, help="round trips per task (default 100)"
    )
    parser.add_argument("--max-connections", type=int, default=8, help="pool capacity (default 8)")
    parser.add_argument(
        "--echo-server",
        action="store_true",
        help="only run the echo server on 127.0.0.1 until interrupted (to try the examples)",
    )
    parser.add_argument(
        "--port", type=int, default=8765, help="the port of --echo-server (default 8765; 0: any)"
    )
    args = parser.parse_args(argv)
    if args.echo_server:
        if not 0 <= args.port <= 65535:
            parser.error("--port must be within 0..65535")
        with contextlib.suppress(KeyboardInterrupt):
            anyio.run(serve_echo, args.port, backend="asyncio")
        return
    if not (1 <= args.tasks <= 1000 and 1 <= args.round_trips <= 10_000):
        parser.error("--tasks must be within 1..1000 and --round-trips within 1..10000")
    backend, options = args.backend, {}
    if backend == "uvloop":
        backend, options = "asyncio", {"use_uvloop": True}
    print(f"anyio_wspool demo on {args.backend}")
    started = time.perf_counter()
    anyio.run(
        run,
        args.tasks,
        args.round_trips,
        args.max_connections,
        backend=backend,
        backend_options=options,
    )
    print(f"done in {time.perf_counter() - started:.1f} s")
