"""Network faults between the pool and a real server, injected by ``tests/_proxy.py``.

First each of the proxy's modes as the pool meets it (so that the proxy is
known to produce the fault it names), then the server restarted on the same
port while connections are idle, lent and being opened, and every connection
dropped while twenty borrowers are busy: each borrower gets an answer or an
error, never a hang, and the pool's capacity is whole afterwards.
"""

from __future__ import annotations

import anyio
import httpx
import pytest
from httpx_ws import AsyncWebSocketSession, HTTPXWSException

from anyio_wspool import PoolError, open_pool

from ._proxy import FaultProxy, serve_proxy
from ._util import until
from ._wsserver import WSServer

pytestmark = pytest.mark.anyio

#: what a borrower may see when the network fails under it
NETWORK_ERRORS = (HTTPXWSException, httpx.HTTPError, OSError, TimeoutError, PoolError)


async def echo(ws: AsyncWebSocketSession, text: str = "x") -> None:
    await ws.send_text(text)
    assert await ws.receive_text() == text


@pytest.fixture
async def proxy(ws_server: WSServer) -> FaultProxy:  # type: ignore[misc]
    async with serve_proxy("127.0.0.1", ws_server.port) as proxy:
        yield proxy


# -- the modes, as the pool meets them -------------------------------------------------


async def test_pass_forwards_both_ways(ws_server: WSServer, proxy: FaultProxy) -> None:
    async with open_pool(proxy.url) as pool:
        async with pool.connection() as ws:
            await echo(ws, "hello")
    assert proxy.accepted == 1
    assert proxy.bytes_up > 0
    assert proxy.bytes_down > 0
    await proxy.wait_until(lambda: proxy.open == 0)
    assert ws_server.open_connections == 0


async def test_latency_delays_each_chunk_in_order(proxy: FaultProxy) -> None:
    async with open_pool(proxy.url) as pool:
        async with pool.connection() as ws:
            await echo(ws)
            proxy.set_mode("latency", delay=0.1)
            started = anyio.current_time()
            await ws.send_text("a")
            await ws.send_text("b")
            with anyio.fail_after(5):
                assert [await ws.receive_text(), await ws.receive_text()] == ["a", "b"]
            assert anyio.current_time() - started >= 0.2  # up and down, 0.1 s each


async def test_drop_all_is_found_on_an_idle_connection(
    ws_server: WSServer, proxy: FaultProxy
) -> None:
    async with open_pool(proxy.url) as pool:
        async with pool.connection() as ws:
            await echo(ws)
        proxy.drop_all()
        # (the pool knows once its reader has seen the end of the socket)
        await until(lambda: pool.stats.closed == 1)
        with anyio.fail_after(5):
            async with pool.connection() as ws:
                await echo(ws)
        assert ws_server.handshakes == 2  # the dropped one was not lent again


async def test_reset_reaches_a_borrower_as_an_error_not_a_hang(proxy: FaultProxy) -> None:
    async with open_pool(proxy.url) as pool:
        with pytest.raises(NETWORK_ERRORS):
            async with pool.connection() as ws:
                await echo(ws)
                proxy.set_mode("reset")
                with anyio.fail_after(5):
                    await ws.send_text("x")
                    await ws.receive_text()
        assert pool.stats.in_use == 0


async def test_blackhole_makes_a_handshake_time_out(ws_server: WSServer, proxy: FaultProxy) -> None:
    proxy.set_mode("blackhole")
    async with open_pool(proxy.url, connect_timeout=0.2, connect_attempts=2) as pool:
        with anyio.fail_after(5), pytest.raises(httpx.ConnectTimeout):
            await pool.acquire()
    assert proxy.accepted == 2
    assert ws_server.tcp_accepted == 0


async def test_stall_holds_data_until_it_ends(proxy: FaultProxy) -> None:
    async with open_pool(proxy.url) as pool:
        async with pool.connection() as ws:
            await echo(ws)
            proxy.set_mode("stall")
            await ws.send_text("held")
            with anyio.move_on_after(0.2) as silence:
                await ws.receive_text()
            assert silence.cancelled_caught
            proxy.set_mode("pass")
            with anyio.fail_after(5):
                assert await ws.receive_text() == "held"


async def test_stop_reading_fills_the_senders_buffers(proxy: FaultProxy) -> None:
    proxy.set_mode("stop_reading", direction="up")
    chunk = b"x" * 65536
    sent = 0
    async with await anyio.connect_tcp("127.0.0.1", proxy.port) as stream:
        with anyio.move_on_after(0.5) as blocked:
            for _ in range(2000):  # 128 MiB: far more than any socket buffer holds
                await stream.send(chunk)
                sent += 1
        assert blocked.cancelled_caught, sent
        assert proxy.bytes_up == 0


async def test_cut_mid_message_is_an_error_not_a_hang(proxy: FaultProxy) -> None:
    async with open_pool(proxy.url) as pool:
        with pytest.raises(NETWORK_ERRORS):
            async with pool.connection() as ws:
                await echo(ws)
                proxy.set_mode("cut_mid_message", direction="down", cut_after=100)
                with anyio.fail_after(5):
                    await ws.send_text("y" * 50_000)
                    await ws.receive_text()
        assert pool.stats.in_use == 0


