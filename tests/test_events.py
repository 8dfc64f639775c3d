"""``on_event``: the event stream of a pool, in order, without secrets."""

from __future__ import annotations

import dataclasses
from typing import Any

import anyio
import pytest
from httpx_ws import WebSocketDisconnect

import anyio_wspool
from anyio_wspool import (
    AcquiredEvent,
    CircuitClosedEvent,
    CircuitOpenedEvent,
    ConnectedEvent,
    ConnectFailedEvent,
    PoolEvent,
    ReleasedEvent,
    RetiredEvent,
    open_pool,
)

from ._util import until
from ._wsserver import WSServer

pytestmark = pytest.mark.anyio


def _summary(event: PoolEvent) -> tuple[Any, ...]:
    """An event without its timings (which vary), for comparison with a script."""
    if isinstance(event, ConnectedEvent):
        return ("connected", event.attempt)
    if isinstance(event, ConnectFailedEvent):
        return ("connect_failed", event.error_type, event.attempt, event.retrying)
    if isinstance(event, AcquiredEvent):
        return ("acquired", event.reused)
    if isinstance(event, ReleasedEvent):
        return ("released", event.discarded)
    if isinstance(event, RetiredEvent):
        return ("retired", event.reason, event.close_code)
    if isinstance(event, CircuitOpenedEvent):
        return ("circuit_opened", event.failures, event.error_type)
    if isinstance(event, CircuitClosedEvent):
        return ("circuit_closed",)
    raise AssertionError(f"unexpected event {event!r}")


async def test_event_stream_of_a_scripted_session(ws_server: WSServer) -> None:
    events: list[PoolEvent] = []
    with anyio.fail_after(10):
        async with open_pool(
            ws_server.url, on_event=events.append, connect_attempts=2, retry_backoff=0
        ) as pool:
            async with pool.connection() as ws:  # a new connection
                await ws.send_text("a")
                await ws.receive_text()
            with pytest.raises(RuntimeError):
                async with pool.connection():  # reused, and closed for the error
                    raise RuntimeError("boom")
            ws_server.reject_status = 503
            with pytest.raises(Exception, match="503"):
                await pool.acquire()  # two failed attempts
            ws_server.reject_status = None
            ws = await pool.acquire()
            await pool.release(ws)
            await ws_server.close_all(4001)  # the server closes the idle one
            await until(lambda: pool.stats.closed == 2)
            async with pool.connection():
                pass
        # (Leaving the pool closes the last one, and delivers every event.)
    assert [_summary(event) for event in events] == [
        ("connected", 1),
        ("acquired", False),
        ("released", False),
        ("acquired", True),
        ("released", True),
        ("retired", "error_in_block", None),
        ("connect_failed", "httpx_ws.WebSocketUpgradeError", 1, True),
        ("connect_failed", "httpx_ws.WebSocketUpgradeError", 2, False),
        ("connected", 1),
        ("acquired", False),
        ("released", False),
        ("retired", "server_closed", 4001),
        ("connected", 1),
        ("acquired", False),
        ("released", False),
        ("retired", "pool_closed", None),
    ]
    for event in events:
        assert event.target == ws_server.url
        if isinstance(event, AcquiredEvent):
            assert event.wait_seconds >= 0.0
        if isinstance(event, ConnectedEvent):
            assert event.handshake_seconds >= 0.0
        if isinstance(event, ReleasedEvent):
            assert event.lease_seconds >= 0.0
        if isinstance(event, RetiredEvent):
            assert event.age_seconds >= 0.0


async def test_circuit_events(ws_server: WSServer) -> None:
    events: list[PoolEvent] = []
    ws_server.close_new_after = 0.0
    with anyio.fail_after(10):
        async with open_pool(
            ws_server.url,
            on_event=events.append,
            failure_threshold=1,
            circuit_reset=0.1,
            acquire_timeout=30,
        ) as pool:
            with pytest.raises(WebSocketDisconnect):
                async with pool.connection() as ws:
                    await ws.receive_text()
            ws_server.close_new_after = None
            await anyio.sleep(0.15)  # circuit_reset elapses (time-based by nature)
            async with pool.connection():
                pass
    kinds = [_summary(event)[0] for event in events]
    assert kinds == [
        "connected",
        "acquired",
        "released",
        "retired",
        "circuit_opened",
        "connected",
        "circuit_closed",
        "acquired",
        "released",
        "retired",
    ]
    opened = next(event for event in events if isinstance(event, CircuitOpenedEvent))
    assert opened.failures == 1
    assert opened.error_type == "httpx_ws.WebSocketDisconnect"
    assert opened.reset_seconds == 0.1
    closed = next(event for event in events if isinstance(event, CircuitClosedEvent))
    assert closed.open_seconds >= 0.1


async def test_events_carry_no_secrets(ws_server: WSServer) -> None:
    events: list[PoolEvent] = []
    url = f"ws://user:hunter2@127.0.0.1:{ws_server.port}/?token=SEKRET"
    async with open_pool(
        url, on_event=events.append, headers={"Authorization": "Bearer SEKRET"}
    ) as pool:
        async with pool.connection() as ws:
            await ws.send_text("message content")
            await ws.receive_text()
    assert events
    for event in events:
        text = repr(event) + repr(dataclasses.asdict(event))
        assert "hunter2" not in text
        assert "SEKRET" not in text
        assert "message content" not in text


async def test_async_callback_is_awaited_in_order_and_errors_are_contained(
    ws_server: WSServer, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[str] = []

    async def on_event(event: PoolEvent) -> None:
        await anyio.lowlevel.checkpoint()
        seen.append(type(event).__name__)
        if isinstance(event, ConnectedEvent):
            raise ValueError("the exporter broke")

    async with open_pool(ws_server.url, on_event=on_event) as pool:
        async with pool.connection() as ws:
            await ws.send_text("x")
            await ws.receive_text()
    assert seen == ["ConnectedEvent", "AcquiredEvent", "ReleasedEvent", "RetiredEvent"]
    assert "the exporter broke" in caplog.text


async def test_hanging_callback_does_not_block_lending_nor_closing(ws_server: WSServer) -> None:
    # The callback never returns: lending goes on (events queue up), and the
    # pool still closes within close_timeout.
    release = anyio.Event()

    async def on_event(event: PoolEvent) -> None:
        await release.wait()

    with anyio.fail_after(10):
        async with open_pool(ws_server.url, on_event=on_event, close_timeout=0.2) as pool:
            for _ in range(20):
                async with pool.connection() as ws:
                    await ws.send_text("x")
                    await ws.receive_text()
            assert pool.stats.acquired == 20


def test_event_types_are_public_frozen_and_share_a_base() -> None:
    names = [name for name in anyio_wspool.__all__ if name.endswith("Event")]
    assert len(names) == 8
    for name in names:
        cls = getattr(anyio_wspool, name)
        assert issubclass(cls, PoolEvent)
        assert cls.__module__ == "anyio_wspool"
    event = AcquiredEvent("ws://x/", 0.5, True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.wait_seconds = 1.0  # type: ignore[misc]
