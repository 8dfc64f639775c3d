"""``shared_capacity=RedisCapacity(...)``: one limit for many pools, held in a real Redis.

Pools in this process stand for processes here (each pool has its own name in
Redis, as a pool in another process would); tests/test_shared_processes.py
runs real processes.
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from typing import Any

import anyio
import coredis
import pytest

from anyio_wspool import (
    PoolStats,
    PoolTimeout,
    PoolUnavailable,
    RedisCapacity,
    RetiredEvent,
    WebSocketPool,
    open_pool,
    open_pool_group,
)

from ._redis import (
    RedisServer,
    collect_failed_connections,
    keys_of,
    redis_key,
    redis_server,
    run_redis_server,
    until_zcard,
    zcard,
)
from ._util import until
from ._wsserver import WSServer, serve_ws

__all__ = ("collect_failed_connections", "redis_key", "redis_server")

pytestmark = pytest.mark.anyio


async def _echo(ws: Any, text: str = "x") -> None:
    await ws.send_text(text)
    assert await ws.receive_text() == text


def _capacity(server: RedisServer, key: str, limit: int, **options: Any) -> RedisCapacity:
    return RedisCapacity(server.url, key=key, limit=limit, **options)


async def test_two_pools_share_one_limit_and_a_closed_connection_frees_a_slot(
    redis_server: RedisServer, redis_key: str, ws_server: WSServer
) -> None:
    # Each pool may open 3, the two together 2: the third borrower waits for
    # a connection to close (not for one to be released: an idle connection
    # keeps its slot), then is served.
    with anyio.fail_after(10):
        async with (
            open_pool(
                ws_server.url,
                max_connections=3,
                shared_capacity=_capacity(redis_server, redis_key, 2),
            ) as a,
            open_pool(
                ws_server.url,
                max_connections=3,
                shared_capacity=_capacity(redis_server, redis_key, 2),
            ) as b,
        ):
            first = await a.acquire()
            second = await b.acquire()
            assert ws_server.open_connections == 2
            assert await zcard(redis_server, f"{redis_key}:slots") == 2
            assert a.stats.shared_limit == 2
            assert b.stats.shared_in_use == 2
            served = anyio.Event()

            async def third() -> None:
                async with a.connection() as ws:
                    await _echo(ws)
                served.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(third)
                await until(lambda: a.stats.waiting == 1)
                await b.release(second)  # idle: still holds its slot
                with anyio.move_on_after(0.3):
                    await served.wait()
                assert not served.is_set()
                assert ws_server.max_open == 2
                await b.release(await b.acquire(), discard=True)  # closed: its slot is free
                await served.wait()
            assert ws_server.max_open == 2
            await a.release(first)
        assert await zcard(redis_server, f"{redis_key}:slots") == 0  # given back at close
    assert await keys_of(redis_server, redis_key) == []


async def test_lending_and_giving_back_never_touch_redis(
    redis_server: RedisServer, redis_key: str, ws_server: WSServer
) -> None:
    # With Redis frozen, connections already open are lent and given back as
    # usual: only opening and closing one talks to Redis.
    capacity = _capacity(redis_server, redis_key, 4)
    with anyio.fail_after(10):
        async with open_pool(ws_server.url, shared_capacity=capacity) as pool:
            async with pool.connection() as ws:
                await _echo(ws)
            redis_server.pause()
            try:
                for _ in range(20):
                    async with pool.connection() as ws:
                        await _echo(ws)
            finally:
                redis_server.resume()
            assert ws_server.handshakes == 1
            assert pool.stats.reused == 20


async def test_fail_policy_turns_away_borrowers_that_need_a_new_connection(
    redis_server: RedisServer,
    redis_key: str,
    ws_server: WSServer,
    collect_failed_connections: None,
) -> None:
    capacity = _capacity(redis_server, redis_key, 4, lease_ttl=1.0)
    with anyio.fail_after(20):
        async with open_pool(ws_server.url, shared_capacity=capacity) as pool:
            held = await pool.acquire()
            redis_server.stop()
            try:
                with pytest.raises(PoolUnavailable, match="shared capacity") as info:
                    await pool.acquire()  # needs a new connection
                assert isinstance(info.value.__cause__, coredis.exceptions.RedisError)
                assert redis_server.url not in str(info.value)
                assert pool.stats.unavailable == 1
                await pool.release(held)
                async with pool.connection() as ws:
                    await _echo(ws)  # an open connection is still lent
                assert ws_server.handshakes == 1
            finally:
                redis_server.start()
            # Redis is back (empty): new connections take slots again.
            async with pool.new_connection() as ws:
                await _echo(ws)
            assert ws_server.handshakes == 2
            # The connection opened before the restart takes a slot again at
            # the next refresh (lease_ttl / 3).
            await until_zcard(redis_server, f"{redis_key}:slots", 2)
    # Nothing is left behind, in Redis or at the server.
    assert await keys_of(redis_server, redis_key) == []
    await ws_server.wait_until(lambda: ws_server.open_connections == 0)


async def test_local_policy_goes_on_under_the_local_cap_and_warns_once(
    redis_server: RedisServer,
    redis_key: str,
    ws_server: WSServer,
    collect_failed_connections: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    capacity = _capacity(redis_server, redis_key, 1, lease_ttl=0.6, when_unavailable="local")
    caplog.set_level(logging.WARNING, logger="anyio_wspool")
    with anyio.fail_after(20):
        async with open_pool(
            ws_server.url, max_connections=3, shared_capacity=capacity, acquire_timeout=10
        ) as pool:
            redis_server.stop()
            try:
                held = [await pool.acquire() for _ in range(3)]  # beyond the shared limit of 1
                assert ws_server.open_connections == 3
                for ws in held:
                    await pool.release(ws)
            finally:
                redis_server.start()
            unavailable = [r for r in caplog.records if "unavailable" in r.getMessage()]
            assert len(unavailable) == 1
            assert redis_server.url not in caplog.text
            # Redis is back: the open connections take slots again (one gets
            # the one slot); the idle ones left without a slot are closed.
            await ws_server.wait_until(lambda: ws_server.open_connections == 1, timeout=10)
            await until(lambda: pool.stats.shared_in_use == 1, limit=10)
            assert await zcard(redis_server, f"{redis_key}:slots") == 1
    assert await keys_of(redis_server, redis_key) == []
    await ws_server.wait_until(lambda: ws_server.open_connections == 0)


async def test_idle_connections_flow_to_a_pool_that_waits(
    redis_server: RedisServer, redis_key: str, ws_server: WSServer
) -> None:
    # Pool A holds both slots with idle connections; pool B's borrower waits
    # at the shared limit. Within about cleanup_interval, A gives its idle
    # connections up and B is served.
    events: list[Any] = []
    with anyio.fail_after(15):
        async with (
            open_pool(
                ws_server.url,
                shared_capacity=_capacity(redis_server, redis_key, 2),
                cleanup_interval=0.2,
                on_event=events.append,
            ) as a,
            open_pool(
                ws_server.url,
                shared_capacity=_capacity(redis_server, redis_key, 2),
                cleanup_interval=0.2,
                acquire_timeout=10,
            ) as b,
        ):
            held = [await a.acquire(), await a.acquire()]
            for ws in held:
                await a.release(ws)
            assert a.stats.idle == 2
            started = anyio.current_time()
            async with b.connection() as ws:
                await _echo(ws)
            waited = anyio.current_time() - started
            assert waited < 3.0
            assert a.stats.idle <= 1
            assert ws_server.max_open == 2
    reasons = [event.reason for event in events if isinstance(event, RetiredEvent)]
    assert "shared_limit" in reasons


async def test_min_connections_are_never_given_up(
    redis_server: RedisServer, redis_key: str, ws_server: WSServer
) -> None:
    with anyio.fail_after(10):
        async with (
            open_pool(
                ws_server.url,
                min_connections=1,
                shared_capacity=_capacity(redis_server, redis_key, 1),
                cleanup_interval=0.1,
            ) as a,
            open_pool(
                ws_server.url,
                shared_capacity=_capacity(redis_server, redis_key, 1),
                acquire_timeout=1.0,
            ) as b,
        ):
            await a.wait_ready(timeout=5)
            with pytest.raises(PoolTimeout):
                await b.acquire()
            assert a.stats.idle == 1
            assert a.stats.closed == 0


async def test_a_group_shares_one_process_share_of_the_limit(
    redis_server: RedisServer, redis_key: str
) -> None:
    async with serve_ws() as one, serve_ws() as two:
        with anyio.fail_after(10):
            async with open_pool_group(
                shared_capacity=_capacity(redis_server, redis_key, 2), acquire_timeout=0.5
            ) as group:
                first = await group.acquire(one.url)
                second = await group.acquire(two.url)
                with pytest.raises(PoolTimeout):
                    await group.acquire(one.url)
                assert group.pools[one.url].stats.shared_in_use == 2
                await group.release(first, discard=True)
                async with group.connection(two.url) as ws:
                    await _echo(ws)
                await group.release(second)
            assert await zcard(redis_server, f"{redis_key}:slots") == 0


async def test_slots_of_a_pool_that_stopped_refreshing_expire(
    redis_server: RedisServer, redis_key: str, ws_server: WSServer
) -> None:
    # A pool whose process froze (its refreshing task does not run) loses its
    # slots after lease_ttl; the other pool then gets them.
    ttl = 0.5
    with anyio.fail_after(15):
        async with AsyncExitStack() as stack:
            frozen: WebSocketPool[Any] = await stack.enter_async_context(
                open_pool(
                    ws_server.url,
                    shared_capacity=_capacity(redis_server, redis_key, 1, lease_ttl=ttl),
                )
            )
            held = await frozen.acquire()
            assert frozen._fleet is not None
            frozen._fleet._slots = _NoRefresh(frozen._fleet._slots)  # type: ignore[assignment]
            other = await stack.enter_async_context(
                open_pool(
                    ws_server.url,
                    shared_capacity=_capacity(redis_server, redis_key, 1, lease_ttl=ttl),
                    acquire_timeout=10,
                )
            )
            started = anyio.current_time()
            async with other.connection() as ws:
                await _echo(ws)
            assert anyio.current_time() - started < ttl + 2.0
            await frozen.release(held)


class _NoRefresh:
    """The Redis calls of a pool, but for refresh(), which never returns (a frozen process)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def refresh(self, members: Any) -> set[str]:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")


