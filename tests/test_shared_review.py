"""The outside review of ``shared_capacity=RedisCapacity(...)``: each test is a break it found.

Written by a reviewer who had not seen the code, against the documented
contract; each test failed on the code it was written against, for the reason
in its docstring, and passes since the fix. Pools in this process stand for
processes (each pool has its own name in Redis).
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
import coredis
import pytest

from anyio_wspool import PoolTimeout, PoolUnavailable, RedisCapacity, open_pool, open_pool_group

from ._proxy import serve_proxy
from ._redis import (
    RedisServer,
    collect_failed_connections,
    redis_key,
    redis_server,
    until_zcard,
)
from ._util import until
from ._wsserver import WSServer, serve_ws

__all__ = ("collect_failed_connections", "redis_key", "redis_server")

pytestmark = pytest.mark.anyio


def _capacity(server: RedisServer, key: str, limit: int, **options: Any) -> RedisCapacity:
    return RedisCapacity(server.url, key=key, limit=limit, **options)


async def test_idle_connections_are_not_given_up_after_the_waiting_borrower_left(
    redis_server: RedisServer, redis_key: str, ws_server: WSServer
) -> None:
    """SPEC: a pool gives up idle connections "when other processes are waiting".

    Pool B's only borrower waits at the shared limit and times out. Nobody in
    B waits any more, yet B stays queued for a slot and keeps telling Redis it
    waits: pool A closes its idle connections for nobody (B then takes a slot
    and gives it straight back).
    """
    with anyio.fail_after(15):
        async with (
            open_pool(
                ws_server.url,
                max_connections=2,
                cleanup_interval=0.5,
                idle_timeout=None,
                shared_capacity=_capacity(redis_server, redis_key, 2),
            ) as pool_a,
            open_pool(
                ws_server.url,
                max_connections=2,
                acquire_timeout=0.1,
                cleanup_interval=0.5,
                shared_capacity=_capacity(redis_server, redis_key, 2),
            ) as pool_b,
        ):
            first = await pool_a.acquire()
            second = await pool_a.acquire()
            await pool_a.release(first)
            await pool_a.release(second)
            assert pool_a.stats.idle == 2
            with pytest.raises(PoolTimeout):
                async with pool_b.connection():
                    pass
            # Nobody waits any more (well before A's first check, 0.5 s after
            # it opened). Watch A for 3 of its checks: it closes both in the first.
            with anyio.move_on_after(1.6):
                await until(lambda: pool_a.stats.closed > 0, limit=2.0)
            assert pool_a.stats.idle == 2, pool_a.stats
            assert pool_a.stats.closed == 0, pool_a.stats


async def test_acquire_timeout_zero_fails_at_once_at_the_shared_limit(
    redis_server: RedisServer, redis_key: str, ws_server: WSServer
) -> None:
    """SPEC: at the shared limit borrowers wait "like at the local one"; 0 fails at once.

    Pool A holds the whole shared limit. Pool B (acquire_timeout=0) has not
    yet heard from Redis, so it counts the whole limit as room: its borrower
    queues for a connection that no slot will ever be given for, with no
    deadline (acquire_timeout=0 means "no timeout" to the waiter), and waits
    until A closes one, instead of failing at once with PoolTimeout.
    """
    with anyio.fail_after(15):
        async with (
            open_pool(
                ws_server.url,
                max_connections=2,
                shared_capacity=_capacity(redis_server, redis_key, 2),
            ) as pool_a,
            open_pool(
                ws_server.url,
                max_connections=2,
                acquire_timeout=0,
                shared_capacity=_capacity(redis_server, redis_key, 2),
            ) as pool_b,
        ):
            async with pool_a.connection(), pool_a.connection():
                with anyio.move_on_after(2.0) as scope, pytest.raises(PoolTimeout):
                    async with pool_b.connection():
                        pass
                assert not scope.cancelled_caught, "waited 2 s with acquire_timeout=0"


async def _score(server: RedisServer, name: str) -> list[Any]:
    async with coredis.Redis.from_url(server.url) as client:
        return list(await client.zrange(name, 0, -1, withscores=True))


@pytest.mark.usefixtures("collect_failed_connections")
async def test_a_busy_pool_that_lost_its_slots_in_a_redis_restart_stays_over_the_limit(
    redis_server: RedisServer, redis_key: str, ws_server: WSServer
) -> None:
    """SPEC: "the fleet as a whole never opens more than the provider allows".

    Redis restarts (its slots are gone) and another pool takes the whole
    limit. Pool A finds at its next refresh that its connections lost their
    slots and gets none back, but closes only those that happen to be idle at
    that instant: a busy pool hands its connections from borrower to borrower,
    so they are never idle and stay open, unslotted, for good. The server sees
    4 connections for a limit of 2, refresh after refresh.
    """
    with anyio.fail_after(20):
        async with (
            open_pool(
                ws_server.url,
                max_connections=2,
                shared_capacity=_capacity(redis_server, redis_key, 2, lease_ttl=3.0),
            ) as pool_a,
            anyio.create_task_group() as tg,
        ):
            stop = anyio.Event()

            async def busy() -> None:
                while not stop.is_set():
                    async with pool_a.connection() as ws:
                        await ws.send_text("x")
                        assert await ws.receive_text() == "x"

            for _ in range(6):
                tg.start_soon(busy)
            await ws_server.wait_until(lambda: ws_server.open_connections == 2)
            # Restart just after one of A's refreshes (every 1 s), so that
            # pool B takes the whole limit before A's next one.
            before = await _score(redis_server, f"{redis_key}:slots")
            with anyio.fail_after(3):
                while await _score(redis_server, f"{redis_key}:slots") == before:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            redis_server.restart()
            async with open_pool(
                ws_server.url,
                max_connections=2,
                shared_capacity=_capacity(redis_server, redis_key, 2, lease_ttl=3.0),
            ) as pool_b:
                first = await pool_b.acquire()
                second = await pool_b.acquire()
                # A refreshes twice in this window (it checks every 1 s).
                with anyio.move_on_after(2.5):
                    await ws_server.wait_until(lambda: ws_server.open_connections <= 2)
                open_now = ws_server.open_connections
                stop.set()
                await pool_b.release(first)
                await pool_b.release(second)
        assert open_now <= 2, f"{open_now} connections open for a shared limit of 2"


async def test_new_connection_at_the_shared_limit_closes_an_idle_one_of_its_pool(
    redis_server: RedisServer, redis_key: str, ws_server: WSServer
) -> None:
    """SPEC: at the shared limit borrowers wait "like at the local one".

    At a full pool, ``new_connection()`` closes the idle connection that
    waited longest to make room. Here the pool holds the whole shared limit
    with two idle connections (its own max_connections is not reached):
    Redis refuses the slot, nothing closes an idle connection, and the
    borrower waits until acquire_timeout and gets PoolTimeout.
    """
    with anyio.fail_after(15):
        async with open_pool(
            ws_server.url,
            max_connections=4,
            acquire_timeout=2.0,
            shared_capacity=_capacity(redis_server, redis_key, 2),
        ) as pool:
            first = await pool.acquire()
            second = await pool.acquire()
            await pool.release(first)
            await pool.release(second)
            async with pool.new_connection() as ws:
                await ws.send_text("x")
                assert await ws.receive_text() == "x"
            assert ws_server.max_open == 2


async def test_a_group_at_the_shared_limit_closes_an_idle_connection_of_another_key(
    redis_server: RedisServer, redis_key: str
) -> None:
    """SPEC: a group "at the cap" closes "an idle connection of another key to make room".

    A group whose pools hold the whole shared limit with idle connections of
    key X: a borrower of key Y waits for a slot, but Redis is asked only
    whether *other* processes wait (the group is one of them to Redis), so no
    idle connection of X is ever closed for Y: it waits until acquire_timeout
    and gets PoolTimeout, while two connections nobody uses hold the limit.
    """
    with anyio.fail_after(15):
        async with (
            serve_ws() as server_x,
            serve_ws() as server_y,
            open_pool_group(
                max_connections=4,
                acquire_timeout=2.0,
                cleanup_interval=0.2,
                shared_capacity=_capacity(redis_server, redis_key, 2),
            ) as group,
        ):
            async with group.connection(server_x.url), group.connection(server_x.url):
                pass
            assert server_x.open_connections == 2
            async with group.connection(server_y.url) as ws:
                await ws.send_text("y")
                assert await ws.receive_text() == "y"


async def test_one_waiting_borrower_elsewhere_takes_one_idle_connection_not_all(
    redis_server: RedisServer, redis_key: str, ws_server: WSServer
) -> None:
    """SPEC: idle connections are given up "longest idle first" for other processes' borrowers.

    Pool B has one borrower waiting at the shared limit; pool A holds the
    limit with three idle connections. A closes all three at its next check
    (one of them serves B, the other two slots go back to Redis unused):
    "longest idle first" means nothing then, and A's next borrowers pay for
    new handshakes that nobody needed to be freed.
    """
    with anyio.fail_after(15):
        async with (
            open_pool(
                ws_server.url,
                max_connections=3,
                cleanup_interval=0.2,
                idle_timeout=None,
                shared_capacity=_capacity(redis_server, redis_key, 3),
            ) as pool_a,
            open_pool(
                ws_server.url,
                max_connections=3,
                acquire_timeout=5.0,
                shared_capacity=_capacity(redis_server, redis_key, 3),
            ) as pool_b,
        ):
            conns = [await pool_a.acquire() for _ in range(3)]
            for conn in conns:
                await pool_a.release(conn)
            async with pool_b.connection() as ws:
                await ws.send_text("b")
                assert await ws.receive_text() == "b"
                assert pool_a.stats.idle == 2, pool_a.stats


@pytest.mark.parametrize(
    "url",
    [
        "redis://:Zm9v/YmFy@127.0.0.1:6379/0",
        "redis://default:Zm9v/YmFy@127.0.0.1:6379/0",
        "redis://:1234/YmFy@127.0.0.1:6379/0",
    ],
)
def test_a_rejected_redis_url_hides_a_password_with_a_slash(url: str) -> None:
    """SPEC guarantee 9: error messages never show the password of the URI.

    A password with a ``/`` in it (common: base64 passwords) that the user
    did not percent-encode makes the URL invalid, and RedisCapacity's
    ValueError quotes it with the password in clear ("Zm9v/YmFy"): the
    fallback mask only knows passwords without ``/``.
    """
    with pytest.raises(ValueError, match="url_or_client") as caught:
        RedisCapacity(url, key="k", limit=1)
    assert "YmFy" not in str(caught.value), str(caught.value)


@pytest.mark.usefixtures("collect_failed_connections")
async def test_local_mode_comes_back_under_the_shared_limit_when_redis_is_back(
    redis_server: RedisServer, redis_key: str, ws_server: WSServer
) -> None:
    """SPEC: with "local" the pool "takes shared slots again when Redis is back".

    While Redis is down a busy pool opens 4 connections (its own
    max_connections) for a shared limit of 2. Redis comes back: the pool
    takes 2 slots and closes the others only if they are idle at the moment
    of a refresh; busy connections go from borrower to borrower and stay
    open without a slot, so the server sees 4 for a limit of 2 for good.
    """
    capacity = _capacity(redis_server, redis_key, 2, lease_ttl=1.5, when_unavailable="local")
    open_now = 0
    with anyio.fail_after(20):
        async with (
            open_pool(ws_server.url, max_connections=4, shared_capacity=capacity) as pool,
            anyio.create_task_group() as tg,
        ):
            stop = anyio.Event()

            async def busy() -> None:
                while not stop.is_set():
                    async with pool.connection() as ws:
                        await ws.send_text("x")
                        assert await ws.receive_text() == "x"

            redis_server.stop()
            try:
                for _ in range(8):
                    tg.start_soon(busy)
                await ws_server.wait_until(lambda: ws_server.open_connections == 4)
            finally:
                redis_server.start()
            await until_zcard(redis_server, f"{redis_key}:slots", 2)
            # The pool refreshes (and retries the connections without a slot)
            # every 0.5 s: four times in this window.
            with anyio.move_on_after(2.0):
                await ws_server.wait_until(lambda: ws_server.open_connections <= 2)
            open_now = ws_server.open_connections
            stop.set()
        assert open_now <= 2, f"{open_now} connections open for a shared limit of 2"


@pytest.mark.usefixtures("collect_failed_connections")
async def test_local_mode_logs_one_warning_for_one_outage(
    redis_server: RedisServer,
    redis_key: str,
    ws_server: WSServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """SPEC: with "local" the pool goes on under its own limit "and logs a warning once".

    One outage of Redis gives two WARNING records: "unavailable" when it
    fails, and "answers again" when it is back (a recovery is news at INFO,
    not a second warning).
    """
    capacity = _capacity(redis_server, redis_key, 2, lease_ttl=0.6, when_unavailable="local")
    with anyio.fail_after(15):
        async with open_pool(ws_server.url, max_connections=2, shared_capacity=capacity) as pool:
            caplog.set_level(logging.INFO, logger="anyio_wspool")
            redis_server.stop()
            try:
                async with pool.connection() as ws:
                    await ws.send_text("x")
                    assert await ws.receive_text() == "x"
            finally:
                redis_server.start()
            # Back at the shared limit: the connection holds a slot again.
            await until_zcard(redis_server, f"{redis_key}:slots", 1)
    warnings = [
        record.getMessage()
        for record in caplog.records
        if record.name == "anyio_wspool" and record.levelno >= logging.WARNING
    ]
    assert len(warnings) == 1, warnings


async def test_acquire_timeout_zero_is_served_when_a_shared_slot_is_free(
    redis_server: RedisServer, redis_key: str, ws_server: WSServer
) -> None:
    """SPEC: acquire_timeout=0 "fails at once when nothing is free".

    Pool B last saw the shared limit full (its own connection and pool A's).
    A's connection is closed and its slot is back in Redis, but B decides
    from the count it saw last: its borrower with acquire_timeout=0 gets
    PoolTimeout at once although a slot is free (and stays so until B's next
    refresh, lease_ttl / 3 later).
    """
    with anyio.fail_after(15):
        async with (
            open_pool(
                ws_server.url,
                max_connections=2,
                shared_capacity=_capacity(redis_server, redis_key, 2),
            ) as pool_a,
            open_pool(
                ws_server.url,
                max_connections=2,
                acquire_timeout=0,
                shared_capacity=_capacity(redis_server, redis_key, 2),
            ) as pool_b,
        ):
            conn_a = await pool_a.acquire()
            async with pool_b.connection():
                assert pool_b.stats.shared_in_use == 2
                await pool_a.release(conn_a, discard=True)
                await until_zcard(redis_server, f"{redis_key}:slots", 1)
                async with pool_b.connection() as ws:
                    await ws.send_text("x")
                    assert await ws.receive_text() == "x"


@pytest.mark.usefixtures("collect_failed_connections")
async def test_a_pool_cut_off_from_redis_does_not_make_others_give_up_idle_connections(
    redis_server: RedisServer, redis_key: str, ws_server: WSServer
) -> None:
    """SPEC: idle connections are given up "when other processes are waiting".

    Pool B waits at the shared limit, then loses Redis (its network path is
    cut): its borrower gets PoolUnavailable and nobody in B waits any more.
    Its "waiting" mark used to stay in Redis for lease_ttl (10 s here), and
    pool A closed its idle connections for it, though nobody could use them;
    now the mark lapses within about a second, and A gives up no more than
    what it said it needed.
    """
    failed: list[BaseException] = []
    with anyio.fail_after(15):
        async with (
            serve_proxy("127.0.0.1", redis_server.port) as proxy,
            open_pool(
                ws_server.url,
                max_connections=2,
                cleanup_interval=1.0,
                idle_timeout=None,
                shared_capacity=_capacity(redis_server, redis_key, 2, lease_ttl=10.0),
            ) as pool_a,
        ):
            url_b = f"redis://127.0.0.1:{proxy.port}/0"
            capacity_b = RedisCapacity(url_b, key=redis_key, limit=2, lease_ttl=10.0)
            async with open_pool(ws_server.url, shared_capacity=capacity_b) as pool_b:
                first = await pool_a.acquire()
                second = await pool_a.acquire()
                await pool_a.release(first)
                await pool_a.release(second)
                async with anyio.create_task_group() as tg:

                    async def borrow() -> None:
                        try:
                            async with pool_b.connection():
                                pass
                        except PoolUnavailable as exc:
                            failed.append(exc)

                    tg.start_soon(borrow)
                    await until_zcard(redis_server, f"{redis_key}:waiting", 1)
                    proxy.refuse = True
                    proxy.set_mode("reset")
                # B waits for nothing now, and cannot say so. Its entry, which
                # every refused request renews for one second only, lapses
                # on its own: A may have closed one idle connection for it
                # meanwhile (the one slot B said it needed), never more.
                await until_zcard(redis_server, f"{redis_key}:waiting", 0, limit=3.0)
                closed = pool_a.stats.closed
                # A checks every 1 s: watch two checks.
                with anyio.move_on_after(2.2):
                    await until(lambda: pool_a.stats.closed > closed, limit=3.0)
                stats = pool_a.stats
    assert failed, "B's borrower was not turned away"
    assert closed <= 1, stats
    assert stats.closed == closed, stats
