"""The second outside review of the production features: each test is a break it found.

Written by a reviewer who had not seen the code, against the documented
contract. Each test says what is promised and what the pool did instead; each
failed on the code it was written against, and passes since the fix.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest
from httpx_ws import WebSocketDisconnect, WebSocketUpgradeError

from anyio_wspool import PoolUnavailable, WebSocketPool, open_pool, open_pool_group

from ._util import until, wait_closed
from ._wsserver import serve_ws

pytestmark = pytest.mark.anyio


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def _echo(ws: Any, text: str = "x") -> None:
    await ws.send_text(text)
    assert await ws.receive_text() == text


async def test_group_new_connection_at_the_cap_closes_one_idle_connection_not_two() -> None:
    """SPEC: at the group's cap "an idle connection of another key is closed to make
    room"; ``new_connection()`` closes "the idle one that waited longest" to make room.
    One borrower needs one connection's worth of room.

    Instead: key A has one idle connection, key B one, the group (max 2) is at its cap.
    ``group.new_connection(A)`` closes B's idle connection for the group's room *and*
    A's own idle one (the pool's make-room loop), so two connections are closed for one
    new one and the group is left with only the new connection open.
    """
    with anyio.fail_after(10):
        async with (
            serve_ws() as a,
            serve_ws() as b,
            open_pool_group(max_connections=2, max_connections_per_key=2) as group,
        ):
            async with group.connection(a.url) as ws:
                await _echo(ws)
            async with group.connection(b.url) as ws:
                await _echo(ws)
            assert group.open_connections == 2
            async with group.new_connection(a.url) as ws:
                await _echo(ws)
                pool_a, pool_b = group.pools[a.url], group.pools[b.url]
                await until(lambda: pool_a.stats.closing == 0 and pool_b.stats.closing == 0)
                await a.wait_until(lambda: a.open_connections + b.open_connections <= 2)
                # One of the two idle connections made room; the other stays open.
                assert pool_a.stats.closed + pool_b.stats.closed == 1, (
                    f"closed for one new connection: A {pool_a.stats.closed}, "
                    f"B {pool_b.stats.closed}"
                )
                assert group.open_connections == 2


async def test_group_circuit_open_closes_no_idle_connection_of_another_key() -> None:
    """SPEC: with the circuit open, "new borrowers fail at once with PoolUnavailable";
    at the group's cap an idle connection of another key is closed "to make room" (for a
    connection that will be opened). The fix of the single pool ("new_connection() while
    the circuit is open closing an idle connection") holds per key (every single-pool
    guarantee per key).

    Instead: key A's circuit is open, the group is at its cap (B idle, C lent). A plain
    borrower of A closes B's idle connection (the group asks for room before the pool
    asks its circuit), then waits for that close, and only then gets PoolUnavailable:
    B lost a healthy connection for a connection that was never going to be opened.
    """
    dead = f"ws://127.0.0.1:{_free_port()}/"
    with anyio.fail_after(10):
        async with (
            serve_ws() as b,
            serve_ws() as c,
            open_pool_group(
                max_connections=2,
                failure_threshold=1,
                circuit_reset=60,
                connect_attempts=1,
                acquire_timeout=5,
            ) as group,
        ):
            with pytest.raises(httpx.ConnectError):
                await group.acquire(dead)
            pool_a = group.pools[dead]
            assert pool_a.stats.circuit == "open"
            async with group.connection(b.url) as ws:
                await _echo(ws)
            held = await group.acquire(c.url)
            assert group.open_connections == 2
            with pytest.raises(PoolUnavailable):
                async with group.connection(dead):
                    pytest.fail("the circuit is open: no connection")
            await until(lambda: group.pools[b.url].stats.closing == 0)
            assert group.pools[b.url].stats.idle == 1, "B's idle connection was closed"
            assert b.open_connections == 1
            await group.release(held)


async def test_server_close_at_once_counts_as_failure_even_if_the_lease_outlives_the_window() -> (
    None
):
    """SPEC (circuit breaker): a failure is "one the server closed within failure_window
    s of opening"; "a connection that outlives failure_window resets the count".

    Instead: the pool measures the age when the connection is *retired*, not when the
    server closed it. A server that accepts and closes every connection at once, whose
    borrowers hold their (dead) connection a little longer than ``failure_window`` before
    giving it back, never opens the circuit: each of those connections, closed by the
    server within milliseconds, counts as one that "lived" the window.
    """
    window = 0.1
    with anyio.fail_after(10):
        async with serve_ws(close_new_after=0.0, close_new_code=1011) as server:
            async with open_pool(
                server.url, failure_threshold=2, failure_window=window, circuit_reset=60
            ) as pool:
                for _ in range(2):
                    async with pool.connection() as ws:
                        await wait_closed(ws)  # the server closed it at once
                        # The borrower is busy with something else a little longer.
                        await anyio.sleep(window * 1.5)
                assert pool.stats.circuit == "open", (
                    f"{server.handshakes} connections closed by the server at once, "
                    f"circuit {pool.stats.circuit}"
                )
                with pytest.raises(PoolUnavailable):
                    await pool.acquire()


async def test_a_stale_failure_does_not_reopen_a_half_open_circuit_and_kill_its_probe() -> None:
    """SPEC (circuit breaker): after ``circuit_reset`` s "one probe connection decides";
    the queued handshakes of connections started before the circuit opened were fixed
    not to start after it opened (and their failures, while it is open, are ignored).

    Instead: a connection that started its attempt *before* the circuit opened (in
    flight, holding the only ``max_connecting`` slot) fails while the circuit is half
    open. That stale failure re-opens the circuit for another ``circuit_reset`` and
    stops the probe, which was queued for the handshake slot and never made an attempt:
    the probe's borrower gets PoolUnavailable and the connector is never asked again.
    """
    calls = 0
    kill_first = anyio.Event()
    release_stale = anyio.Event()

    async def _die_when(event: anyio.Event) -> None:
        await event.wait()
        raise OSError("connection 1 broke")

    @asynccontextmanager
    async def connect() -> AsyncIterator[object]:
        nonlocal calls
        calls += 1
        if calls == 1:
            # Opens, then fails in the background (young: a failure).
            async with anyio.create_task_group() as tg:
                tg.start_soon(_die_when, kill_first)
                yield object()
        elif calls == 2:
            # Started before the circuit opens; fails once the circuit is half open.
            await release_stale.wait()
            raise OSError("stale attempt failed")
        else:
            yield object()

    results: dict[str, str] = {}

    async def borrow(name: str, pool: WebSocketPool[Any]) -> None:
        try:
            resource = await pool.acquire()
        except Exception as exc:
            results[name] = type(exc).__name__
        else:
            results[name] = "served"
            await pool.release(resource)

    reset = 0.1
    with anyio.fail_after(10):
        async with open_pool(
            connect=connect,
            max_connecting=1,
            failure_threshold=1,
            circuit_reset=reset,
            connect_attempts=1,
            acquire_timeout=5,
        ) as pool:
            held = await pool.acquire()  # connection 1
            async with anyio.create_task_group() as tg:
                tg.start_soon(borrow, "stale", pool)
                await until(lambda: calls == 2)  # in flight, holding the handshake slot
                kill_first.set()
                await until(lambda: pool.stats.circuit == "open")
                await anyio.sleep(reset * 1.5)  # circuit_reset elapses
                tg.start_soon(borrow, "probe", pool)
                await until(lambda: pool.stats.circuit == "half_open")
                release_stale.set()
            assert results["stale"] == "OSError"
            assert results["probe"] == "served", (
                f"the probe's borrower got {results['probe']}; connector called {calls} times; "
                f"circuit {pool.stats.circuit}, opened {pool.stats.circuit_opened} times"
            )
            assert calls == 3
            await pool.release(held)


async def test_a_restart_close_makes_a_borrower_back_off_at_a_full_pool_too() -> None:
    """SPEC (close codes): 1001, 1012, 1013 "retire that connection and make new connects
    back off" (the pool's own comment: "borrowers do not wait, unless the server said it
    is restarting"; a pool with room does make the borrower's new connection wait).

    Instead: with ``max_connections=1`` and ``min_connections=1``, the replacement of a
    connection closed with 1012 waits out the restart back-off in the background; a
    borrower that arrives adopts it and wakes it, and it connects at once: the server
    that said "restarting" gets a new handshake within milliseconds, not after
    ``retry_backoff`` (2 s here).
    """
    backoff = 2.0
    with anyio.fail_after(10):
        async with serve_ws(close_new_after=0.2, close_new_code=1012) as server:
            async with open_pool(
                server.url,
                max_connections=1,
                min_connections=1,
                retry_backoff=backoff,
                acquire_timeout=8,
            ) as pool:
                await pool.wait_ready(timeout=5)
                server.close_new_after = None  # only the first connection is closed
                await until(lambda: pool.stats.closed == 1)  # retired: code 1012
                started = anyio.current_time()
                async with pool.connection() as ws:
                    waited = anyio.current_time() - started
                    await _echo(ws)
                assert server.handshakes == 2
                assert waited >= backoff * 0.75, (
                    f"reconnected {waited:.3f} s after the server said 1012 (restarting)"
                )


async def test_prewarm_in_a_group_at_its_cap_closes_no_idle_connection_of_another_key() -> None:
    """SPEC: ``prewarm(n)`` opens connections in the background "until n are idle (or
    capacity is reached)"; at the group's cap an idle connection of another key is
    closed to make room for a pool *that needs a connection* (a borrower).

    Instead: at the group's cap (key B has one idle connection), ``prewarm(1)`` on key
    A's pool closes B's idle connection to open an idle one for A, with no borrower
    anywhere: prewarming one key evicts the warm connections of the others.
    """
    with anyio.fail_after(10):
        async with (
            serve_ws() as a,
            serve_ws() as b,
            open_pool_group(max_connections=1) as group,
        ):
            async with group.connection(b.url) as ws:
                await _echo(ws)
            pool_a = await group.pool(a.url)
            assert group.open_connections == 1
            pool_a.prewarm(1)
            await until(lambda: group.pools[b.url].stats.closing == 0)
            assert group.pools[b.url].stats.idle == 1, "B's idle connection was closed"
            assert b.open_connections == 1
            assert a.handshakes == 0


async def test_group_circuit_open_key_with_no_connection_fails_at_once_at_the_group_cap() -> None:
    """SPEC: with the circuit open, "new borrowers fail at once with PoolUnavailable
    (the last error as __cause__)"; only at a full pool do borrowers wait, for one of
    *its* connections to come back (tests/test_circuit.py). Every single-pool guarantee
    holds per key.

    Instead: key A's circuit is open and A holds no connection at all, so only a new
    connection could serve A's borrower; the group is at its cap with other keys'
    connections lent. The borrower is not failed at once: it waits out its whole
    ``acquire_timeout`` for group capacity and gets PoolTimeout (and with capacity
    freed later it would get PoolUnavailable only then).
    """
    dead = f"ws://127.0.0.1:{_free_port()}/"
    with anyio.fail_after(10):
        async with (
            serve_ws() as b,
            open_pool_group(
                max_connections=1,
                failure_threshold=1,
                circuit_reset=60,
                connect_attempts=1,
                acquire_timeout=1,
            ) as group,
        ):
            with pytest.raises(httpx.ConnectError):
                await group.acquire(dead)
            assert group.pools[dead].stats.circuit == "open"
            held = await group.acquire(b.url)  # the group is at its cap
            started = anyio.current_time()
            with pytest.raises(PoolUnavailable):
                await group.acquire(dead)
            assert anyio.current_time() - started < 0.5
            await group.release(held)


async def test_max_waiting_zero_admits_a_borrower_that_a_backing_off_connection_will_serve() -> (
    None
):
    """SPEC: ``max_waiting`` bounds the borrowers that "wait for capacity" (0: none may
    wait); guarantee 5: "A borrower never waits out a background back-off"; at a full
    pool a borrower adopts the background connection that is backing off, which then
    tries again at once (a connection being opened for it, not capacity it waits for).

    Instead: ``max_connections=1``, ``min_connections=1``; the server closed the first
    connection at once, so its background replacement backs off (``retry_backoff``
    5 s). With ``max_waiting=0`` a borrower is refused with PoolOverloaded, although
    the very same borrower without ``max_waiting`` is served at once by adopting it.
    """
    with anyio.fail_after(10):
        async with serve_ws(close_new_after=0.2, close_new_code=1011) as server:
            async with open_pool(
                server.url,
                max_connections=1,
                min_connections=1,
                retry_backoff=5.0,
                max_waiting=0,
                acquire_timeout=5,
            ) as pool:
                await pool.wait_ready(timeout=5)
                server.close_new_after = None
                await until(lambda: pool.stats.closed == 1 and pool.stats.connecting == 1)
                assert server.handshakes == 1  # the replacement is backing off
                async with pool.connection() as ws:
                    await _echo(ws)
                assert server.handshakes == 2


async def _login(ws: Any) -> None:
    """An on_connect that waits briefly for the server's greeting (or its close)."""
    with anyio.move_on_after(0.2):
        await ws.receive_text()


