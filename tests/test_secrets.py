"""Guarantee 9: no password, query value, header value or cookie in reprs, logs or errors."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest

from anyio_wspool import PoolTimeout
from anyio_wspool._redact import redact_text, redact_url

from ._stacks import open_pool
from ._wsserver import WSServer

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("stack")]

SECRETS = ("hunter2", "sk-123", "Bearer-xyz", "cookie-abc")


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} leaked into {text!r}"


def secret_url(ws_server: WSServer) -> str:
    return ws_server.url.replace("ws://", "ws://alice:hunter2@") + "?api_key=sk-123&room=7"


async def test_repr_stats_and_uri_hide_secrets(ws_server: WSServer) -> None:
    async with open_pool(
        secret_url(ws_server),
        headers={"X-Api-Key": "Bearer-xyz"},
        cookies={"sid": "cookie-abc"},
    ) as pool:
        async with pool.connection() as ws:
            await ws.send_text("x")
            assert await ws.receive_text() == "x"
        for text in (repr(pool), str(pool), str(pool.stats), str(pool.uri)):
            assert_no_secret(text)
        assert pool.uri is not None
        assert "alice" in pool.uri
        assert "api_key=" in pool.uri
    # the secrets did reach the server, where they belong
    headers = dict(ws_server.last_request_headers)
    assert headers["x-api-key"] == "Bearer-xyz"
    assert headers["authorization"].startswith("Basic ")  # from the URI userinfo


async def test_httpx_request_log_hides_the_uris_secrets(
    ws_server: WSServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with open_pool(secret_url(ws_server)) as pool, pool.connection():
        pass
    messages = [record.getMessage() for record in caplog.records]
    assert any("HTTP Request: GET" in message for message in messages)
    for message in messages:
        assert_no_secret(message)


async def test_pool_timeout_message_hides_secrets(ws_server: WSServer) -> None:
    async with open_pool(
        secret_url(ws_server), max_connections=1, min_connections=1, acquire_timeout=0.01
    ) as pool:
        await pool.wait_ready(timeout=5)
        async with pool.connection():
            with pytest.raises(PoolTimeout) as info:
                await pool.acquire()
    assert_no_secret(str(info.value))
    assert "api_key=***" in str(info.value)


async def test_connector_error_is_logged_redacted(caplog: pytest.LogCaptureFixture) -> None:
    release = anyio.Event()

    @asynccontextmanager
    async def failing() -> AsyncIterator[object]:
        await release.wait()
        if release.is_set():
            raise ConnectionError(
                "cannot reach wss://bob:hunter2@example.invalid/ws?api_key=sk-123"
            )
        yield object()  # pragma: no cover

    caplog.set_level(logging.WARNING, logger="anyio_wspool")
    async with open_pool(connect=failing, acquire_timeout=0.01, connect_attempts=1) as pool:
        # The borrower gives up first, so nobody is there to receive the error:
        # the pool logs it instead.
        with pytest.raises(PoolTimeout):
            await pool.acquire()
        release.set()
        with anyio.fail_after(5):
            while pool.stats.connect_failures == 0:
                await anyio.wait_all_tasks_blocked()
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "ConnectionError" in logged
    assert "api_key=***" in logged
    assert_no_secret(logged)
    for record in caplog.records:
        assert record.exc_info is None  # a handler would print the raw text


def test_redact_url_masks_password_and_query_values_only() -> None:
    assert (
        redact_url("wss://user:pw@host:8443/path?token=abc&x=1#frag")
        == "wss://user:***@host:8443/path?token=***&x=***#frag"
    )
    assert redact_url("ws://host/path") == "ws://host/path"
    assert redact_url("ws://user@host/") == "ws://user@host/"


def test_redact_text_finds_urls_inside_text() -> None:
    text = "failed: 'https://a:b@h/p?k=v' and then wss://h2/?api_key=sk-1 done"
    assert redact_text(text) == (
        "failed: 'https://a:***@h/p?k=***' and then wss://h2/?api_key=*** done"
    )
