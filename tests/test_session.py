"""The hardened httpx-ws session: idle reading, stray pongs, limits, bounded close."""

from __future__ import annotations

import contextlib

import anyio
import pytest
from anyio.abc import SocketStream
from httpx_ws import AsyncWebSocketSession, WebSocketDisconnect, WebSocketUpgradeError

from anyio_wspool import WebSocketPool, open_pool

from ._util import until
from ._wsserver import WSServer

pytestmark = pytest.mark.anyio


async def test_idle_connection_is_read_and_its_messages_counted(ws_server: WSServer) -> None:
    async with open_pool(ws_server.url) as pool:
        async with pool.connection() as first:
            pass
        for i in range(5):  # more than httpx-ws's zero-size buffer could hold
            await ws_server.push(f"unsolicited {i}")
        await until(lambda: pool.stats.drained_messages == 5)
        async with pool.connection() as ws:
            assert ws is first
            await ws.send_text("mine")
            assert await ws.receive_text() == "mine"
    assert ws_server.handshakes == 1


async def test_idle_connection_with_unread_messages_keeps_answering_keepalive(
    ws_server: WSServer,
) -> None:
    async with open_pool(
        ws_server.url, keepalive_ping_interval_seconds=0.02, keepalive_ping_timeout_seconds=0.5
    ) as pool:
        async with pool.connection() as first:
            pass
        for i in range(3):
            await ws_server.push(f"unread {i}")
        await until(lambda: pool.stats.drained_messages == 3)
        # Several keep-alive rounds: with httpx-ws's own reader the unread
        # messages would block the pongs and keep-alive would kill the session.
        await anyio.sleep(0.3)
        async with pool.connection() as ws:
            assert ws is first
            await ws.send_text("alive")
            assert await ws.receive_text() == "alive"
    assert ws_server.handshakes == 1


async def test_unsolicited_pong_does_not_kill_an_idle_connection(ws_server: WSServer) -> None:
    async with open_pool(ws_server.url) as pool:
        async with pool.connection() as first:
            pass
        await ws_server.push_pong(b"nobody asked")
        await ws_server.push("after the pong")
        await until(lambda: pool.stats.drained_messages == 1)
        async with pool.connection() as ws:
            assert ws is first
            await ws.send_text("x")
            assert await ws.receive_text() == "x"
    assert ws_server.handshakes == 1


async def test_unsolicited_pong_does_not_disturb_a_borrower(ws_server: WSServer) -> None:
    async with open_pool(ws_server.url) as pool, pool.connection() as ws:
        await ws_server.push_pong()
        await ws.send_text("x")
        assert await ws.receive_text() == "x"
        pong = await ws.ping()
        with anyio.fail_after(5):
            await pong.wait()


async def test_messages_left_unread_at_release_never_reach_the_next_borrower(
    ws_server: WSServer,
) -> None:
    ws_server.push_after_reply = "stale"
    async with open_pool(ws_server.url) as pool:
        async with pool.connection() as ws:
            await ws.send_text("x")
            assert await ws.receive_text() == "x"
            # The server sent "stale" before it answers this ping: once the pong
            # is in, "stale" sits unread in the session's buffer.
            pong = await ws.ping()
            with anyio.fail_after(5):
                await pong.wait()
        assert pool.stats.drained_messages == 1
        async with pool.connection() as again:
            assert again is ws
            await again.send_text("y")
            assert await again.receive_text() == "y"


async def test_queue_size_holds_messages_for_a_slow_borrower(ws_server: WSServer) -> None:
    async with open_pool(ws_server.url, queue_size=2) as pool, pool.connection() as ws:
        for i in range(6):
            await ws_server.push(f"m{i}")
        received = [await ws.receive_text() for _ in range(6)]
        assert received == [f"m{i}" for i in range(6)]
        with pytest.raises(TimeoutError):
            await ws.receive_text(timeout=0.05)


async def test_message_larger_than_the_limit_closes_with_1009(ws_server: WSServer) -> None:
    async with open_pool(ws_server.url, max_message_size_bytes=1024) as pool:
        async with pool.connection() as ws:
            await ws.send_text("small")
            assert await ws.receive_text() == "small"
            await ws_server.push("x" * 5000)
            with pytest.raises(WebSocketDisconnect) as info:
                await ws.receive_text()
            assert info.value.code == 1009
        assert pool.stats.discarded == 1
        await ws_server.wait_until(lambda: ws_server.open_connections == 0)


async def test_a_bogus_accept_header_is_refused() -> None:
    async def fake_server(stream: SocketStream) -> None:
        async with stream:
            request = b""
            while b"\r\n\r\n" not in request:
                request += await stream.receive()
            await stream.send(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: bm90IHRoZSByaWdodCBhbnN3ZXI=\r\n\r\n"
            )
            with anyio.move_on_after(5), contextlib.suppress(anyio.EndOfStream):
                while await stream.receive():
                    pass

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, fake_server)
        async with open_pool(f"ws://127.0.0.1:{port}/") as pool:
            with pytest.raises(WebSocketUpgradeError, match="Sec-WebSocket-Accept"):
                await pool.acquire()
        tg.cancel_scope.cancel()


async def test_a_user_session_class_is_kept_and_hardened(ws_server: WSServer) -> None:
    class Mine(AsyncWebSocketSession):
        async def shout(self, text: str) -> str:
            await self.send_text(text.upper())
            return await self.receive_text()

    pool: WebSocketPool[AsyncWebSocketSession]
    async with open_pool(ws_server.url, session_class=Mine) as pool:
        async with pool.connection() as ws:
            assert isinstance(ws, Mine)
            assert await ws.shout("hi") == "HI"
            await ws_server.push_pong()  # hardened: does not kill it
            assert await ws.shout("again") == "AGAIN"