async def test_a_restart_close_during_on_connect_makes_the_next_connects_back_off() -> None:
    """SPEC (close codes): "a new connection closed by the server with 1008 or
    4000-4999 is fatal (no retry); 1001, 1012, 1013 retire that connection and make new
    connects back off". The pool applies the fatal half to a close during ``on_connect``
    (not retried), and backs off after a 1012 on a connection that was lent.

    Instead: a new connection that the server closes with 1012 ("service restart")
    while ``on_connect`` runs is a failed attempt and nothing more: the next borrower's
    connection starts at once, with no back-off (``retry_backoff`` is 2 s here), at a
    server that just said it is restarting.
    """
    backoff = 2.0
    with anyio.fail_after(10):
        async with serve_ws(close_new_after=0.0, close_new_code=1012) as server:
            async with open_pool(
                server.url,
                on_connect=_login,
                connect_attempts=1,
                retry_backoff=backoff,
                acquire_timeout=8,
            ) as pool:
                with pytest.raises(WebSocketDisconnect) as info:
                    await pool.acquire()
                assert info.value.code == 1012
                closed_at = anyio.current_time()
                server.close_new_after = None  # the server is back at once

                async def borrow() -> None:
                    async with pool.connection() as ws:
                        await _echo(ws)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(borrow)
                    await server.wait_until(lambda: server.handshakes == 2)
                    waited = anyio.current_time() - closed_at
                assert waited >= backoff * 0.75, (
                    f"the next handshake came {waited:.3f} s after the server said 1012 "
                    "(restarting)"
                )


