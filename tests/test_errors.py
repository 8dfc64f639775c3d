"""Errors: user exceptions unwrapped, connection errors typed, containment, clean exit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest
from anyio import wait_all_tasks_blocked
from httpx_ws import WebSocketDisconnect, WebSocketNetworkError, WebSocketUpgradeError

from anyio_wspool import PoolError, open_pool

from ._util import until, wait_closed
from ._wsserver import WSServer

pytestmark = pytest.mark.anyio


class Boom(Exception):
    pass


async def test_exception_in_block_discards_the_connection_and_is_not_wrapped(
    ws_server: WSServer,
) -> None:
    async with open_pool(ws_server.url) as pool:
        with pytest.raises(Boom) as info:
            async with pool.connection() as ws:
                await ws.send_text("x")
                raise Boom("from the block")
        assert type(info.value) is Boom
        assert pool.stats.discarded == 1
        assert pool.stats.idle == 0
        await ws_server.wait_until(lambda: ws_server.open_connections == 0)
        async with pool.connection() as again:
            assert again is not ws
    assert ws_server.handshakes == 2


async def test_exception_leaves_open_pool_unwrapped(ws_server: WSServer) -> None:
    with pytest.raises(Boom) as info:
        async with open_pool(ws_server.url) as pool:
            async with pool.connection() as ws:
                await ws.send_text("x")
            raise Boom("from the pool's block")
    assert type(info.value) is Boom
    assert pool.is_closed
    await ws_server.wait_until(lambda: ws_server.open_connections == 0)


async def test_exception_inside_both_blocks_is_not_wrapped(ws_server: WSServer) -> None:
    with pytest.raises(KeyError):
        async with open_pool(ws_server.url) as pool, pool.connection():
            raise KeyError("inside both")


async def test_cancellation_inside_the_block_closes_the_connection(ws_server: WSServer) -> None:
    async with open_pool(ws_server.url) as pool:
        with anyio.CancelScope() as scope:
            async with pool.connection() as ws:
                await ws.send_text("x")
                scope.cancel()  # cancelled inside the block, not while connecting
                await anyio.sleep_forever()
        assert scope.cancelled_caught
        assert pool.stats.discarded == 1
        assert pool.stats.in_use == 0
        await ws_server.wait_until(lambda: ws_server.open_connections == 0)


async def test_cancelling_the_pools_scope_closes_everything(ws_server: WSServer) -> None:
    with anyio.CancelScope() as scope:
        async with open_pool(ws_server.url) as pool:
            async with pool.connection():
                pass
            held = await pool.acquire()
            await held.send_text("x")
            scope.cancel()
            await anyio.sleep_forever()
    assert scope.cancelled_caught
    assert pool.stats.in_use == 0
    await ws_server.wait_until(lambda: ws_server.open_connections == 0)


async def test_after_exit_the_server_sees_every_connection_closed(ws_server: WSServer) -> None:
    async with open_pool(ws_server.url, max_connections=8) as pool:

        async def borrower() -> None:
            async with pool.connection() as ws:
                await ws.send_text("x")
                await ws.receive_text()

        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(borrower)
    # Every socket is closed; every connection the pool opened was closed with
    # a close frame (handshakes still in flight at exit are cancelled instead).
    await ws_server.wait_until(lambda: ws_server.open_connections == 0)
    assert ws_server.closes_received == pool.stats.opened >= 1
    assert pool.stats.closed == pool.stats.opened


async def test_release_twice_raises_pool_error(ws_server: WSServer) -> None:
    async with open_pool(ws_server.url) as pool:
        ws = await pool.acquire()
        await pool.release(ws)
        with pytest.raises(PoolError, match="did not lend, or that was released already"):
            await pool.release(ws)


async def test_release_of_a_foreign_object_raises_pool_error(ws_server: WSServer) -> None:
    async with open_pool(ws_server.url) as pool, open_pool(ws_server.url) as other:
        foreign = await other.acquire()
        with pytest.raises(PoolError):
            await pool.release(foreign)
        with pytest.raises(PoolError):
            await pool.release(object())  # type: ignore[arg-type]
        await other.release(foreign)


async def test_release_of_a_block_connection_is_refused(ws_server: WSServer) -> None:
    async with open_pool(ws_server.url) as pool:
        async with pool.connection() as ws:
            with pytest.raises(PoolError, match=r"pool\.connection\(\) block holds"):
                await pool.release(ws)
            # Still the block's: not lent to anyone else, and it still works.
            assert pool.stats.in_use == 1
            await ws.send_text("x")
            assert await ws.receive_text() == "x"
        assert pool.stats.idle == 1
        assert pool.stats.discarded == 0


async def test_refused_upgrade_keeps_httpx_ws_error_type(ws_server: WSServer) -> None:
    ws_server.reject_status = 403
    async with open_pool(ws_server.url) as pool:
        with pytest.raises(WebSocketUpgradeError) as info:
            async with pool.connection():
                pytest.fail("lent a connection the server refused")
        assert info.value.response.status_code == 403
        assert pool.stats.connect_failures == 1
        assert pool.stats.connecting == 0
        ws_server.reject_status = None
        async with pool.connection() as ws:
            await ws.send_text("x")
            assert await ws.receive_text() == "x"


async def test_connection_refused_keeps_httpx_error_type() -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    await listener.aclose()  # nothing listens there any more
    async with open_pool(f"ws://127.0.0.1:{port}/", retry_backoff=0.01) as pool:
        with pytest.raises(httpx.ConnectError) as info:
            await pool.acquire()
        assert pool.stats.connect_failures == 3  # connect_attempts
        assert "3 attempt(s)" in "".join(getattr(info.value, "__notes__", []))


async def test_connect_timeout_bounds_the_handshake(ws_server: WSServer) -> None:
    ws_server.silent = True
    async with open_pool(
        ws_server.url, connect_timeout=0.2, connect_attempts=1, acquire_timeout=30
    ) as pool:
        started = anyio.current_time()
        with pytest.raises(httpx.ConnectTimeout, match=r"connect_timeout=0\.2"):
            await pool.acquire()
        assert anyio.current_time() - started < 5
        assert pool.stats.connecting == 0


async def test_server_closing_an_idle_connection_is_contained(ws_server: WSServer) -> None:
    async with open_pool(ws_server.url) as pool:
        async with pool.connection() as first:
            pass
        await ws_server.close_all(code=1001)
        await ws_server.wait_until(lambda: ws_server.open_connections == 0)
        await wait_closed(first)
        assert pool.stats.idle == 0
        async with pool.connection() as ws:
            assert ws is not first
            await ws.send_text("x")
            assert await ws.receive_text() == "x"
        assert ws_server.handshakes == 2


async def test_server_dropping_an_idle_socket_is_contained(ws_server: WSServer) -> None:
    async with open_pool(ws_server.url) as pool:
        async with pool.connection() as first:
            pass
        await ws_server.abort_all()
        await ws_server.wait_until(lambda: ws_server.open_connections == 0)
        await wait_closed(first)
        assert pool.stats.idle == 0
        async with pool.connection() as ws:
            assert ws is not first
            await ws.send_text("x")
            assert await ws.receive_text() == "x"


async def test_server_closing_a_lent_connection_reaches_only_its_borrower(
    ws_server: WSServer,
) -> None:
    async with open_pool(ws_server.url) as pool:
        async with pool.connection() as ws:
            await ws_server.close_all(code=1001)
            with pytest.raises(WebSocketDisconnect) as info:
                await ws.receive_text()
            assert info.value.code == 1001
            with pytest.raises(WebSocketDisconnect):
                await ws.send_text("after the close")  # never wsproto's LocalProtocolError
        assert pool.stats.discarded == 1  # found dead when it came back
        async with pool.connection() as fresh:
            assert fresh is not ws
            await fresh.send_text("x")
            assert await fresh.receive_text() == "x"


async def test_close_is_bounded_against_a_peer_that_stopped_reading(
    ws_server: WSServer,
) -> None:
    ws_server.stop_reading = True
    payload = "x" * 65536
    async with open_pool(ws_server.url, close_timeout=0.3) as pool:
        with anyio.move_on_after(0.5):
            async with pool.connection() as ws:
                while True:  # fills the socket buffers until the write blocks
                    await ws.send_text(payload)
        started = anyio.current_time()
        with anyio.fail_after(5):
            await pool.aclose()
        assert anyio.current_time() - started < 3
    ws_server.stop_reading = False
    await ws_server.wait_until(lambda: ws_server.open_connections == 0)


async def test_given_client_with_too_few_connections_is_refused_clearly(
    ws_server: WSServer,
) -> None:
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=3)) as client:
        with pytest.raises(ValueError, match=r"at most 3 connections.*max_connections=10"):
            open_pool(ws_server.url, client=client, max_connections=10)
        async with open_pool(ws_server.url, client=client, max_connections=3) as pool:
            with pytest.raises(ValueError, match="at most 3 connections"):
                pool.max_connections = 4
            assert pool.max_connections == 3


async def test_the_pools_own_client_is_closed_and_a_given_one_is_not(
    ws_server: WSServer,
) -> None:
    async with httpx.AsyncClient() as client:
        async with open_pool(ws_server.url, client=client) as pool:
            async with pool.connection():
                pass
        assert not client.is_closed
    async with open_pool(ws_server.url) as own:
        async with own.connection():
            pass
        made = own._connector._client  # type: ignore[attr-defined]
        assert made is not None
    assert made.is_closed


async def test_a_dead_borrower_connection_does_not_disturb_others(ws_server: WSServer) -> None:
    async with open_pool(ws_server.url, max_connections=2) as pool:
        async with pool.connection() as a, pool.connection() as b:
            await ws_server.abort_all()
            with pytest.raises((WebSocketDisconnect, WebSocketNetworkError)):
                await a.receive_text()
            with pytest.raises((WebSocketDisconnect, WebSocketNetworkError)):
                await b.receive_text()
        await wait_all_tasks_blocked()
        assert pool.stats.idle == 0
        async with pool.connection() as c:
            await c.send_text("still works")
            assert await c.receive_text() == "still works"


async def test_a_connection_still_lent_at_close_is_closed_with_a_warning(
    ws_server: WSServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_pool(ws_server.url) as pool:
        ws = await pool.acquire()  # never released
        await ws.send_text("x")
        assert await ws.receive_text() == "x"
    await ws_server.wait_until(lambda: ws_server.open_connections == 0)
    assert any("still lent" in record.getMessage() for record in caplog.records)
    with pytest.raises(WebSocketDisconnect):
        await ws.send_text("after the pool closed")
    await pool.release(ws)  # a no-op once the pool is closed


async def test_release_finds_the_acquire_lease_of_a_shared_object() -> None:
    # A connector that yields one object for every connection: release() gives
    # back the lease taken with acquire(), never the lease of a block.
    shared = object()

    @asynccontextmanager
    async def same_object() -> AsyncIterator[object]:
        await anyio.lowlevel.checkpoint()
        yield shared

    async with open_pool(connect=same_object, max_connections=2) as pool:
        taken = await pool.acquire()
        async with pool.connection() as held:
            assert held is taken
            await pool.release(taken)
            assert pool.stats.in_use == 1  # the block's lease is still held
        assert pool.stats.in_use == 0


# -- user code that raises a cancellation nobody asked for (asyncio) -----------------


async def _cancelled_future() -> None:
    future = asyncio.get_running_loop().create_future()
    future.cancel()
    await future  # raises CancelledError; no scope was cancelled


@pytest.mark.parametrize("where", ["on_connect", "on_release", "on_drained", "connector"])
async def test_a_callback_raising_a_stray_cancellation_is_its_error(
    ws_server: WSServer, anyio_backend: tuple[str, object], where: str
) -> None:
    # On asyncio a hook can raise CancelledError without being cancelled (it
    # awaited a future that other code cancelled). The pool treats it as the
    # hook's error: its task group lives on, and borrowers get an answer.
    if anyio_backend[0] != "asyncio":
        pytest.skip("only asyncio lets user code raise a cancellation of its own")
    calls = 0

    async def hook(_: object) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            await _cancelled_future()

    @asynccontextmanager
    async def connector() -> AsyncIterator[object]:
        await hook(None)
        yield object()

    with anyio.fail_after(5):
        if where == "connector":
            async with open_pool(connect=connector, acquire_timeout=2) as generic:
                with pytest.raises(RuntimeError, match="without being cancelled"):
                    await generic.acquire()
                async with generic.connection():
                    pass
            return
        options: dict[str, Any] = {where: hook, "acquire_timeout": 2}
        if where == "on_drained":
            options["drain_on_release"] = True
            options["drain_quiet_period"] = 0.05
        async with open_pool(ws_server.url, **options) as pool:
            if where == "on_connect":
                with pytest.raises(RuntimeError, match="without being cancelled"):
                    await pool.acquire()
            else:
                async with pool.connection() as ws:
                    await ws.send_text("left unread")  # drained, for on_drained
                await until(lambda: calls == 1)
            for _ in range(2):  # the pool goes on
                async with pool.connection() as ws:
                    await ws.send_text("x")
                    assert await ws.receive_text() == "x"
            assert not pool.is_closed
