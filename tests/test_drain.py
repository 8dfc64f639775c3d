"""The release path: stale server data is drained, never lent (guarantee 7)."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from anyio import wait_all_tasks_blocked
from httpx_ws import AsyncWebSocketSession
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto.events import Event, TextMessage

from ._stacks import open_pool
from ._util import until
from ._wsserver import WSServer

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("stack")]


def text_of(event: Event) -> str:
    assert isinstance(event, TextMessage)
    return event.data


async def test_without_draining_the_next_borrower_can_see_stale_data(
    ws_server: WSServer,
) -> None:
    # The problem drain_on_release exists for: a message the server sends
    # shortly after its reply arrives during the next lease.
    ws_server.push_after_reply = "stale"
    ws_server.push_delay = 0.05
    async with open_pool(ws_server.url) as pool:
        async with pool.connection() as ws:
            await ws.send_text("first")
            assert await ws.receive_text() == "first"
        async with pool.connection() as ws:
            await ws.send_text("second")
            assert await ws.receive_text() == "stale"


async def test_drain_on_release_keeps_every_stale_message_from_later_borrowers(
    ws_server: WSServer,
) -> None:
    ws_server.push_after_reply = "stale"
    ws_server.push_delay = 0.02
    drained: list[str] = []
    async with open_pool(
        ws_server.url,
        max_connections=2,
        drain_on_release=True,
        drain_quiet_period=0.1,
        drain_timeout=5,
        on_drained=lambda event: drained.append(text_of(event)),
    ) as pool:

        async def borrower(n: int) -> None:
            for i in range(4):
                async with pool.connection() as ws:
                    await ws.send_text(f"{n}.{i}")
                    assert await ws.receive_text() == f"{n}.{i}"

        async with anyio.create_task_group() as tg:
            for n in range(3):
                tg.start_soon(borrower, n)
        await until(lambda: pool.stats.draining == 0 and len(drained) == 12)
        assert pool.stats.drained_messages == 12
    assert drained == ["stale"] * 12
    assert ws_server.max_open <= 2


async def test_a_server_that_never_stops_sending_gets_the_connection_closed(
    ws_server: WSServer,
) -> None:
    async with open_pool(
        ws_server.url, drain_on_release=True, drain_quiet_period=0.1, drain_timeout=0.3
    ) as pool:
        async with pool.connection() as first:
            pass
        started = anyio.current_time()
        with anyio.fail_after(5):
            while pool.stats.draining:
                await ws_server.push("more")  # faster than the quiet period, for ever
                await anyio.sleep(0.02)
        assert anyio.current_time() - started >= 0.25
        assert pool.stats.idle == 0
        assert pool.stats.discarded == 1
        async with pool.connection() as second:
            assert second is not first
            await second.send_text("x")
            assert await second.receive_text() == "x"
    assert ws_server.handshakes == 2


async def test_a_waiter_gets_the_connection_after_its_drain(ws_server: WSServer) -> None:
    async with open_pool(
        ws_server.url, max_connections=1, drain_on_release=True, drain_quiet_period=0.1
    ) as pool:
        held = await pool.acquire()
        got: list[AsyncWebSocketSession] = []

        async def waiter() -> None:
            async with pool.connection() as ws:
                got.append(ws)

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await wait_all_tasks_blocked()
            released = anyio.current_time()
            await pool.release(held)  # returns at once: the drain runs in the pool
            assert anyio.current_time() - released < 0.05
            stats = pool.stats
            assert (stats.draining, stats.waiting) == (1, 1)
            assert stats.connecting + stats.idle + stats.in_use + stats.draining <= 1
        assert anyio.current_time() - released >= 0.09  # the quiet period (timer resolution)
        assert got == [held]
    assert ws_server.handshakes == 1


@pytest.mark.parametrize("ignore_heartbeats", [True, False])
async def test_drain_condition_decides_what_counts_as_server_data(
    ws_server: WSServer, ignore_heartbeats: bool
) -> None:
    def counts(event: Event) -> bool:
        return not (ignore_heartbeats and text_of(event) == "heartbeat")

    async with open_pool(
        ws_server.url,
        drain_on_release=True,
        drain_quiet_period=0.1,
        drain_timeout=0.5,
        drain_condition=counts,
    ) as pool:
        async with pool.connection() as first:
            pass
        for _ in range(40):  # a heartbeat every 20 ms, until the drain ends
            if not pool.stats.draining:
                break
            await ws_server.push("heartbeat")
            await anyio.sleep(0.02)
        assert pool.stats.draining == 0
        async with pool.connection() as again:
            reused = again is first
    assert reused is ignore_heartbeats


async def test_on_release_runs_once_per_release(ws_server: WSServer) -> None:
    calls: list[int] = []

    async def unsubscribe(ws: AsyncWebSocketSession) -> None:
        await ws.send_text("unsubscribe")
        assert await ws.receive_text() == "unsubscribe"
        calls.append(id(ws))

    async with open_pool(ws_server.url, on_release=unsubscribe, max_connections=1) as pool:
        for i in range(3):
            async with pool.connection() as ws:
                await ws.send_text(str(i))
                assert await ws.receive_text() == str(i)
        await until(lambda: pool.stats.draining == 0)
        assert pool.stats.idle == 1
    assert calls == [id(ws)] * 3
    assert ws_server.handshakes == 1


async def test_a_failing_on_release_discards_the_connection(
    ws_server: WSServer, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(ws: AsyncWebSocketSession) -> None:
        raise RuntimeError("unsubscribe failed")

    async with open_pool(ws_server.url, on_release=broken) as pool:
        async with pool.connection() as first:
            pass
        await until(lambda: pool.stats.draining == 0)
        assert pool.stats.discarded == 1
        async with pool.connection() as second:
            assert second is not first
    assert any("on_release failed" in record.getMessage() for record in caplog.records)


async def test_a_hanging_on_release_is_bounded_by_drain_timeout(ws_server: WSServer) -> None:
    async def hangs(ws: AsyncWebSocketSession) -> None:
        await anyio.sleep_forever()

    async with open_pool(ws_server.url, on_release=hangs, drain_timeout=0.1) as pool:
        async with pool.connection():
            pass
        await ws_server.wait_until(lambda: ws_server.open_connections == 0)
        assert pool.stats.discarded == 1


async def test_a_failing_on_drained_is_logged_and_the_pool_goes_on(
    ws_server: WSServer, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(event: Event) -> None:
        raise ValueError("the metrics backend is down")

    async with open_pool(ws_server.url, on_drained=broken) as pool:
        async with pool.connection() as ws:
            pass
        await ws_server.push("unsolicited")
        await until(lambda: any("on_drained raised" in r.getMessage() for r in caplog.records))
        async with pool.connection() as again:
            assert again is ws
            await again.send_text("x")
            assert await again.receive_text() == "x"


async def test_async_on_drained_gets_idle_messages_in_order(ws_server: WSServer) -> None:
    seen: list[str] = []

    async def record(event: Event) -> None:
        await anyio.lowlevel.checkpoint()
        seen.append(text_of(event))

    async with open_pool(ws_server.url, on_drained=record) as pool:
        async with pool.connection():
            pass
        for i in range(5):
            await ws_server.push(f"m{i}")
        await until(lambda: len(seen) == 5)
    assert seen == [f"m{i}" for i in range(5)]


async def test_messages_left_unread_are_given_to_on_drained(ws_server: WSServer) -> None:
    seen: list[str] = []
    async with open_pool(
        ws_server.url, drain_on_release=True, drain_quiet_period=0.05, on_drained=seen.append
    ) as pool:
        async with pool.connection() as ws:
            await ws_server.push("never read")
            pong = await ws.ping()
            with anyio.fail_after(5):
                await pong.wait()  # so "never read" is in the session's buffer
    assert [text_of(event) for event in seen] == ["never read"]  # type: ignore[arg-type]


async def test_release_while_closing_or_invalidated_closes_instead_of_draining(
    ws_server: WSServer,
) -> None:
    async with open_pool(ws_server.url, drain_on_release=True, drain_quiet_period=5) as pool:
        held = await pool.acquire()
        pool.invalidate()
        await pool.release(held)
        assert pool.stats.draining == 0
        await ws_server.wait_until(lambda: ws_server.open_connections == 0)
        held = await pool.acquire()
        with anyio.fail_after(5):  # not the 5 s quiet period of a drain
            await pool.aclose()
        await pool.release(held)
    await ws_server.wait_until(lambda: ws_server.open_connections == 0)


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    push_delay=st.floats(min_value=0.0, max_value=0.03),
    leases=st.lists(st.floats(min_value=0.0, max_value=0.02), min_size=1, max_size=6),
)
async def test_no_borrower_ever_reads_a_message_sent_before_its_lease(
    ws_server: WSServer, push_delay: float, leases: list[float]
) -> None:
    ws_server.push_after_reply = "stale"
    ws_server.push_delay = push_delay
    drained: list[Any] = []
    async with open_pool(
        ws_server.url,
        max_connections=2,
        drain_on_release=True,
        drain_quiet_period=0.06,  # longer than any push delay
        on_drained=drained.append,
    ) as pool:

        async def borrower(n: int) -> None:
            for i, lease in enumerate(leases):
                async with pool.connection() as ws:
                    await ws.send_text(f"{n}/{i}")
                    assert await ws.receive_text() == f"{n}/{i}"
                    await anyio.sleep(lease)

        async with anyio.create_task_group() as tg:
            for n in range(2):
                tg.start_soon(borrower, n)
        replies = 2 * len(leases)
        await until(lambda: pool.stats.draining == 0 and len(drained) == replies)
    assert pool.stats.drained_messages == replies
