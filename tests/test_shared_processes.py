"""A fleet of real processes, each with its own pool, under one limit held in a real Redis.

Each process is ``tests/_fleet_worker.py`` on the test's backend, against the
test's WebSocket server, which counts the connections open at any moment.
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import Process
from anyio.streams.text import TextReceiveStream

from ._redis import RedisServer, redis_key, redis_server, zcard
from ._wsserver import WSServer

__all__ = ("redis_key", "redis_server")

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent


def _backend_name(anyio_backend: tuple[str, dict[str, Any]]) -> str:
    name, options = anyio_backend
    return "asyncio+uvloop" if options.get("use_uvloop") else name


class Worker:
    """One process of the fleet: its orders in, its JSON lines out."""

    def __init__(self, process: Process) -> None:
        self.process = process
        assert process.stdout is not None
        self._lines = TextReceiveStream(process.stdout)
        self._buffer = ""

    async def next(self) -> dict[str, Any]:
        """The next JSON line the worker says."""
        while "\n" not in self._buffer:
            self._buffer += await self._lines.receive()
        line, self._buffer = self._buffer.split("\n", 1)
        said: dict[str, Any] = json.loads(line)
        return said

    async def expect(self, event: str) -> dict[str, Any]:
        said = await self.next()
        assert said["event"] == event, said
        return said

    async def order(self, line: str) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send(f"{line}\n".encode())


@asynccontextmanager
async def fleet(
    count: int,
    mode: str,
    *,
    anyio_backend: tuple[str, dict[str, Any]],
    ws: WSServer,
    redis: RedisServer,
    key: str,
    limit: int,
    **options: Any,
) -> AsyncIterator[list[Worker]]:
    """``count`` workers in ``mode``; each is killed at exit if it is still running."""
    args = [
        sys.executable,
        "-m",
        "tests._fleet_worker",
        mode,
        "--backend",
        _backend_name(anyio_backend),
        "--ws",
        ws.url,
        "--redis",
        redis.url,
        "--key",
        key,
        "--limit",
        str(limit),
    ]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        args += [flag] if value is True else [flag, str(value)]
    async with AsyncExitStack() as stack:
        workers = []
        for _ in range(count):
            process = await anyio.open_process(args, cwd=ROOT, stderr=None)
            stack.push_async_callback(_end, process)
            workers.append(Worker(process))
        yield workers


async def _end(process: Process) -> None:
    with anyio.CancelScope(shield=True):
        if process.returncode is None:
            process.kill()
        await process.wait()
        await process.aclose()


@pytest.mark.parametrize("fresh", [False, True], ids=["churn", "racing-new-connections"])
async def test_processes_never_exceed_the_shared_limit(
    anyio_backend: tuple[str, dict[str, Any]],
    ws_server: WSServer,
    redis_server: RedisServer,
    redis_key: str,
    fresh: bool,
) -> None:
    # churn: 4 processes, 6 borrowers each, 8 round trips each, every third
    # lease closed; racing: 52 borrowers in 4 processes each opening a new
    # connection at the same moment, 3 times. The server never sees more than
    # the limit open at once, and every borrower is served.
    limit = 5 if not fresh else 7
    tasks, rounds = (6, 8) if not fresh else (13, 3)
    options: dict[str, Any] = {"tasks": tasks, "rounds": rounds, "max_connections": 16}
    options["fresh" if fresh else "churn"] = True
    with anyio.fail_after(90):
        async with fleet(
            4,
            "borrow",
            anyio_backend=anyio_backend,
            ws=ws_server,
            redis=redis_server,
            key=redis_key,
            limit=limit,
            **options,
        ) as workers:
            for worker in workers:
                await worker.expect("ready")
            for worker in workers:
                await worker.order("go")
            served = [await worker.expect("served") for worker in workers]
            for worker in workers:
                assert await worker.process.wait() == 0
    assert [said["count"] for said in served] == [tasks * rounds] * 4
    assert sum(said["opened"] for said in served) > limit  # connections did come and go
    assert 0 < ws_server.max_open <= limit
    assert await zcard(redis_server, f"{redis_key}:slots") == 0  # every process gave its slots back


async def test_slots_of_a_killed_process_come_back_after_lease_ttl(
    anyio_backend: tuple[str, dict[str, Any]],
    ws_server: WSServer,
    redis_server: RedisServer,
    redis_key: str,
) -> None:
    lease_ttl = 1.0
    common: dict[str, Any] = {
        "anyio_backend": anyio_backend,
        "ws": ws_server,
        "redis": redis_server,
        "key": redis_key,
        "limit": 2,
        "lease_ttl": lease_ttl,
    }
    with anyio.fail_after(60):
        async with (
            fleet(1, "hold", tasks=2, **common) as (holder,),
            fleet(1, "borrow", tasks=1, rounds=1, acquire_timeout=30, **common) as (borrower,),
        ):
            await holder.expect("held")
            await borrower.expect("ready")
            await borrower.order("go")
            holder.process.send_signal(signal.SIGKILL)
            killed_at = anyio.current_time()
            await holder.process.wait()
            said = await borrower.expect("served")
            waited = anyio.current_time() - killed_at
    assert said["count"] == 1
    # Within lease_ttl (and the borrower's next poll, and the start of a process).
    assert waited < lease_ttl + 2.0
    assert ws_server.max_open <= 2


async def test_idle_connections_flow_to_the_process_that_waits(
    anyio_backend: tuple[str, dict[str, Any]],
    ws_server: WSServer,
    redis_server: RedisServer,
    redis_key: str,
) -> None:
    cleanup_interval = 0.3
    common: dict[str, Any] = {
        "anyio_backend": anyio_backend,
        "ws": ws_server,
        "redis": redis_server,
        "key": redis_key,
        "limit": 3,
        "cleanup_interval": cleanup_interval,
    }
    with anyio.fail_after(60):
        async with (
            fleet(1, "idle", tasks=3, **common) as (idle,),
            fleet(1, "borrow", tasks=3, rounds=2, acquire_timeout=30, **common) as (borrower,),
        ):
            assert (await idle.expect("idle"))["count"] == 3
            await borrower.expect("ready")
            started = anyio.current_time()
            await borrower.order("go")
            said = await borrower.expect("served")
            waited = anyio.current_time() - started
            await idle.order("exit")
            stats = await idle.expect("stats")
            assert await idle.process.wait() == 0
    assert said["count"] == 6
    assert stats["closed"] == 3  # given up for the other process
    assert waited < cleanup_interval + 2.0
    assert ws_server.max_open <= 3
    assert await zcard(redis_server, f"{redis_key}:slots") == 0
