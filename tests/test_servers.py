"""The test servers themselves, checked with a plain httpx-ws client (and a raw wsproto one)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest
from anyio.abc import SocketStream
from httpx_ws import (
    AsyncWebSocketSession,
    WebSocketDisconnect,
    WebSocketNetworkError,
    WebSocketUpgradeError,
    aconnect_ws,
)
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Event, Ping, Pong, Request, TextMessage

from ._external_server import ExternalServer
from ._wsserver import WSServer, serve_ws

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def connect(url: str, **kwargs: Any) -> AsyncIterator[AsyncWebSocketSession]:
    """One httpx-ws session through its own client (no proxy from the environment)."""
    async with (
        httpx.AsyncClient(trust_env=False) as client,
        aconnect_ws(url, client, **kwargs) as ws,
    ):
        assert isinstance(ws, AsyncWebSocketSession)
        yield ws


class RawClient:
    """A bare wsproto client, for frames that httpx-ws cannot take (stray Pongs) or hides."""

    def __init__(self, stream: SocketStream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)

    async def send(self, event: Event) -> None:
        await self.stream.send(self.ws.send(event))

    async def next_event(self) -> Event:
        while True:
            for event in self.ws.events():
                return event
            self.ws.receive_data(await self.stream.receive())


@asynccontextmanager
async def raw_client(server: WSServer) -> AsyncIterator[RawClient]:
    async with await anyio.connect_tcp("127.0.0.1", server.port) as stream:
        client = RawClient(stream)
        await client.send(Request(host=f"127.0.0.1:{server.port}", target="/"))
        assert isinstance(await client.next_event(), AcceptConnection)
        yield client


# ---------------------------------------------------------------- in-process server


async def test_echo_text_and_bytes(ws_server: WSServer) -> None:
    async with connect(ws_server.url) as ws:
        await ws.send_text("hello")
        assert await ws.receive_text() == "hello"
        await ws.send_bytes(b"\x00\x01")
        assert await ws.receive_bytes() == b"\x00\x01"
    assert ws_server.messages_received == 2


async def test_counters_follow_a_connection(ws_server: WSServer) -> None:
    async with connect(ws_server.url) as ws:
        assert ws_server.tcp_accepted == 1
        assert ws_server.handshakes == 1
        assert ws_server.open_connections == 1
        await ws.send_text("x")
        await ws.receive_text()
    await ws_server.wait_until(lambda: ws_server.open_connections == 0)
    assert ws_server.max_open == 1
    assert ws_server.closes_received == 1
    assert ws_server.rejected == 0


async def test_max_open_is_the_high_water_mark(ws_server: WSServer) -> None:
    async with connect(ws_server.url), connect(ws_server.url):
        assert ws_server.open_connections == 2
    await ws_server.wait_until(lambda: ws_server.open_connections == 0)
    async with connect(ws_server.url):
        pass
    assert ws_server.max_open == 2
    assert ws_server.handshakes == 3


async def test_request_headers_and_subprotocols_are_recorded(ws_server: WSServer) -> None:
    async with connect(ws_server.url, headers={"X-Token": "abc"}, subprotocols=["a", "b"]):
        pass
    assert ("x-token", "abc") in ws_server.last_request_headers
    assert ("host", f"127.0.0.1:{ws_server.port}") in ws_server.last_request_headers
    assert ws_server.last_subprotocols == ["a", "b"]


async def test_accept_subprotocol_picks_it_when_offered(ws_server: WSServer) -> None:
    ws_server.accept_subprotocol = "b"
    async with connect(ws_server.url, subprotocols=["a", "b"]) as ws:
        assert ws.subprotocol == "b"
    async with connect(ws_server.url, subprotocols=["a"]) as ws:
        assert ws.subprotocol is None


async def test_reject_status_gives_upgrade_error(ws_server: WSServer) -> None:
    ws_server.reject_status = 403
    with pytest.raises(WebSocketUpgradeError) as info:
        async with connect(ws_server.url):
            pass
    assert info.value.response.status_code == 403
    assert ws_server.rejected == 1
    assert ws_server.handshakes == 0


async def test_close_after_closes_after_n_echoes(ws_server: WSServer) -> None:
    ws_server.close_after = 2
    ws_server.close_code = 4001
    async with connect(ws_server.url) as ws:
        for text in ("one", "two"):
            await ws.send_text(text)
            assert await ws.receive_text() == text
        with pytest.raises(WebSocketDisconnect) as info:
            await ws.receive_text()
    assert info.value.code == 4001
    await ws_server.wait_until(lambda: ws_server.open_connections == 0)
    assert ws_server.closes_received == 1  # the client's answer


async def test_push_reaches_the_client(ws_server: WSServer) -> None:
    async with connect(ws_server.url) as ws:
        await ws_server.push("news")
        assert await ws.receive_text() == "news"


async def test_push_after_reply_follows_each_echo(ws_server: WSServer) -> None:
    ws_server.push_after_reply = "extra"
    ws_server.push_delay = 0.01
    async with connect(ws_server.url) as ws:
        for text in ("a", "b"):
            await ws.send_text(text)
            assert await ws.receive_text() == text
            assert await ws.receive_text() == "extra"


async def test_fragmented_message_is_echoed_whole(ws_server: WSServer) -> None:
    async with connect(ws_server.url) as ws:
        await ws.send(TextMessage(data="frag", message_finished=False))
        await ws.send(TextMessage(data="ment"))
        assert await ws.receive_text() == "fragment"
    assert ws_server.messages_received == 1


async def test_silent_server_makes_the_handshake_time_out(ws_server: WSServer) -> None:
    ws_server.silent = True
    async with httpx.AsyncClient(trust_env=False, timeout=0.5) as client:
        with pytest.raises(httpx.TimeoutException):
            async with aconnect_ws(ws_server.url, client):
                pass
    assert ws_server.tcp_accepted == 1
    assert ws_server.handshakes == 0


async def test_pings_are_answered_unless_answer_pings_is_false(ws_server: WSServer) -> None:
    async with raw_client(ws_server) as client:
        await client.send(Ping(payload=b"p1"))
        assert await client.next_event() == Pong(payload=b"p1")
        ws_server.answer_pings = False
        # The server handles frames in order: the echo comes back, the pong never.
        await client.send(Ping(payload=b"p2"))
        await client.send(TextMessage(data="after"))
        assert await client.next_event() == TextMessage(data="after")


async def test_push_pong_sends_an_unsolicited_pong(ws_server: WSServer) -> None:
    async with raw_client(ws_server) as client:
        await ws_server.push_pong(b"stray")
        assert await client.next_event() == Pong(payload=b"stray")


async def test_close_all_runs_the_closing_handshake(ws_server: WSServer) -> None:
    async with anyio.create_task_group() as tg, connect(ws_server.url) as ws:
        tg.start_soon(ws_server.close_all, 4002)
        with pytest.raises(WebSocketDisconnect) as info:
            await ws.receive_text()
        # Leaving the session answers the close frame, which lets close_all return.
    assert info.value.code == 4002
    assert ws_server.open_connections == 0
    assert ws_server.closes_received == 1


async def test_abort_all_drops_connections_without_close_frame(ws_server: WSServer) -> None:
    async with connect(ws_server.url) as ws:
        await ws_server.abort_all()
        assert ws_server.open_connections == 0
        with pytest.raises(WebSocketNetworkError):
            await ws.receive_text()
    assert ws_server.closes_received == 0


async def test_stop_reading_blocks_client_writes_until_cleared(ws_server: WSServer) -> None:
    ws_server.stop_reading = True
    ws_server.echo = False
    chunk = b"x" * 2**20
    total = 32  # far more than the socket buffers hold
    sent = 0

    async def send_all(ws: AsyncWebSocketSession) -> None:
        nonlocal sent
        for _ in range(total):
            await ws.send_bytes(chunk)
            sent += 1

    async with connect(ws_server.url) as ws, anyio.create_task_group() as tg:
        tg.start_soon(send_all, ws)
        await anyio.wait_all_tasks_blocked()
        assert sent < total
        assert ws_server.messages_received == 0
        ws_server.stop_reading = False
    await ws_server.wait_until(lambda: ws_server.messages_received == total)


async def test_wait_until_times_out_with_the_counters(ws_server: WSServer) -> None:
    with pytest.raises(TimeoutError, match="handshakes=0"):
        await ws_server.wait_until(lambda: ws_server.handshakes == 1, timeout=0.05)


async def test_shutdown_is_bounded_against_a_client_that_stopped_reading() -> None:
    leave = anyio.Event()

    async def idle_client(url: str) -> None:
        # httpx-ws reads one message, then nothing more until it is received.
        # Its own fate when the server drops it is not under test.
        with contextlib.suppress(Exception):
            async with connect(url):
                await leave.wait()

    async def push_forever(server: WSServer) -> None:
        while True:
            await server.push("y" * 2**16)

    async with anyio.create_task_group() as tg:
        async with serve_ws(close_timeout=0.5) as server:
            tg.start_soon(idle_client, server.url)
            await server.wait_until(lambda: server.open_connections == 1)
            async with anyio.create_task_group() as pushers:
                pushers.start_soon(push_forever, server)
                await anyio.wait_all_tasks_blocked()  # the server's writes are stuck
                pushers.cancel_scope.cancel()
            started = anyio.current_time()
        elapsed = anyio.current_time() - started
        leave.set()
    assert server.open_connections == 0
    assert elapsed < 3.0


async def test_serve_ws_passes_errors_of_its_block_unwrapped() -> None:
    with pytest.raises(KeyError):
        async with serve_ws():
            raise KeyError("boom")


# ---------------------------------------------------------------- external server


async def test_external_server_echoes(external_server: ExternalServer) -> None:
    async with connect(external_server.url) as ws:
        await ws.send_text("hello")
        assert await ws.receive_text() == "hello"
        await ws.send_bytes(b"\x00\xff")
        assert await ws.receive_bytes() == b"\x00\xff"


async def test_external_stats_count_handshakes_and_open(
    external_server: ExternalServer,
) -> None:
    before = await external_server.astats(wait_open=0)
    assert before["open"] == 0
    async with connect(external_server.url):
        during = await external_server.astats(wait_open=1)
    after = await external_server.astats(wait_open=0)
    assert during["open"] == 1
    assert during["handshakes"] == before["handshakes"] + 1
    assert during["max_open"] >= 1
    assert after == {**during, "open": 0}


async def test_external_headers_path_shows_the_request_headers(
    external_server: ExternalServer,
) -> None:
    async with connect(f"{external_server.url}headers", headers={"X-Custom": "v1"}) as ws:
        headers = await ws.receive_json()
        await ws.send_text("then echo")
        assert await ws.receive_text() == "then echo"
    assert headers["x-custom"] == "v1"
    assert headers["upgrade"] == "websocket"


async def test_external_subprotocol_negotiation(external_server: ExternalServer) -> None:
    async with connect(external_server.url, subprotocols=["superchat", "chat"]) as ws:
        assert ws.subprotocol == "superchat"
    async with connect(external_server.url, subprotocols=["other", "chat"]) as ws:
        assert ws.subprotocol == "chat"
    async with connect(external_server.url, subprotocols=["other"]) as ws:
        assert ws.subprotocol is None
