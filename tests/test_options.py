"""Every option is validated when the pool is created, before any connection."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from anyio_wspool import open_pool

URL = "ws://127.0.0.1:9/"  # never connected to: validation happens first


@pytest.mark.parametrize(
    ("options", "error", "names"),
    [
        ({"max_connections": 0}, ValueError, "max_connections"),
        ({"max_connections": -3}, ValueError, "max_connections"),
        ({"max_connections": 2.5}, TypeError, "max_connections"),
        ({"max_connections": True}, TypeError, "max_connections"),
        ({"max_connections": "10"}, TypeError, "max_connections"),
        ({"acquire_timeout": -1}, ValueError, "acquire_timeout"),
        ({"acquire_timeout": "soon"}, TypeError, "acquire_timeout"),
        ({"acquire_timeout": float("nan")}, ValueError, "acquire_timeout"),
        ({"connect_timeout": 0}, ValueError, "connect_timeout"),
        ({"connect_timeout": None}, TypeError, "connect_timeout"),
        ({"close_timeout": -0.5}, ValueError, "close_timeout"),
        ({"max_message_size_bytes": 0}, ValueError, "max_message_size_bytes"),
        ({"queue_size": 1.5}, TypeError, "queue_size"),
        ({"keepalive_ping_interval_seconds": 0}, ValueError, "keepalive_ping_interval_seconds"),
        ({"keepalive_ping_timeout_seconds": "x"}, TypeError, "keepalive_ping_timeout_seconds"),
        ({"subprotocols": "chat"}, TypeError, "subprotocols"),
        ({"subprotocols": ["chat", 3]}, TypeError, "subprotocols"),
        ({"session_class": int}, TypeError, "session_class"),
        ({"follow_redirects": "yes"}, TypeError, "follow_redirects"),
        ({"no_such_option": 1}, TypeError, "no_such_option"),
        ({"min_connections": -1}, ValueError, "min_connections"),
        ({"min_connections": 5, "max_connections": 2}, ValueError, "min_connections=5"),
        ({"connect_attempts": 0}, ValueError, "connect_attempts"),
        ({"retry_backoff": -1}, ValueError, "retry_backoff"),
        ({"retry_backoff_max": 0}, ValueError, "retry_backoff_max"),
        ({"idle_timeout": 0}, ValueError, "idle_timeout"),
        ({"max_lifetime": "1h"}, TypeError, "max_lifetime"),
        ({"refresh_on_acquire": 1}, TypeError, "refresh_on_acquire"),
        ({"cleanup_interval": 0}, ValueError, "cleanup_interval"),
        ({"check_on_acquire": "yes"}, TypeError, "check_on_acquire"),
        ({"on_connect": "login"}, TypeError, "on_connect"),
        ({"drain_on_release": 1}, TypeError, "drain_on_release"),
        ({"drain_timeout": 0}, ValueError, "drain_timeout"),
        ({"drain_quiet_period": -1}, ValueError, "drain_quiet_period"),
        ({"drain_condition": 3}, TypeError, "drain_condition"),
        ({"on_drained": "log"}, TypeError, "on_drained"),
        ({"on_release": []}, TypeError, "on_release"),
    ],
)
def test_bad_option_is_refused_naming_it(
    options: dict[str, Any], error: type[Exception], names: str
) -> None:
    with pytest.raises(error, match=names):
        open_pool(URL, **options)


@pytest.mark.parametrize(
    ("options", "error", "names"),
    [
        ({"failure_threshold": 0}, ValueError, "failure_threshold"),
        ({"failure_threshold": 2.5}, TypeError, "failure_threshold"),
        ({"failure_window": 0}, ValueError, "failure_window"),
        ({"circuit_reset": "10"}, TypeError, "circuit_reset"),
        ({"on_event": "print"}, TypeError, "on_event"),
    ],
)
def test_bad_production_option_is_refused_naming_it(
    options: dict[str, Any], error: type[Exception], names: str
) -> None:
    with pytest.raises(error, match=names):
        open_pool(URL, **options)


def test_option_not_built_yet_is_refused_not_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    from anyio_wspool import _options

    monkeypatch.setattr(_options, "NOT_YET_BUILT", frozenset({"max_connections"}))
    with pytest.raises(NotImplementedError, match="max_connections"):
        open_pool(URL, max_connections=3)


@pytest.mark.parametrize(
    ("uri", "error", "text"),
    [
        ("ftp://example.com/", ValueError, "scheme 'ftp'"),
        ("example.com/ws", ValueError, "scheme"),
        ("ws:///nohost", ValueError, "no host"),
        ("ws://127.0.0.1:99999/", ValueError, "port 99999"),
        ("ws://127.0.0.1:0/", ValueError, "port 0"),
        (42, TypeError, "uri must be"),
    ],
)
def test_bad_uri_is_refused(uri: Any, error: type[Exception], text: str) -> None:
    with pytest.raises(error, match=text):
        open_pool(uri)


def test_bad_uri_error_hides_its_secrets() -> None:
    with pytest.raises(ValueError, match="scheme") as info:
        open_pool("ftp://user:hunter2@example.com/?api_key=sk-123")
    assert "hunter2" not in str(info.value)
    assert "sk-123" not in str(info.value)


def test_unknown_option_value_is_not_echoed() -> None:
    with pytest.raises(TypeError) as info:
        open_pool(URL, api_key="sk-secret-value")  # type: ignore[call-overload]
    assert "sk-secret-value" not in str(info.value)


def test_uri_and_connect_are_exclusive() -> None:
    with pytest.raises(TypeError, match="either a uri or connect="):
        open_pool(URL, connect=lambda: None)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="needs a uri"):
        open_pool()  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="close= goes with connect="):
        open_pool(URL, close=lambda _: None)  # type: ignore[call-overload]


def test_connect_must_be_callable() -> None:
    with pytest.raises(TypeError, match="connect must be callable"):
        open_pool(connect=42)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="close must be callable"):
        open_pool(connect=lambda: None, close=42)  # type: ignore[call-overload]


def test_websocket_only_options_do_not_apply_to_a_generic_pool() -> None:
    def connect() -> Any:
        raise AssertionError("never called: validation comes first")

    with pytest.raises(TypeError, match="drain_on_release"):
        open_pool(connect=connect, drain_on_release=True)
    with pytest.raises(TypeError, match="check_on_acquire"):
        open_pool(connect=connect, check_on_acquire=True)


def test_httpx_ws_options_do_not_apply_to_a_generic_pool() -> None:
    with pytest.raises(TypeError, match="'headers' is an httpx-ws option"):
        open_pool(connect=lambda: None, headers={"a": "b"})  # type: ignore[call-overload]


def test_client_must_be_an_httpx_async_client() -> None:
    with httpx.Client() as sync_client, pytest.raises(TypeError, match=r"httpx\.AsyncClient"):
        open_pool(URL, client=sync_client)  # type: ignore[call-overload]


@pytest.mark.parametrize(
    "options",
    [
        {"lifetime_margin": 1.0},
        {"lifetime_margin": 9.0, "max_lifetime": 10.0},
    ],
)
def test_a_lifetime_margin_that_would_lend_nothing_is_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="lifetime_margin"):
        open_pool(URL, **options)