async def test_refuse_closes_new_connections_at_once(
    ws_server: WSServer, proxy: FaultProxy
) -> None:
    proxy.refuse = True
    async with open_pool(proxy.url, connect_attempts=1) as pool:
        with anyio.fail_after(5), pytest.raises(NETWORK_ERRORS):
            await pool.acquire()
    assert proxy.accepted == 1
    assert ws_server.tcp_accepted == 0


# -- the server restarted on the same port ----------------------------------------------


async def test_restart_on_the_same_port_with_idle_lent_and_connecting_connections(
    ws_server: WSServer, proxy: FaultProxy
) -> None:
    async with open_pool(
        proxy.url,
        max_connections=3,
        connect_timeout=1.0,
        connect_attempts=20,  # about 2 s of attempts: the restart comes well before
        retry_backoff=0.1,
        retry_backoff_max=0.1,
    ) as pool:
        # one idle connection, one lent
        async with pool.connection() as idle_one, pool.connection() as ws:
            await echo(idle_one)
        lent = await pool.acquire()
        await echo(lent)
        assert pool.stats.idle == 1
        # the server goes away: listener closed, every connection reset
        await proxy.stop_listening()
        proxy.drop_all(reset=True)
        await proxy.wait_until(lambda: proxy.open == 0)
        port = proxy.port

        # a borrower now needs a new connection: it is being opened while the
        # server is down, and gets it once the server is back on the same port
        async def borrow(got: list[str]) -> None:
            async with pool.new_connection() as ws:
                await echo(ws, "after restart")
                got.append("ok")

        got: list[str] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(borrow, got)
            await anyio.wait_all_tasks_blocked()
            with pytest.raises(NETWORK_ERRORS):  # the lent one is dead
                await echo(lent)
            await pool.release(lent)
            await proxy.start_listening()
        assert got == ["ok"]
        assert proxy.port == port
        stats = pool.stats
        assert stats.in_use == 0
        # the idle connection that died was never lent again
        async with pool.connection() as ws:
            await echo(ws)
        assert ws_server.handshakes >= 3
    await ws_server.wait_until(lambda: ws_server.open_connections == 0)


# -- drop-all under load ------------------------------------------------------------------


async def test_drop_all_while_twenty_borrowers_are_busy(
    ws_server: WSServer, proxy: FaultProxy
) -> None:
    outcomes: dict[str, int] = {"ok": 0, "error": 0}

    async with open_pool(
        proxy.url, max_connections=20, connect_timeout=2.0, retry_backoff=0.05
    ) as pool:

        async def round_of_twenty(drop: bool, rounds: int) -> None:
            """Twenty borrowers hold a connection each at once, then talk ``rounds`` times."""
            holding = 0
            all_in = anyio.Event()

            async def borrower(n: int) -> None:
                nonlocal holding
                for i in range(rounds):
                    try:
                        with anyio.fail_after(10):  # a hang fails the test
                            async with pool.connection() as ws:
                                if i == 0:
                                    holding += 1
                                    if holding == 20:
                                        if drop:
                                            proxy.drop_all(reset=True)
                                        all_in.set()
                                    await all_in.wait()
                                await echo(ws, f"{n}:{i}")
                        outcomes["ok"] += 1
                    except NETWORK_ERRORS:
                        outcomes["error"] += 1

            async with anyio.create_task_group() as tg:
                for n in range(20):
                    tg.start_soon(borrower, n)

        await round_of_twenty(drop=True, rounds=5)
        assert outcomes["ok"] + outcomes["error"] == 100
        assert outcomes["error"] >= 1
        assert outcomes["ok"] >= 80  # after the drop, every lease succeeds
        assert pool.stats.in_use == 0
        assert pool.stats.waiting == 0
        # capacity is whole: twenty connections held at once again
        outcomes.update(ok=0, error=0)
        await round_of_twenty(drop=False, rounds=1)
        assert outcomes == {"ok": 20, "error": 0}
    await ws_server.wait_until(lambda: ws_server.open_connections == 0)


# -- stale data on a slow network ---------------------------------------------------------


async def test_a_stale_message_slower_than_the_quiet_period_is_still_drained(
    ws_server: WSServer, proxy: FaultProxy
) -> None:
    # The server pushes "stale" 0.1 s after each echo, and the network takes
    # 0.3 s each way down: when the first lease ends, "stale" was sent but is
    # still on its way, and the quiet period (0.05 s) alone would end before it
    # arrives. The drain's ping comes back only after it.
    async with open_pool(
        proxy.url,
        max_connections=1,
        drain_on_release=True,
        drain_quiet_period=0.05,
        drain_timeout=5.0,
    ) as pool:
        async with pool.connection() as ws:
            await echo(ws, "first")
            proxy.set_mode("latency", direction="down", delay=0.3)
            ws_server.push_after_reply = "stale"
            ws_server.push_delay = 0.1
            await ws.send_text("second")
            with anyio.fail_after(5):
                assert await ws.receive_text() == "second"
        ws_server.push_after_reply = None
        async with pool.connection() as ws:
            await ws.send_text("mine")
            with anyio.fail_after(5):
                assert await ws.receive_text() == "mine"
        assert pool.stats.drained_messages >= 1