async def test_after_circuit_reset_only_the_probe_closes_an_idle_connection_to_make_room() -> None:
    """SPEC (circuit breaker): after ``circuit_reset`` s "one probe connection decides"
    while every other borrower that needs a new connection fails at once; the fix of
    "new_connection() while the circuit is open closing an idle connection" says an
    idle connection is not closed for a connection that will not be opened.

    Instead: a full pool (resized to 2, both idle) whose circuit's reset time has
    passed; two ``new_connection()`` borrowers arrive together. Both passed the circuit
    (it is still "open", not yet half open) and each closed an idle connection to make
    room; only one probe was opened, so the second borrower got PoolUnavailable and a
    healthy idle connection was closed for nothing. (Fixed: only the probe makes room;
    the second borrower waits at the full pool for the probe's outcome.)
    """
    reset = 0.1
    with anyio.fail_after(10):
        async with serve_ws() as server:
            async with open_pool(
                server.url,
                max_connections=3,
                failure_threshold=1,
                circuit_reset=reset,
                connect_attempts=1,
                acquire_timeout=5,
            ) as pool:
                first, second = await pool.acquire(), await pool.acquire()
                await pool.release(first)
                await pool.release(second)
                server.reject_status = 503
                with pytest.raises(WebSocketUpgradeError):
                    await pool.acquire_new()
                assert pool.stats.circuit == "open"
                server.reject_status = None
                await until(lambda: pool.stats.connecting == 0 and pool.stats.closing == 0)
                pool.max_connections = 2  # full: two idle connections
                assert pool.stats.idle == 2
                await anyio.sleep(reset * 1.5)  # circuit_reset elapses
                results: list[str] = []

                async def fresh() -> None:
                    try:
                        async with pool.new_connection() as ws:
                            await _echo(ws)
                        results.append("served")
                    except PoolUnavailable:
                        results.append("unavailable")

                async with anyio.create_task_group() as tg:
                    tg.start_soon(fresh)
                    tg.start_soon(fresh)
                await until(lambda: pool.stats.closing == 0)
                # Each idle connection closed made room for a borrower who got
                # a new connection: the probe's, and, once it opened and closed
                # the circuit, the second borrower's (who waited for the
                # probe at the full pool). None was closed for a borrower
                # turned away.
                assert results.count("served") >= 1
                assert pool.stats.closed == results.count("served"), (results, pool.stats)
                assert pool.stats.idle == 2


