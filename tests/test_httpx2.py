"""What is specific to httpx2 clients (the rest runs on both stacks: ``tests/_stacks.py``)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import assert_type

import anyio
import httpx2
import httpx2.websockets as ws2
import httpx_ws
import pytest

from anyio_wspool import WebSocketPool, open_pool

from ._util import until
from ._wsserver import WSServer

pytestmark = pytest.mark.anyio


async def test_lends_httpx2_sessions_and_never_closes_the_client(ws_server: WSServer) -> None:
    async with httpx2.AsyncClient() as client:
        async with open_pool(ws_server.url, client=client, max_connections=2) as pool:
            for n in range(5):
                async with pool.connection() as ws:
                    assert isinstance(ws, ws2.AsyncWebSocketSession)
                    await ws.send_text(f"hello {n}")
                    assert await ws.receive_text() == f"hello {n}"
            assert pool.stats.opened == 1
            assert pool.stats.reused == 4
        assert not client.is_closed  # the pool never closes a client it was given
        async with client.websocket(ws_server.url) as ws:  # and it still works
            await ws.send_text("after")
            assert await ws.receive_text() == "after"
    await ws_server.wait_until(lambda: ws_server.open_connections == 0)


async def test_connection_errors_keep_httpx2_types(ws_server: WSServer) -> None:
    async with httpx2.AsyncClient() as client:
        with socket_that_refuses() as url:
            async with open_pool(url, client=client, connect_attempts=1) as pool:
                with pytest.raises(httpx2.ConnectError):
                    await pool.acquire()
        ws_server.reject_status = 403
        async with open_pool(ws_server.url, client=client) as pool:
            with pytest.raises(ws2.WebSocketUpgradeError) as info:
                await pool.acquire()
            assert info.value.response.status_code == 403
            assert ws_server.rejected == 1  # a 4xx is not retried
        ws_server.reject_status = None
        ws_server.close_after = 1  # the server closes after one message
        async with open_pool(ws_server.url, client=client) as pool:
            with pytest.raises(ws2.WebSocketDisconnect):
                async with pool.connection() as ws:
                    await ws.send_text("one")
                    await ws.receive_text()
                    await ws.receive_text()


async def test_httpx2_client_below_the_pool_capacity_is_refused(ws_server: WSServer) -> None:
    async with httpx2.AsyncClient(limits=httpx2.Limits(max_connections=2)) as client:
        with pytest.raises(ValueError, match=r"httpx2\.AsyncClient allows at most 2"):
            open_pool(ws_server.url, client=client, max_connections=4)


def test_the_pool_is_typed_by_its_client() -> None:
    # Checked by mypy (assert_type does nothing at run time): a pool given an
    # httpx2 client lends httpx2 sessions; without one, httpx-ws's.
    client = httpx2.AsyncClient()
    assert_type(
        open_pool("ws://127.0.0.1:9/", client=client), WebSocketPool[ws2.AsyncWebSocketSession]
    )
    assert_type(open_pool("ws://127.0.0.1:9/"), WebSocketPool[httpx_ws.AsyncWebSocketSession])


def test_httpx2_options_are_checked_with_httpx2_types() -> None:
    client = httpx2.AsyncClient()
    pool = open_pool(
        "ws://127.0.0.1:9/",
        client=client,
        timeout=httpx2.Timeout(3.0),
        params={"a": "1"},
        headers={"X-Token": "s3cret"},
    )
    assert pool.uri == "ws://127.0.0.1:9/"
    with pytest.raises(TypeError, match=r"httpx2\.Auth") as info:
        open_pool("ws://127.0.0.1:9/", client=client, auth=object())
    assert "s3cret" not in str(info.value)


class socket_that_refuses:
    """A URL on 127.0.0.1 where nothing listens (the port was just freed)."""

    def __enter__(self) -> str:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        return f"ws://127.0.0.1:{port}/"

    def __exit__(self, *exc: object) -> None:
        return None


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_import_and_use_without_httpx2() -> None:
    result = _run(
        """
        import sys
        sys.modules["httpx2"] = None  # as if it were not installed
        import anyio_wspool
        pool = anyio_wspool.open_pool("ws://127.0.0.1:9/")
        assert not any(name.startswith("httpx2") for name in sys.modules if sys.modules[name])
        print("ok", type(pool).__name__)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "ok WebSocketPool" in result.stdout


def test_httpx2_client_without_websocket_support_names_the_extra() -> None:
    result = _run(
        """
        import sys
        import httpx2
        sys.modules["httpx2.websockets"] = None  # httpx2 without its [ws] extra
        import anyio_wspool
        try:
            anyio_wspool.open_pool("ws://127.0.0.1:9/", client=httpx2.AsyncClient())
        except ImportError as exc:
            print("ImportError:", exc)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "pip install 'anyio-wspool[httpx2]'" in result.stdout


async def test_idle_httpx2_connection_stays_readable(ws_server: WSServer) -> None:
    # httpx2 keeps httpx-ws's receive buffer of size zero: one unread message
    # would stop the reader. The pool's session reads idle connections.
    ws_server.push_after_reply = "late"
    ws_server.push_delay = 0.0
    async with httpx2.AsyncClient() as client:
        async with open_pool(ws_server.url, client=client, max_connections=1) as pool:
            async with pool.connection() as ws:
                await ws.send_text("ask")
                assert await ws.receive_text() == "ask"
            await until(lambda: pool.stats.drained_messages >= 1)
            ws_server.push_after_reply = None
            async with pool.connection() as ws:
                ping = await ws.ping()
                with anyio.fail_after(5):
                    await ping.wait()  # the reader still reads: the pong arrives
                await ws.send_text("again")
                assert await ws.receive_text() == "again"
