"""Connection lifecycle: idle expiry, lifetimes, health, warm-up, retries, connect hook.

Time-based behaviour uses short real timeouts (tenths of a second) so that the
same tests run on asyncio, uvloop and trio against real sockets; waiting for an
outcome is done on the servers' counters, never with a bare sleep.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from httpx_ws import AsyncWebSocketSession

from anyio_wspool import PoolClosed, PoolTimeout

from ._stacks import ConnectTimeout, WebSocketDisconnect, WebSocketUpgradeError, open_pool
from ._util import until, wait_closed
from ._wsserver import WSServer

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("stack")]

#: this file's lines (test_lease_warning_names_the_task_and_the_line_once looks one up)
SOURCE = Path(__file__).read_text().splitlines()


async def echo(ws: AsyncWebSocketSession, text: str = "x") -> None:
    await ws.send_text(text)
    assert await ws.receive_text() == text


# -- idle expiry -------------------------------------------------------------------


async def test_idle_connection_is_closed_after_idle_timeout(ws_server: WSServer) -> None:
    async with open_pool(ws_server.url, idle_timeout=0.2, cleanup_interval=0.05) as pool:
        started = anyio.current_time()
        async with pool.connection() as ws:
            await echo(ws)
        await ws_server.wait_until(lambda: ws_server.open_connections == 0, timeout=5)
        assert anyio.current_time() - started >= 0.2
        stats = pool.stats
        assert stats.idle == 0
        assert stats.closed + stats.closing == 1  # the server may see the close first
        async with pool.connection() as again:
            assert again is not ws
            await echo(again)
    assert ws_server.handshakes == 2


async def test_idle_timeout_never_goes_below_min_connections(ws_server: WSServer) -> None:
    async with open_pool(
        ws_server.url, min_connections=1, idle_timeout=0.05, cleanup_interval=0.02
    ) as pool:
        await pool.wait_ready(timeout=5)
        await anyio.sleep(0.3)  # several sweeps, each past the idle timeout
        assert pool.stats.idle == 1
        assert ws_server.handshakes == 1


# -- lifetimes -----------------------------------------------------------------------


async def test_lifetime_never_retires_a_lent_connection(ws_server: WSServer) -> None:
    async with open_pool(ws_server.url, max_lifetime=0.1, cleanup_interval=0.02) as pool:
        async with pool.connection() as ws:
            await anyio.sleep(0.3)  # well past its lifetime, and several sweeps
            await echo(ws)
            assert ws_server.open_connections == 1
        # retired when it comes back
        await ws_server.wait_until(lambda: ws_server.open_connections == 0)
        assert pool.stats.closed + pool.stats.closing == 1
        assert pool.stats.idle == 0


async def test_expired_idle_connection_is_not_lent(ws_server: WSServer) -> None:
    # No sweep runs in time (cleanup_interval is long): the check at lending time
    # is what keeps the expired connection from being lent.
    async with open_pool(ws_server.url, max_lifetime=0.1, cleanup_interval=60) as pool:
        async with pool.connection() as first:
            pass
        await anyio.sleep(0.15)
        async with pool.connection() as second:
            assert second is not first
            await echo(second)
    assert ws_server.handshakes == 2


async def test_lifetime_deadlines_are_drawn_between_90_and_100_percent() -> None:
    counter = itertools.count()

    @asynccontextmanager
    async def fake() -> AsyncIterator[int]:
        yield next(counter)

    async with open_pool(connect=fake, max_lifetime=100.0, max_connections=40) as pool:
        held = [await pool.acquire() for _ in range(40)]
        lifetimes = sorted(conn.lifetime for conn in pool._conns)
        for resource in held:
            await pool.release(resource)
    assert len(lifetimes) == 40
    assert 90.0 <= lifetimes[0] <= lifetimes[-1] <= 100.0
    assert lifetimes[-1] - lifetimes[0] > 1.0  # spread, not one shared deadline


@pytest.mark.parametrize("refresh", [True, False])
async def test_refresh_on_acquire_keeps_a_busy_connection(
    ws_server: WSServer, refresh: bool
) -> None:
    async with open_pool(
        ws_server.url, max_lifetime=0.3, refresh_on_acquire=refresh, cleanup_interval=60
    ) as pool:
        for i in range(12):  # about 0.6 s in all, twice the lifetime
            async with pool.connection() as ws:
                await echo(ws, str(i))
            await anyio.sleep(0.05)
    if refresh:
        assert ws_server.handshakes == 1
    else:
        assert ws_server.handshakes >= 2


# -- health --------------------------------------------------------------------------


async def test_keepalive_failure_is_detected_and_replaced(ws_server: WSServer) -> None:
    async with open_pool(
        ws_server.url, keepalive_ping_interval_seconds=0.05, keepalive_ping_timeout_seconds=0.1
    ) as pool:
        async with pool.connection() as first:
            await echo(first)
        ws_server.answer_pings = False
        await wait_closed(first)  # keep-alive gave up on it
        await ws_server.wait_until(lambda: ws_server.open_connections == 0)
        assert pool.stats.idle == 0
        ws_server.answer_pings = True
        async with pool.connection() as second:
            assert second is not first
            await echo(second)


async def test_check_on_acquire_replaces_a_connection_that_stopped_answering_pings(
    ws_server: WSServer,
) -> None:
    async with open_pool(
        ws_server.url,
        check_on_acquire=True,
        connect_timeout=0.2,
        keepalive_ping_interval_seconds=None,
    ) as pool:
        async with pool.connection() as first:
            await echo(first)
        async with pool.connection() as same:  # answers the ping: lent again
            assert same is first
        ws_server.answer_pings = False
        async with pool.connection() as replaced:
            assert replaced is not first
            await echo(replaced)
        assert pool.stats.discarded == 1
    assert ws_server.handshakes == 2


# -- warm-up -------------------------------------------------------------------------


async def test_min_connections_are_opened_at_start_and_replaced(ws_server: WSServer) -> None:
    async with open_pool(ws_server.url, min_connections=3, retry_backoff=0.01) as pool:
        await pool.wait_ready(timeout=5)
        assert ws_server.handshakes == 3
        assert pool.stats.idle == 3
        await ws_server.abort_all()
        await ws_server.wait_until(
            lambda: ws_server.handshakes == 6 and ws_server.open_connections == 3
        )
        await pool.wait_ready(timeout=5)
        assert ws_server.max_open <= 3


async def test_wait_ready_times_out_with_the_cause(ws_server: WSServer) -> None:
    ws_server.reject_status = 403
    async with open_pool(ws_server.url, min_connections=1, retry_backoff=0.01) as pool:
        with pytest.raises(PoolTimeout, match="0 of min_connections=1") as info:
            await pool.wait_ready(timeout=0.3)
        assert isinstance(info.value.__cause__, WebSocketUpgradeError)


async def test_wait_ready_on_a_closed_pool_raises(ws_server: WSServer) -> None:
    async with open_pool(ws_server.url, min_connections=1) as pool:
        await pool.aclose()
        with pytest.raises(PoolClosed):
            await pool.wait_ready()


async def test_a_pool_closed_before_it_was_opened_refuses_to_open(ws_server: WSServer) -> None:
    # Not a pool that opens and then waits for connections that never were
    # (its exit used to wait 2 * close_timeout + 1 s for them).
    pool = open_pool(ws_server.url, close_timeout=5)
    await pool.aclose()
    with anyio.fail_after(2):
        with pytest.raises(PoolClosed, match="before it was opened"):
            async with pool:
                pytest.fail("a closed pool must not open")
        await pool.aclose()  # still idempotent
    assert ws_server.handshakes == 0


async def test_prewarm_opens_in_the_background_without_waiting(ws_server: WSServer) -> None:
    async with open_pool(ws_server.url, max_connections=4) as pool:
        pool.prewarm(3)
        assert pool.stats.connecting == 3  # started, not awaited
        await ws_server.wait_until(lambda: ws_server.handshakes == 3)
        await until(lambda: pool.stats.idle == 3)
        pool.prewarm(2)  # already 3 idle: nothing to do
        assert pool.stats.connecting == 0
        pool.prewarm(10)  # capped by capacity
        assert pool.stats.connecting == 1
        await ws_server.wait_until(lambda: ws_server.handshakes == 4)


async def test_invalidate_forces_new_handshakes(ws_server: WSServer) -> None:
    async with open_pool(ws_server.url) as pool:
        idle_one = await pool.acquire()
        held = await pool.acquire()
        await pool.release(idle_one)
        pool.invalidate()
        await ws_server.wait_until(lambda: ws_server.open_connections == 1)  # idle one closed
        await echo(held)  # a lent connection keeps working until it comes back
        await pool.release(held)
        await ws_server.wait_until(lambda: ws_server.open_connections == 0)
        async with pool.connection() as fresh:
            assert fresh is not idle_one
            assert fresh is not held
            await echo(fresh)
    assert ws_server.handshakes == 3


# -- connecting ----------------------------------------------------------------------


async def test_server_error_is_retried_connect_attempts_times(ws_server: WSServer) -> None:
    ws_server.reject_status = 503
    async with open_pool(ws_server.url, connect_attempts=4, retry_backoff=0.01) as pool:
        with pytest.raises(WebSocketUpgradeError) as info:
            await pool.acquire()
    assert isinstance(info.value, WebSocketUpgradeError)
    assert info.value.response.status_code == 503
    assert ws_server.rejected == 4
    assert "4 attempt(s)" in "".join(getattr(info.value, "__notes__", []))


async def test_refused_upgrade_is_not_retried(ws_server: WSServer) -> None:
    ws_server.reject_status = 403
    async with open_pool(ws_server.url, connect_attempts=4, retry_backoff=0.01) as pool:
        with pytest.raises(WebSocketUpgradeError) as info:
            await pool.acquire()
    assert ws_server.rejected == 1
    assert "not retried" in "".join(getattr(info.value, "__notes__", []))


async def test_blackholed_connect_is_retried_with_a_timeout_each(ws_server: WSServer) -> None:
    ws_server.silent = True
    async with open_pool(
        ws_server.url, connect_timeout=0.1, connect_attempts=3, retry_backoff=0.01
    ) as pool:
        with pytest.raises(ConnectTimeout):
            await pool.acquire()
    assert ws_server.tcp_accepted == 3


async def test_backoff_grows_and_is_capped() -> None:
    attempts: list[float] = []

    @asynccontextmanager
    async def refused() -> AsyncIterator[int]:
        attempts.append(anyio.current_time())
        if attempts:
            raise ConnectionRefusedError("down")
        yield 0  # pragma: no cover

    async with open_pool(
        connect=refused, connect_attempts=5, retry_backoff=0.04, retry_backoff_max=0.1
    ) as pool:
        assert pool._host is not None
        pool._host._rng.uniform = lambda a, b: b
        with pytest.raises(ConnectionRefusedError):
            await pool.acquire()
    gaps = [later - earlier for earlier, later in itertools.pairwise(attempts)]
    # the full-jitter upper bounds: 0.04, 0.08, then capped at 0.1
    for gap, bound in zip(gaps, [0.04, 0.08, 0.1, 0.1], strict=True):
        assert gap >= bound * 0.9
    assert max(gaps) < 1.0


async def test_borrower_gets_pool_timeout_when_its_own_timeout_runs_out_first(
    ws_server: WSServer,
) -> None:
    ws_server.silent = True
    async with open_pool(ws_server.url, connect_timeout=5, acquire_timeout=0.1) as pool:
        with pytest.raises(PoolTimeout):
            await pool.acquire()


# -- the connect hook ----------------------------------------------------------------


async def test_on_connect_runs_once_per_connection(ws_server: WSServer) -> None:
    seen: list[int] = []

    async def login(ws: AsyncWebSocketSession) -> None:
        await ws.send_text("login")
        assert await ws.receive_text() == "login"
        seen.append(id(ws))

    async with open_pool(ws_server.url, on_connect=login, max_connections=2) as pool:
        for _ in range(5):
            async with pool.connection() as a, pool.connection() as b:
                await echo(a)
                await echo(b)
    assert len(seen) == 2
    assert len(set(seen)) == 2
    assert ws_server.messages_received == 2 + 10


async def test_failing_on_connect_is_reported_to_the_borrower(ws_server: WSServer) -> None:
    calls = 0

    async def refuse(ws: AsyncWebSocketSession) -> None:
        nonlocal calls
        calls += 1
        raise PermissionError("subscription refused")

    async with open_pool(ws_server.url, on_connect=refuse, retry_backoff=0.01) as pool:
        with pytest.raises(PermissionError, match="subscription refused"):
            await pool.acquire()
        assert pool.stats.opened == 0
        assert pool.stats.idle == 0
    # PermissionError is an OSError, so it is retried like a network error
    assert calls == 3
    await ws_server.wait_until(lambda: ws_server.open_connections == 0)


async def test_server_close_during_on_connect_is_a_failed_attempt_with_its_code(
    ws_server: WSServer,
) -> None:
    # The server accepts, answers the login, then closes with 1008 (policy):
    # the borrower gets the server's close code, and a policy close is not retried.
    ws_server.close_after = 1
    ws_server.close_code = 1008

    async def login(ws: AsyncWebSocketSession) -> None:
        await ws.send_text("login")
        assert await ws.receive_text() == "login"
        await wait_closed(ws)

    async with open_pool(ws_server.url, on_connect=login, retry_backoff=0.01) as pool:
        with pytest.raises(WebSocketDisconnect) as caught:
            await pool.acquire()
        assert isinstance(caught.value, WebSocketDisconnect)
        assert caught.value.code == 1008
        assert pool.stats.opened == 0
        assert pool.stats.connect_failures == 1
    assert ws_server.handshakes == 1


async def test_connections_closed_right_after_opening_are_replaced_with_back_off(
    ws_server: WSServer,
) -> None:
    # Each connection is closed by the server as soon as on_connect's login is
    # answered. Replacements back off (0.05, 0.1, 0.2 s ...) like failed attempts
    # instead of reconnecting in a tight loop.
    ws_server.close_after = 1
    ws_server.close_code = 1013

    async def login(ws: AsyncWebSocketSession) -> None:
        await ws.send_text("login")

    async with open_pool(
        ws_server.url, on_connect=login, min_connections=1, retry_backoff=0.05
    ) as pool:
        await ws_server.wait_until(lambda: ws_server.handshakes >= 1, timeout=5)
        started = anyio.current_time()
        await ws_server.wait_until(lambda: ws_server.handshakes >= 4, timeout=5)
        elapsed = anyio.current_time() - started
        # at least two back-offs of the three (0.05 + 0.1 + 0.2 s) between them:
        # a tight loop makes these handshakes within milliseconds
        assert elapsed >= 0.25, elapsed
        assert pool.stats.connect_failures + pool.stats.closed >= 3


async def test_lifetime_margin_retires_a_connection_too_close_to_its_end(
    ws_server: WSServer,
) -> None:
    # max_lifetime 1 s (deadline drawn between 0.9 and 1 s), margin 0.8 s: a
    # lease of 0.2 s leaves less than the margin, so it is not lent again.
    async with open_pool(
        ws_server.url, max_lifetime=1.0, lifetime_margin=0.8, idle_timeout=None
    ) as pool:
        async with pool.connection() as first:
            await echo(first)
            await anyio.sleep(0.2)  # the lease's length
        async with pool.connection() as second:
            assert second is not first
            await echo(second)
        assert ws_server.handshakes == 2
    async with open_pool(ws_server.url, max_lifetime=60.0, lifetime_margin=1.0) as pool:
        async with pool.connection() as first:
            await echo(first)
        async with pool.connection() as again:
            assert again is first  # plenty of lifetime left: lent again


async def test_lease_warning_names_the_task_and_the_line_once(
    ws_server: WSServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="anyio_wspool")
    async with open_pool(ws_server.url, lease_warning=0.2) as pool:
        async with pool.connection() as quick:  # shorter than lease_warning: nothing
            await echo(quick)
        held = anyio.Event()
        logged = anyio.Event()

        async def forgetful() -> None:
            async with pool.connection() as ws:  # LEASE-LINE
                held.set()
                await echo(ws)
                await logged.wait()

        def warnings() -> list[logging.LogRecord]:
            return [r for r in caplog.records if "lease_warning" in r.getMessage()]

        async with anyio.create_task_group() as tg:
            tg.start_soon(forgetful, name="the forgetful task")
            await held.wait()
            await until(lambda: bool(warnings()), limit=5)
            await anyio.sleep(0.3)  # more than lease_warning again: still once
            logged.set()
    records = warnings()
    assert len(records) == 1
    message = records[0].getMessage()
    assert "the forgetful task" in message
    line = next(n for n, text in enumerate(SOURCE, 1) if text.endswith("# LEASE-LINE"))
    assert f"{__file__}:{line}" in message