async def test_group_room_made_for_a_cancelled_borrower_goes_to_the_next_key() -> None:
    """SPEC guarantee 6: "a cancelled waiter leaves no trace"; at the group's cap "an
    idle connection of another key is closed to make room" (one per connection needed).

    Instead: at the cap (key B has two idle connections) a borrower of key A makes B's
    first idle connection close for A, then is cancelled while it closes. That closing
    connection stays reserved for A's pool, so a borrower of key C that arrives next
    closes B's *second* idle connection too: two connections closed for one borrower,
    and B loses a healthy connection because of a borrower that left.
    """
    with anyio.fail_after(10):
        async with (
            serve_ws() as a,
            serve_ws() as b,
            serve_ws() as c,
            open_pool_group(max_connections=2, close_timeout=1, acquire_timeout=5) as group,
        ):
            first, second = await group.acquire(b.url), await group.acquire(b.url)
            await group.release(first)
            await group.release(second)
            pool_a, pool_b = await group.pool(a.url), group.pools[b.url]
            await group.pool(c.url)
            b.freeze()  # B's closing handshakes take close_timeout
            scope = anyio.CancelScope()

            async def borrow_a() -> None:
                with scope:
                    async with group.connection(a.url):
                        pytest.fail("A's borrower was cancelled before any room was made")

            async with anyio.create_task_group() as tg:
                tg.start_soon(borrow_a)
                await until(lambda: pool_a.stats.waiting == 1)
                assert pool_b.stats.closing == 1  # closing for A
                scope.cancel()
                await until(lambda: pool_a.stats.waiting == 0)
                async with group.connection(c.url) as ws:
                    await _echo(ws)
            await until(lambda: pool_b.stats.closing == 0, 3)
            assert pool_b.stats.idle == 1, (
                f"B has {pool_b.stats.idle} idle, {pool_b.stats.closed} closed, "
                "for one borrower of C"
            )
            assert a.handshakes == 0
