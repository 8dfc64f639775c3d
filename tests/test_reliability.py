"""Fifteen ways an outside review broke the pool at its edges, one test each.

Each test is named after the item it proves (``item01`` … ``item15``). Where
another module already proves an item in depth (the cancellation matrix,
virtual time), the test here is the short, direct reproduction of the
reported failure, and the comment points to the rest.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest
from httpx_ws import AsyncWebSocketSession, WebSocketDisconnect, WebSocketUpgradeError

from anyio_wspool import PoolClosed, PoolError, PoolTimeout, WebSocketPool, open_pool

from ._proxy import serve_proxy
from ._util import until, wait_closed
from ._wsserver import WSServer

pytestmark = pytest.mark.anyio

SECRET = "SEKRET"


async def echo(ws: AsyncWebSocketSession, text: str = "x") -> None:
    await ws.send_text(text)
    assert await ws.receive_text() == text


@asynccontextmanager
async def hangs() -> AsyncIterator[object]:
    await anyio.sleep_forever()
    yield object()  # pragma: no cover


class Boom(Exception):
    pass


# 1 -------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["min_connections", "prewarm", "borrower in the same tick"])
async def test_item01_exit_does_not_wait_for_connect_attempts(how: str) -> None:
    # (test_virtual_time and test_matrix prove the same at exact times and at
    # every await point)
    started = anyio.current_time()
    warm = 1 if how == "min_connections" else 0
    async with anyio.create_task_group() as tg:
        async with open_pool(connect=hangs, connect_timeout=10, min_connections=warm) as pool:
            if how == "prewarm":
                pool.prewarm(2)
            elif how == "borrower in the same tick":

                async def borrow() -> None:
                    with pytest.raises(PoolClosed):
                        await pool.acquire()

                tg.start_soon(borrow)
    assert anyio.current_time() - started < 2.0  # the bug: 30 s (10 s for each of 3 attempts)


# 2 -------------------------------------------------------------------------------------


async def test_item02_aclose_during_a_check_on_acquire_ping_gives_pool_closed(
    ws_server: WSServer,
) -> None:
    async with open_pool(ws_server.url, check_on_acquire=True, connect_timeout=0.3) as pool:
        async with pool.connection() as ws:
            await echo(ws)
        ws_server.answer_pings = False  # the ping hangs
        outcome: list[BaseException] = []

        async def borrow() -> None:
            try:
                await pool.acquire()
            except PoolClosed as exc:
                outcome.append(exc)

        with anyio.fail_after(3):  # the bug: for ever
            async with anyio.create_task_group() as tg:
                tg.start_soon(borrow)
                await ws_server.wait_until(lambda: ws_server.open_connections == 1)
                await anyio.wait_all_tasks_blocked()
                await pool.aclose()
        assert len(outcome) == 1
        assert isinstance(outcome[0], PoolClosed)


# 3 -------------------------------------------------------------------------------------


@pytest.mark.parametrize("stack", ["httpx-ws", "generic"])
async def test_item03_a_user_exception_survives_a_cancelled_scope(
    ws_server: WSServer, stack: str
) -> None:
    @asynccontextmanager
    async def resource() -> AsyncIterator[object]:
        await anyio.lowlevel.checkpoint()
        yield object()

    pool: WebSocketPool[Any]
    if stack == "httpx-ws":
        pool = open_pool(ws_server.url, max_connections=4, min_connections=2)
    else:
        pool = open_pool(connect=resource, max_connections=4, min_connections=2)
    with pytest.raises(Boom):
        with anyio.CancelScope() as outer:
            async with pool:
                await pool.wait_ready(5)
                async with pool.connection():  # one lent, one idle
                    outer.cancel()
                    raise Boom
    if stack == "httpx-ws":
        await ws_server.wait_until(lambda: ws_server.open_connections == 0)


# 4 -------------------------------------------------------------------------------------


async def test_item04_a_connection_closed_during_on_connect_is_never_lent(
    ws_server: WSServer,
) -> None:
    # (test_lifecycle: the close is a failed attempt carrying the server's code)
    ws_server.close_after = 1
    ws_server.close_code = 1008
    lent: list[AsyncWebSocketSession] = []

    async def login(ws: AsyncWebSocketSession) -> None:
        await ws.send_text("login")
        await wait_closed(ws)  # the server closed it while the hook ran

    async with open_pool(ws_server.url, on_connect=login, max_connections=1) as pool:
        with pytest.raises(WebSocketDisconnect) as caught:
            lent.append(await pool.acquire())
    assert lent == []
    assert caught.value.code == 1008


# 5 -------------------------------------------------------------------------------------


async def test_item05_the_answer_to_an_unread_login_never_reaches_a_borrower(
    ws_server: WSServer,
) -> None:
    # The answer may still be in flight when the hook returns: with
    # drain_on_release a new connection is drained before its first lease.
    async def login(ws: AsyncWebSocketSession) -> None:
        await ws.send_text("login answer")  # echoed; the hook does not read it

    async with open_pool(
        ws_server.url, on_connect=login, drain_on_release=True, drain_quiet_period=0.1
    ) as pool:
        async with pool.connection() as ws:
            await ws.send_text("mine")
            with anyio.fail_after(5):
                assert await ws.receive_text() == "mine"
        assert pool.stats.drained_messages == 1


# 6 -------------------------------------------------------------------------------------


async def test_item06_a_connector_yielding_one_object_twice_gets_two_leases() -> None:
    shared = object()

    @asynccontextmanager
    async def same_object() -> AsyncIterator[object]:
        await anyio.lowlevel.checkpoint()
        yield shared

    async with open_pool(connect=same_object, max_connections=2, acquire_timeout=1) as pool:
        async with pool.connection() as outer:
            async with pool.connection() as inner:
                assert outer is inner is shared
                assert pool.stats.in_use == 2
            assert pool.stats.in_use == 1
        assert pool.stats.in_use == 0
        for _ in range(3):  # later borrowers are served
            async with pool.connection():
                pass
        # release() of the shared object gives back one lease at a time
        a = await pool.acquire()
        b = await pool.acquire()
        await pool.release(a)
        assert pool.stats.in_use == 1
        await pool.release(b)
        assert pool.stats.in_use == 0
        with pytest.raises(PoolError):
            await pool.release(shared)


# 7 -------------------------------------------------------------------------------------


async def test_item07_a_borrower_never_waits_out_a_background_back_off() -> None:
    # (test_virtual_time proves it at exact virtual times)
    up = False
    attempts = 0

    @asynccontextmanager
    async def flaky() -> AsyncIterator[object]:
        nonlocal attempts
        attempts += 1
        await anyio.lowlevel.checkpoint()
        if not up:
            raise ConnectionRefusedError("down")
        yield object()

    async with open_pool(
        connect=flaky,
        max_connections=10,
        min_connections=1,
        connect_attempts=1,
        retry_backoff=30.0,
        retry_backoff_max=30.0,
        acquire_timeout=2.0,
    ) as pool:
        # the warm-up failed; its replacement is backing off for up to 30 s
        await until(lambda: pool.stats.connect_failures == 1 and pool.stats.connecting == 1)
        up = True
        with anyio.fail_after(1.5):  # the bug: PoolTimeout after 2 s
            async with pool.connection():
                pass


# 8 -------------------------------------------------------------------------------------


async def test_item08_secrets_never_reach_errors_logs_or_reprs(
    ws_server: WSServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    # a header value h11 refuses: refused at creation, without the value
    with pytest.raises((ValueError, TypeError)) as refused:
        open_pool(ws_server.url, headers={"Authorization": f"Bearer {SECRET}\n"})
    assert SECRET not in str(refused.value)
    # auth as a string: refused at creation, without the value
    with pytest.raises(TypeError) as refused_auth:
        open_pool(ws_server.url, auth=f"Bearer {SECRET}")
    assert SECRET not in str(refused_auth.value)
    # a bare query token
    token_url = ws_server.url + f"?eyJ{SECRET}"
    async with open_pool(token_url, connect_attempts=1) as pool:
        assert SECRET not in str(pool.uri)
        assert SECRET not in repr(pool)
        async with pool.connection() as ws:
            await echo(ws)
    ws_server.reject_status = 403
    async with open_pool(token_url, connect_attempts=1) as pool:
        with pytest.raises(WebSocketUpgradeError) as failed:
            await pool.acquire()
    assert SECRET not in str(failed.value)
    assert all(SECRET not in note for note in getattr(failed.value, "__notes__", []))
    assert SECRET not in caplog.text


# 9 -------------------------------------------------------------------------------------


async def test_item09_check_on_acquire_keeps_to_acquire_timeout_and_to_fifo(
    ws_server: WSServer,
) -> None:
    async with open_pool(
        ws_server.url,
        check_on_acquire=True,
        connect_timeout=3.0,
        acquire_timeout=0.5,
        max_connections=2,
    ) as pool:
        async with pool.connection() as a, pool.connection() as b:
            await echo(a)
            await echo(b)
        ws_server.answer_pings = False  # both idle connections stop answering
        started = anyio.current_time()
        with pytest.raises(PoolTimeout):
            await pool.acquire()
        assert anyio.current_time() - started < 1.5  # the bug: 2 pings of 3 s
    # FIFO: a borrower whose ping failed is served before one who came later
    async with open_pool(
        ws_server.url, check_on_acquire=True, connect_timeout=0.3, max_connections=1
    ) as pool:
        ws_server.answer_pings = True
        async with pool.connection() as ws:
            await echo(ws)
        ws_server.answer_pings = False
        order: list[str] = []

        async def borrow(name: str) -> None:
            async with pool.connection() as ws:
                order.append(name)
                await echo(ws)

        async with anyio.create_task_group() as tg:
            tg.start_soon(borrow, "first")  # pings the idle one, which fails
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(borrow, "second")
            await anyio.wait_all_tasks_blocked()
            ws_server.answer_pings = True
        assert order == ["first", "second"]


# 10 ------------------------------------------------------------------------------------


async def test_item10_a_ping_after_our_close_does_not_break_the_closing_handshake(
    ws_server: WSServer, caplog: pytest.LogCaptureFixture
) -> None:
    ws_server.ping_before_close_reply = True
    caplog.set_level(logging.WARNING)
    async with open_pool(ws_server.url, close_timeout=2.0) as pool:
        async with pool.connection() as ws:
            await echo(ws)
        started = anyio.current_time()
    assert anyio.current_time() - started < 1.5  # the server's close was read
    await ws_server.wait_until(lambda: ws_server.closes_received == 1)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# 11 ------------------------------------------------------------------------------------


async def test_item11_aclose_is_bounded_by_close_timeout_with_a_stuck_on_release(
    ws_server: WSServer,
) -> None:
    stuck = anyio.Event()

    async def on_release(ws: AsyncWebSocketSession) -> None:
        stuck.set()
        await anyio.sleep_forever()

    async with open_pool(
        ws_server.url, on_release=on_release, drain_timeout=30, close_timeout=0.5
    ) as pool:
        async with pool.connection() as ws:
            await echo(ws)
        await stuck.wait()
        started = anyio.current_time()
        await pool.aclose()
        assert anyio.current_time() - started < 1.5  # the bug: drain_timeout (30 s)


# 12 ------------------------------------------------------------------------------------


async def test_item12_new_connection_with_acquire_timeout_zero_makes_room(
    ws_server: WSServer,
) -> None:
    async with open_pool(ws_server.url, max_connections=1, acquire_timeout=0) as pool:
        async with pool.connection() as old:
            await echo(old)
        assert pool.stats.idle == 1
        async with pool.new_connection() as new:
            assert new is not old
            await echo(new)
        assert ws_server.handshakes == 2


# 13 ------------------------------------------------------------------------------------


def test_item13_a_pool_is_created_outside_an_event_loop(
    ws_server_url_outside_loop: str, anyio_backend: tuple[str, dict[str, object]]
) -> None:
    pool: WebSocketPool[AsyncWebSocketSession] = open_pool(ws_server_url_outside_loop)
    assert "not started" in repr(pool)

    async def use() -> None:
        from ._wsserver import serve_ws

        async with serve_ws() as server:
            async with open_pool(server.url) as other, pool:
                async with other.connection() as ws:
                    await echo(ws)
                assert pool.stats.in_use == 0

    name, options = anyio_backend
    anyio.run(use, backend=name, backend_options=options)


@pytest.fixture
def ws_server_url_outside_loop() -> str:
    # Nothing listens here: the pool above is only entered and left.
    return "ws://127.0.0.1:9/"


# 14 ------------------------------------------------------------------------------------


async def test_item14_a_dead_peer_frees_its_capacity_at_once(ws_server: WSServer) -> None:
    async with serve_proxy("127.0.0.1", ws_server.port) as proxy:
        async with open_pool(
            proxy.url,
            max_connections=1,
            close_timeout=5.0,
            keepalive_ping_interval_seconds=0.05,
            keepalive_ping_timeout_seconds=0.1,
        ) as pool:
            async with pool.connection() as first:
                await echo(first)
            proxy.kill_open()  # the peer is gone without a word: nothing comes back
            await wait_closed(first)  # keep-alive gave up on it
            started = anyio.current_time()
            async with pool.connection() as second:
                await echo(second)
            assert anyio.current_time() - started < 2.0  # the bug: close_timeout (5 s)


# 15 ------------------------------------------------------------------------------------


async def test_item15_a_send_after_the_servers_close_carries_its_code(
    ws_server: WSServer,
) -> None:
    # The server's close frame arrives while a large send holds the socket (the
    # proxy stopped reading it): the answer to the close cannot be written yet,
    # and a send in that window must report the server's code.
    async with serve_proxy("127.0.0.1", ws_server.port) as proxy:
        async with open_pool(proxy.url, close_timeout=1.0) as pool:
            refused: list[WebSocketDisconnect] = []
            async with pool.connection() as ws:
                await echo(ws)
                proxy.set_mode("stop_reading", direction="up")
                async with anyio.create_task_group() as tg:
                    tg.start_soon(ws.send_bytes, b"x" * 64_000_000)
                    await anyio.wait_all_tasks_blocked()
                    await ws_server.close_all(4001, wait=False)
                    with anyio.fail_after(5):
                        await ws._should_close.wait()  # the close frame was read
                    try:
                        await ws.send_text("after the close")
                    except WebSocketDisconnect as exc:
                        refused.append(exc)
                    tg.cancel_scope.cancel()
                proxy.set_mode("pass")
            assert [exc.code for exc in refused] == [4001]


# and the two variants of 8 that need no server ----------------------------------------


def test_item08_httpx_errors_are_not_retried_when_the_request_is_wrong() -> None:
    from anyio_wspool._transient import is_transient

    assert not is_transient(httpx.LocalProtocolError(f"bad header {SECRET}"))
