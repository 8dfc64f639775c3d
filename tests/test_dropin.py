"""The pool as a drop-in for ``aconnect_ws``: same sessions, same options, one handshake."""

from __future__ import annotations

import json

import httpx
import pytest
from httpx_ws import AsyncWebSocketSession, aconnect_ws

from anyio_wspool import WebSocketPool

from ._external_server import ExternalServer
from ._stacks import open_pool
from ._wsserver import WSServer

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("stack")]


async def test_echo_through_external_server_with_given_client(
    external_server: ExternalServer,
) -> None:
    async with httpx.AsyncClient(trust_env=False) as client:
        async with aconnect_ws(
            external_server.url, client, session_class=AsyncWebSocketSession
        ) as direct:
            await direct.send_text("direct")
            expected = await direct.receive_text()
        async with open_pool(external_server.url, client=client) as pool:
            async with pool.connection() as ws:
                assert isinstance(ws, AsyncWebSocketSession)
                await ws.send_text("direct")
                assert await ws.receive_text() == expected
                await ws.send_bytes(b"\x00\x01")
                assert await ws.receive_bytes() == b"\x00\x01"
                await ws.send_json({"a": [1, 2]})
                assert await ws.receive_json() == {"a": [1, 2]}
        assert not client.is_closed, "a client given to the pool must not be closed by it"


async def test_headers_reach_the_server_and_the_callers_dict_is_untouched(
    external_server: ExternalServer,
) -> None:
    headers = {"X-Custom": "value-1"}
    async with open_pool(external_server.url + "headers", headers=headers) as pool:
        async with pool.connection() as ws:
            seen = json.loads(await ws.receive_text())
    assert seen["x-custom"] == "value-1"
    assert headers == {"X-Custom": "value-1"}


async def test_subprotocol_is_negotiated(external_server: ExternalServer) -> None:
    async with open_pool(external_server.url, subprotocols=["superchat", "chat"]) as pool:
        async with pool.connection() as ws:
            assert ws.subprotocol in {"superchat", "chat"}
            await ws.send_text("x")
            assert await ws.receive_text() == "x"


async def test_hundred_sequential_blocks_make_one_handshake_at_an_independent_server(
    external_server: ExternalServer,
) -> None:
    before = (await external_server.astats())["handshakes"]
    async with open_pool(external_server.url) as pool:
        for i in range(100):
            async with pool.connection() as ws:
                await ws.send_text(str(i))
                assert await ws.receive_text() == str(i)
        assert pool.stats.opened == 1
        assert pool.stats.reused == 99
    after = await external_server.astats(wait_open=0)
    assert after["handshakes"] - before == 1
    assert after["open"] == 0


async def test_hundred_sequential_blocks_make_one_handshake(ws_server: WSServer) -> None:
    async with open_pool(ws_server.url) as pool:
        for i in range(100):
            async with pool.connection() as ws:
                await ws.send_text(str(i))
                assert await ws.receive_text() == str(i)
    assert ws_server.handshakes == 1


async def test_pool_class_is_the_same_as_open_pool(ws_server: WSServer) -> None:
    async with WebSocketPool(ws_server.url, max_connections=2) as pool:
        async with pool.connection() as ws:
            await ws.send_text("x")
            assert await ws.receive_text() == "x"
        assert pool.max_connections == 2


async def test_acquire_and_release_without_a_block(ws_server: WSServer) -> None:
    async with open_pool(ws_server.url) as pool:
        ws = await pool.acquire()
        await ws.send_text("x")
        assert await ws.receive_text() == "x"
        assert pool.stats.in_use == 1
        await pool.release(ws)
        assert pool.stats.idle == 1
        again = await pool.acquire()
        assert again is ws
        await pool.release(again, discard=True)
        assert pool.stats.discarded == 1
        await ws_server.wait_until(lambda: ws_server.open_connections == 0)


async def test_options_pass_through_to_httpx(ws_server: WSServer) -> None:
    async with (
        open_pool(
            ws_server.url,
            params={"room": "7"},
            cookies={"session": "abc"},
            max_message_size_bytes=1024,
            queue_size=4,
            keepalive_ping_interval_seconds=None,
        ) as pool,
        pool.connection() as ws,
    ):
        await ws.send_text("x")
        assert await ws.receive_text() == "x"
    headers = dict(ws_server.last_request_headers)
    assert "session=abc" in headers["cookie"]


async def test_new_connection_always_opens_a_new_one(ws_server: WSServer) -> None:
    async with open_pool(ws_server.url) as pool:
        async with pool.connection() as first:
            pass
        async with pool.new_connection() as second:
            assert second is not first
        assert ws_server.handshakes == 2
        fresh = await pool.acquire_new()
        assert fresh is not first
        assert fresh is not second
        await pool.release(fresh)
        assert ws_server.handshakes == 3


async def test_new_connection_at_a_full_pool_closes_the_oldest_idle(ws_server: WSServer) -> None:
    async with open_pool(ws_server.url, max_connections=2) as pool:
        a = await pool.acquire()
        b = await pool.acquire()
        await pool.release(a)  # a has waited longest
        await pool.release(b)
        async with pool.new_connection() as c:
            assert c is not a
            assert c is not b
            assert pool.stats.idle == 1
            async with pool.connection() as d:
                assert d is b
        assert ws_server.handshakes == 3
        assert ws_server.max_open <= 2


async def test_uri_with_http_scheme(ws_server: WSServer) -> None:
    url = ws_server.url.replace("ws://", "http://")
    async with open_pool(url) as pool, pool.connection() as ws:
        await ws.send_text("x")
        assert await ws.receive_text() == "x"
