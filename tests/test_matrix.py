"""The cancellation and close matrix: every await point of a lease, hit by both.

A borrower is brought to one await point of acquiring (waiting in the queue,
a handshake in flight, the back-off between attempts, ``on_connect``, the
``check_on_acquire`` ping) or of releasing (``on_release``, the drain), or
the pool to the await of its own closing. Then either the borrower is
cancelled there, or the pool is closed there. After each, the pool's stats,
the server's counts and the running tasks must agree: nothing hangs, nothing
leaks, a cancelled borrower leaves no trace and the capacity is whole again,
a borrower caught by the close gets ``PoolClosed``, and leaving the pool takes
at most about ``close_timeout``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from httpx_ws import AsyncWebSocketSession

from anyio_wspool import PoolClosed, WebSocketPool

from ._stacks import open_pool
from ._util import until
from ._wsserver import WSServer

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("stack")]

CLOSE_TIMEOUT = 0.5
#: what leaving may take beyond close_timeout (scheduling, sockets on loopback)
SLACK = 1.0


@dataclass
class Point:
    """How to bring a borrower to one await point, and how to clear the fault after."""

    options: dict[str, Any]
    #: prepares the server/pool, then starts the borrower through ``borrow``
    setup: Callable[[Scenario], Awaitable[None]]
    #: true once the borrower is at the point
    reached: Callable[[Scenario], bool]
    #: whether the borrower is inside acquire (else: it released, the pool works on)
    acquiring: bool = True


@dataclass
class Scenario:
    server: WSServer
    pool: WebSocketPool[AsyncWebSocketSession] = field(init=False)
    hook_entered: anyio.Event = field(default_factory=anyio.Event)
    hook_release: anyio.Event = field(default_factory=anyio.Event)
    pinging: anyio.Event = field(default_factory=anyio.Event)
    outcome: BaseException | str | None = None
    borrower_scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    held: AsyncWebSocketSession | None = None

    async def borrow(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """The borrower under test: one lease with one echo, its outcome recorded."""
        with self.borrower_scope:
            task_status.started()
            try:
                async with self.pool.connection() as ws:
                    await ws.send_text("hi")
                    assert await ws.receive_text() == "hi"
                self.outcome = "ok"
            except Exception as exc:
                self.outcome = exc
                return
            except BaseException as exc:
                self.outcome = exc
                raise
        if self.borrower_scope.cancelled_caught:
            self.outcome = "cancelled"

    async def hang_hook(self, ws: AsyncWebSocketSession) -> None:
        self.hook_entered.set()
        await self.hook_release.wait()


async def _start_borrower(s: Scenario, tg: anyio.abc.TaskGroup) -> None:
    await tg.start(s.borrow)


# -- the points --------------------------------------------------------------------


async def _waiting(s: Scenario) -> None:
    s.held = await s.pool.acquire()


async def _connecting(s: Scenario) -> None:
    s.server.silent = True  # accepts TCP, never answers the upgrade


async def _backing_off(s: Scenario) -> None:
    s.server.reject_status = 503
    assert s.pool._host is not None
    s.pool._host._rng.uniform = lambda a, b: b  # type: ignore[method-assign]


async def _pinging(s: Scenario) -> None:
    async with s.pool.connection():
        pass  # one idle connection, to be pinged
    s.server.answer_pings = False
    connector: Any = s.pool._connector
    ping = connector.ping

    async def observed(resource: Any) -> None:
        s.pinging.set()
        await ping(resource)

    connector.ping = observed


async def _nothing(s: Scenario) -> None:
    pass


POINTS: dict[str, Point] = {
    "waiting": Point({"max_connections": 1}, _waiting, lambda s: s.pool.stats.waiting == 1),
    # (A handshake in flight outlives its borrower's cancellation: it is kept
    # for the next borrower, who waits for it at most connect_timeout.)
    "connecting": Point(
        {"connect_timeout": 2.0}, _connecting, lambda s: s.server.tcp_accepted >= 1
    ),
    "backing-off": Point(
        {"connect_attempts": 3, "retry_backoff": 60.0, "retry_backoff_max": 60.0},
        _backing_off,
        lambda s: s.server.rejected >= 1 and s.pool.stats.connect_failures >= 1,
    ),
    "on_connect": Point({}, _nothing, lambda s: s.hook_entered.is_set()),
    "ping": Point(
        {"check_on_acquire": True, "connect_timeout": 60.0, "acquire_timeout": 120.0},
        _pinging,
        lambda s: s.pinging.is_set(),
    ),
    "on_release": Point({}, _nothing, lambda s: s.hook_entered.is_set(), acquiring=False),
    "drain": Point(
        {"drain_on_release": True, "drain_quiet_period": 60.0, "drain_timeout": 120.0},
        _nothing,
        lambda s: s.pool.stats.draining == 1,
        acquiring=False,
    ),
}


def _options(name: str, s: Scenario) -> dict[str, Any]:
    options: dict[str, Any] = {"close_timeout": CLOSE_TIMEOUT, **POINTS[name].options}
    if name == "on_connect":
        options["on_connect"] = s.hang_hook
    if name == "on_release":
        options["on_release"] = s.hang_hook
    return options


def _pool_tasks() -> list[str]:
    return [
        task.name
        for task in anyio.get_running_tasks()
        if task.name is not None and task.name.startswith("anyio_wspool")
    ]


def _assert_consistent(pool: WebSocketPool[Any]) -> None:
    stats = pool.stats
    held = stats.connecting + stats.idle + stats.in_use + stats.draining + stats.closing
    assert held <= stats.max_connections, stats
    assert min(stats.connecting, stats.idle, stats.in_use, stats.draining, stats.waiting) >= 0


@asynccontextmanager
async def _scenario(server: WSServer, name: str) -> AsyncIterator[Scenario]:
    s = Scenario(server)
    s.pool = open_pool(server.url, **_options(name, s))
    async with s.pool:
        await POINTS[name].setup(s)
        yield s


@pytest.mark.parametrize("name", list(POINTS))
async def test_cancelled_there_leaves_no_trace(ws_server: WSServer, name: str) -> None:
    point = POINTS[name]
    before = set(_pool_tasks())
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg, _scenario(ws_server, name) as s:
            await _start_borrower(s, tg)
            await until(lambda: point.reached(s), limit=5)
            s.borrower_scope.cancel()
            await until(lambda: s.outcome is not None, limit=5)
            if point.acquiring:
                assert s.outcome == "cancelled"
                # The queue forgot it; no connection is lent to nobody.
                await until(lambda: s.pool.stats.waiting == 0, limit=5)
                assert s.pool.stats.in_use == (1 if s.held is not None else 0)
            else:
                assert s.outcome == "ok"  # it had released; the pool works on
            _assert_consistent(s.pool)
            # The capacity is whole: with the fault cleared, a borrower is served.
            ws_server.silent = False
            ws_server.reject_status = None
            ws_server.answer_pings = True
            s.hook_release.set()
            if s.held is not None:
                await s.pool.release(s.held)
            with anyio.fail_after(5):
                async with s.pool.connection() as ws:
                    await ws.send_text("after")
                    assert await ws.receive_text() == "after"
            _assert_consistent(s.pool)
        await ws_server.wait_until(lambda: ws_server.open_connections == 0)
    assert set(_pool_tasks()) == before


@pytest.mark.parametrize("name", list(POINTS))
async def test_closed_there_is_prompt_and_clean(ws_server: WSServer, name: str) -> None:
    point = POINTS[name]
    before = set(_pool_tasks())
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            s = Scenario(ws_server)
            s.pool = open_pool(ws_server.url, **_options(name, s))
            async with s.pool:
                await point.setup(s)
                await _start_borrower(s, tg)
                await until(lambda: point.reached(s), limit=5)
                started = anyio.current_time()
                await s.pool.aclose()
                closed_in = anyio.current_time() - started
                await until(lambda: s.outcome is not None, limit=5)
                if point.acquiring:
                    assert isinstance(s.outcome, PoolClosed), s.outcome
                else:
                    assert s.outcome == "ok"
                stats = s.pool.stats
                assert (stats.connecting, stats.idle, stats.draining, stats.waiting) == (
                    0,
                    0,
                    0,
                    0,
                )
                if s.held is not None:
                    await s.pool.release(s.held)  # a no-op on a closed pool
            assert closed_in <= CLOSE_TIMEOUT + SLACK
        await ws_server.wait_until(lambda: ws_server.open_connections == 0)
    assert set(_pool_tasks()) == before


@pytest.mark.parametrize("name", list(POINTS))
async def test_leaving_there_is_prompt(ws_server: WSServer, name: str) -> None:
    point = POINTS[name]
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            s = Scenario(ws_server)
            s.pool = open_pool(ws_server.url, **_options(name, s))
            async with s.pool:
                await point.setup(s)
                await _start_borrower(s, tg)
                await until(lambda: point.reached(s), limit=5)
                started = anyio.current_time()
            assert anyio.current_time() - started <= CLOSE_TIMEOUT + SLACK
        await ws_server.wait_until(lambda: ws_server.open_connections == 0)


async def test_cancelling_aclose_still_closes_everything() -> None:
    closed: list[object] = []

    async def connect() -> object:
        return object()

    async def slow_close(resource: object) -> None:
        await anyio.sleep(60)  # bounded by close_timeout
        closed.append(resource)  # pragma: no cover

    with anyio.fail_after(20):
        async with open_pool(
            connect=connect, close=slow_close, close_timeout=CLOSE_TIMEOUT
        ) as pool:
            async with pool.connection():
                pass
            started = anyio.current_time()
            with anyio.move_on_after(0.05) as scope:
                await pool.aclose()
            assert scope.cancelled_caught
            assert pool.is_closed
            assert pool.stats.closing == 1
        assert anyio.current_time() - started <= CLOSE_TIMEOUT + SLACK
        stats = pool.stats
        assert (stats.idle, stats.closing, stats.closed) == (0, 0, 1)