def test_shared_capacity_is_validated(redis_server: RedisServer) -> None:
    with pytest.raises(TypeError, match="shared_capacity must be a RedisCapacity"):
        open_pool("ws://127.0.0.1:1/", shared_capacity="redis://127.0.0.1")  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="shared_capacity must be a RedisCapacity"):
        open_pool_group(shared_capacity=3)  # type: ignore[call-overload]


async def test_stats_without_a_shared_capacity(ws_server: WSServer) -> None:
    async with open_pool(ws_server.url) as pool:
        stats: PoolStats = pool.stats
        assert stats.shared_limit is None
        assert stats.shared_in_use is None


async def test_the_redis_password_never_shows(
    redis_key: str,
    ws_server: WSServer,
    caplog: pytest.LogCaptureFixture,
    collect_failed_connections: None,
) -> None:
    # Redis refuses the password: the borrower's error, the pool's repr and
    # stats, and every log record, never show it.
    password = "s3cret-redis-pw"
    caplog.set_level(logging.DEBUG)
    with run_redis_server(password="another-one") as server:
        url = f"redis://:{password}@127.0.0.1:{server.port}/0"
        capacity = RedisCapacity(url, key=redis_key, limit=2)
        with anyio.fail_after(10):
            async with open_pool(ws_server.url, shared_capacity=capacity) as pool:
                with pytest.raises(PoolUnavailable) as info:
                    await pool.acquire()
                shown = [str(info.value), repr(info.value.__cause__), repr(pool), repr(capacity)]
                shown.append(str(pool.stats))
    assert password not in " ".join(shown)
    assert password not in caplog.text
    assert "***" in repr(capacity)


async def test_a_cancelled_close_still_gives_the_slots_back_at_exit(
    redis_server: RedisServer, redis_key: str, ws_server: WSServer
) -> None:
    # aclose() is cancelled while Redis is frozen, before the slots went back:
    # leaving the pool's block gives them back (not after lease_ttl).
    capacity = _capacity(redis_server, redis_key, 3, lease_ttl=60)
    with anyio.fail_after(15):
        async with open_pool(ws_server.url, shared_capacity=capacity, close_timeout=2) as pool:
            held = [await pool.acquire() for _ in range(2)]
            for ws in held:
                await pool.release(ws)
            assert await zcard(redis_server, f"{redis_key}:slots") == 2
            redis_server.pause()
            try:
                with anyio.move_on_after(0.5) as scope:
                    await pool.aclose()
                assert scope.cancelled_caught
            finally:
                redis_server.resume()
        assert await zcard(redis_server, f"{redis_key}:slots") == 0
