"""The circuit breaker (``failure_threshold``) and the close-code policy, against real servers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest
from httpx_ws import WebSocketDisconnect, WebSocketUpgradeError

from anyio_wspool import PoolTimeout, PoolUnavailable, WebSocketPool, open_pool

from ._util import until
from ._wsserver import WSServer

pytestmark = pytest.mark.anyio


async def _hung_up_on(pool: WebSocketPool[Any]) -> None:
    """Borrow a connection and wait for the server's message: it closes instead."""
    with pytest.raises(WebSocketDisconnect):
        async with pool.connection() as ws:
            await ws.receive_text()


async def test_server_that_accepts_then_closes_opens_the_circuit(ws_server: WSServer) -> None:
    # Every connection is accepted, then closed by the server at once: each
    # one is a failure, and after failure_threshold of them a borrower gets
    # PoolUnavailable at once (not a PoolTimeout after acquire_timeout), with
    # the server's close as its cause, and no handshake is attempted.
    ws_server.close_new_after = 0.0
    ws_server.close_new_code = 1011
    with anyio.fail_after(10):
        async with open_pool(
            ws_server.url, failure_threshold=3, circuit_reset=60, acquire_timeout=30
        ) as pool:
            for _ in range(2):
                await _hung_up_on(pool)
            assert pool.stats.circuit == "closed"
            await _hung_up_on(pool)
            assert pool.stats.circuit == "open"
            assert pool.stats.circuit_opened == 1
            with pytest.raises(PoolUnavailable, match="circuit breaker") as info:
                async with pool.connection():
                    pass
            assert isinstance(info.value.__cause__, WebSocketDisconnect)
            assert info.value.__cause__.code == 1011
            with pytest.raises(PoolUnavailable):
                await pool.acquire_new()
            assert ws_server.handshakes == 3
            assert pool.stats.unavailable == 2


async def test_refused_connections_open_the_circuit_with_the_connect_error() -> None:
    # Nothing listens: each borrower's connection fails every attempt; the
    # threshold-th failure opens the circuit for the next borrowers.
    with anyio.fail_after(10):
        async with open_pool(
            f"ws://127.0.0.1:{_free_port()}/",
            failure_threshold=2,
            connect_attempts=1,
            acquire_timeout=30,
        ) as pool:
            for _ in range(2):
                with pytest.raises(httpx.ConnectError):
                    await pool.acquire()
            with pytest.raises(PoolUnavailable) as info:
                await pool.acquire()
            assert isinstance(info.value.__cause__, httpx.ConnectError)
            assert pool.stats.connect_failures == 2


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_circuit_is_off_by_default(ws_server: WSServer) -> None:
    # Without failure_threshold the same server never gets PoolUnavailable:
    # every borrower sees the connection's own error.
    ws_server.close_new_after = 0.0
    with anyio.fail_after(10):
        async with open_pool(ws_server.url) as pool:
            for _ in range(6):
                await _hung_up_on(pool)
            assert pool.stats.circuit == "closed"
            assert ws_server.handshakes == 6


async def test_one_probe_after_circuit_reset_then_recovery(ws_server: WSServer) -> None:
    ws_server.close_new_after = 0.0
    with anyio.fail_after(10):
        async with open_pool(
            ws_server.url, failure_threshold=2, circuit_reset=0.2, acquire_timeout=30
        ) as pool:
            for _ in range(2):
                await _hung_up_on(pool)
            assert pool.stats.circuit == "open"
            ws_server.close_new_after = None  # the server is back
            await anyio.sleep(0.25)  # circuit_reset elapses (time-based by nature)
            outcomes: list[str] = []

            async def borrow() -> None:
                try:
                    async with pool.connection() as ws:
                        await ws.send_text("x")
                        assert await ws.receive_text() == "x"
                    outcomes.append("served")
                except PoolUnavailable:
                    outcomes.append("unavailable")

            # Five borrowers at once: the first one's connection is the probe;
            # the other four would each need a new connection and fail at once.
            async with anyio.create_task_group() as tg:
                for _ in range(5):
                    tg.start_soon(borrow)
            assert sorted(outcomes) == ["served"] + ["unavailable"] * 4
            assert ws_server.handshakes == 3  # two failures, one probe
            assert pool.stats.circuit == "closed"
            async with anyio.create_task_group() as tg:
                for _ in range(5):
                    tg.start_soon(borrow)
            assert outcomes.count("served") == 6


async def test_failed_probe_opens_the_circuit_again(ws_server: WSServer) -> None:
    ws_server.close_new_after = 0.0
    with anyio.fail_after(10):
        async with open_pool(
            ws_server.url, failure_threshold=2, circuit_reset=0.2, acquire_timeout=30
        ) as pool:
            for _ in range(2):
                await _hung_up_on(pool)
            await anyio.sleep(0.25)  # circuit_reset elapses; the server still hangs up
            await _hung_up_on(pool)  # the probe: it opens, then dies young
            assert pool.stats.circuit == "open"
            assert pool.stats.circuit_opened == 2
            with pytest.raises(PoolUnavailable):
                await pool.acquire()
            assert ws_server.handshakes == 3


class _Switch:
    """A generic connector whose connections fail while ``failing`` is set."""

    def __init__(self) -> None:
        self.failing = False
        self.opened = 0

    @asynccontextmanager
    async def __call__(self) -> AsyncIterator[object]:
        await anyio.lowlevel.checkpoint()
        if self.failing:
            raise ConnectionRefusedError("refused")
        self.opened += 1
        yield object()


async def _open_circuit_with_one_idle(pool: WebSocketPool[Any], switch: _Switch) -> object:
    """Leave ``pool`` with one idle connection, its circuit open (failure_threshold=1)."""
    async with pool.connection() as first:
        pass
    switch.failing = True
    with pytest.raises(ConnectionRefusedError):
        await pool.acquire_new()
    assert pool.stats.circuit == "open"
    assert pool.stats.idle == 1
    return first


@pytest.mark.parametrize("full", [True, False], ids=["full", "room"])
async def test_new_connection_while_the_circuit_is_open_closes_no_idle_connection(
    full: bool,
) -> None:
    # Only a new connection would serve this borrower, and none may be opened:
    # it fails at once, and the idle connection stays open for others (it
    # used to be closed "to make room", for nothing).
    switch = _Switch()
    with anyio.fail_after(5):
        async with open_pool(
            connect=switch,
            max_connections=2,
            failure_threshold=1,
            connect_attempts=1,
            circuit_reset=60,
            acquire_timeout=10,
        ) as pool:
            first = await _open_circuit_with_one_idle(pool, switch)
            if full:
                pool.max_connections = 1
            with pytest.raises(PoolUnavailable):
                async with pool.new_connection():
                    pytest.fail("no new connection may be opened")
            assert pool.stats.idle == 1
            assert pool.stats.closed == 0
            async with pool.connection() as again:
                assert again is first


async def test_idle_connections_are_still_lent_while_the_circuit_is_open() -> None:
    switch = _Switch()
    async with open_pool(
        connect=switch, max_connections=3, failure_threshold=2, connect_attempts=1
    ) as pool:
        first = await pool.acquire()
        switch.failing = True
        for _ in range(2):
            with pytest.raises(ConnectionRefusedError):
                await pool.acquire()
        assert pool.stats.circuit == "open"
        await pool.release(first)
        async with pool.connection() as again:
            assert again is first  # the idle connection is lent
            # A second borrower would need a new connection: it fails at once.
            with pytest.raises(PoolUnavailable) as info:
                await pool.acquire()
            assert isinstance(info.value.__cause__, ConnectionRefusedError)
        assert switch.opened == 1


async def test_full_pool_borrowers_wait_for_a_return_while_open() -> None:
    # At a full pool a borrower needs no new connection: it waits for one to
    # come back, circuit or not.
    switch = _Switch()
    async with open_pool(
        connect=switch, max_connections=2, failure_threshold=1, connect_attempts=1
    ) as pool:
        held = await pool.acquire()
        switch.failing = True
        with pytest.raises(ConnectionRefusedError):
            await pool.acquire()
        assert pool.stats.circuit == "open"
        pool.max_connections = 1  # now full: `held` is lent
        got: list[object] = []

        async def borrow() -> None:
            got.append(await pool.acquire())

        async with anyio.create_task_group() as tg:
            tg.start_soon(borrow)
            await anyio.wait_all_tasks_blocked()
            assert pool.stats.waiting == 1
            await pool.release(held)
        assert got == [held]


async def test_connection_that_outlives_the_window_resets_the_count() -> None:
    switch = _Switch()
    async with open_pool(
        connect=switch,
        max_connections=2,
        failure_threshold=2,
        failure_window=0.1,
        connect_attempts=1,
    ) as pool:
        lived = await pool.acquire()
        switch.failing = True
        with pytest.raises(ConnectionRefusedError):
            await pool.acquire()  # failure 1
        await anyio.sleep(0.15)  # `lived` outlives failure_window (time-based by nature)
        with pytest.raises(ConnectionRefusedError):
            await pool.acquire()  # failure 1 again, not 2
        assert pool.stats.circuit == "closed"
        await pool.release(lived, discard=True)
        with pytest.raises(ConnectionRefusedError):
            await pool.acquire()  # failure 2
        assert pool.stats.circuit == "open"


async def test_circuit_stops_background_connections(ws_server: WSServer) -> None:
    # min_connections keeps reopening what the server closes: with the breaker,
    # it stops after failure_threshold (with the back-off between them).
    ws_server.close_new_after = 0.0
    with anyio.fail_after(10):
        async with open_pool(
            ws_server.url,
            min_connections=1,
            failure_threshold=3,
            circuit_reset=60,
            retry_backoff=0.01,
            retry_backoff_max=0.02,
        ) as pool:
            await ws_server.wait_until(lambda: pool.stats.circuit == "open")
            opened = ws_server.handshakes
            assert opened == 3
            with pytest.raises(PoolUnavailable):
                await pool.acquire()
            assert ws_server.handshakes == opened


async def test_min_connections_probe_after_circuit_reset(ws_server: WSServer) -> None:
    # With nobody borrowing, min_connections is what tries again once the
    # circuit's reset time is over (at the next sweep): one probe, and the
    # pool is whole again when the server is back.
    ws_server.close_new_after = 0.0
    with anyio.fail_after(10):
        async with open_pool(
            ws_server.url,
            min_connections=1,
            failure_threshold=2,
            circuit_reset=0.2,
            cleanup_interval=0.05,
            retry_backoff=0.01,
            retry_backoff_max=0.02,
        ) as pool:
            await ws_server.wait_until(lambda: pool.stats.circuit == "open")
            assert ws_server.handshakes == 2
            ws_server.close_new_after = None  # the server is back
            await pool.wait_ready(timeout=5)
            assert pool.stats.idle == 1
            assert pool.stats.circuit == "closed"
            assert ws_server.handshakes == 3  # one probe


# -- close codes ---------------------------------------------------------------------


async def _login(ws: Any) -> None:
    """An on_connect that waits for the server's greeting (it closes instead)."""
    await ws.receive_text()


@pytest.mark.parametrize("code", [1008, 4001, 4999])
async def test_close_with_a_fatal_code_during_connect_is_not_retried(
    ws_server: WSServer, code: int
) -> None:
    ws_server.close_new_after = 0.0
    ws_server.close_new_code = code
    with anyio.fail_after(10):
        async with open_pool(
            ws_server.url, on_connect=_login, connect_attempts=3, retry_backoff=0
        ) as pool:
            with pytest.raises(WebSocketDisconnect) as info:
                await pool.acquire()
            assert info.value.code == code
            assert ws_server.handshakes == 1


@pytest.mark.parametrize("code", [1001, 1012, 1013])
async def test_close_with_a_restart_code_during_connect_is_retried(
    ws_server: WSServer, code: int
) -> None:
    ws_server.close_new_after = 0.0
    ws_server.close_new_code = code
    with anyio.fail_after(10):
        async with open_pool(
            ws_server.url, on_connect=_login, connect_attempts=3, retry_backoff=0
        ) as pool:
            with pytest.raises(WebSocketDisconnect) as info:
                await pool.acquire()
            assert info.value.code == code
            assert ws_server.handshakes == 3


async def test_handshake_answered_4xx_is_not_retried(ws_server: WSServer) -> None:
    ws_server.reject_status = 429
    with anyio.fail_after(10):
        async with open_pool(ws_server.url, connect_attempts=3, retry_backoff=0) as pool:
            with pytest.raises(WebSocketUpgradeError) as info:
                await pool.acquire()
            assert info.value.response.status_code == 429
            assert ws_server.rejected == 1


@pytest.mark.parametrize(("code", "backs_off"), [(1012, True), (1013, True), (1000, False)])
async def test_restart_code_makes_the_next_connection_back_off(
    ws_server: WSServer, code: int, backs_off: bool
) -> None:
    # An idle connection closed by the server with "service restart" or "try
    # again later": the next connection starts only after retry_backoff.
    backoff = 1.0
    with anyio.fail_after(10):
        async with open_pool(ws_server.url, retry_backoff=backoff) as pool:
            async with pool.connection():
                pass
            closed_at = anyio.current_time()
            await ws_server.close_all(code)
            await until(lambda: pool.stats.closed == 1)
            async with pool.connection() as ws:
                await ws.send_text("x")
                assert await ws.receive_text() == "x"
            waited = anyio.current_time() - closed_at
    assert ws_server.handshakes == 2
    if backs_off:
        assert waited >= backoff * 0.99
    else:
        assert waited < backoff


@pytest.mark.parametrize(
    ("close_after", "pings"),
    [(0.05, True), (0.0, True), (0.0, False)],
    ids=["during-the-quiet-period", "at-once", "at-once-no-pongs"],
)
async def test_borrower_gets_a_fatal_close_of_its_new_connection(
    ws_server: WSServer, close_after: float, pings: bool
) -> None:
    # drain_on_release with on_connect drains a new connection before its first
    # lease; the server closes it meanwhile with 4003 (during the drain's quiet
    # period, or at once, while the drain's ping waits for a pong that may never
    # come): the waiting borrower gets that error at once, not a new connection
    # nor a PoolTimeout after drain_timeout.
    ws_server.close_new_after = close_after
    ws_server.close_new_code = 4003
    ws_server.answer_pings = pings

    async def hello(ws: Any) -> None:
        await ws.send_text("hello")

    with anyio.fail_after(4):
        async with open_pool(
            ws_server.url,
            on_connect=hello,
            drain_on_release=True,
            drain_quiet_period=0.5,
            drain_timeout=30,
            acquire_timeout=30,
        ) as pool:
            with pytest.raises(WebSocketDisconnect) as info:
                await pool.acquire()
            assert info.value.code == 4003
            assert ws_server.handshakes == 1
            assert pool.stats.waiting == 0


async def test_acquire_timeout_zero_with_open_circuit_says_unavailable() -> None:
    switch = _Switch()
    switch.failing = True
    async with open_pool(
        connect=switch, failure_threshold=1, connect_attempts=1, acquire_timeout=0
    ) as pool:
        with pytest.raises(ConnectionRefusedError):
            await pool.acquire()
        with pytest.raises(PoolUnavailable):
            await pool.acquire()
        assert not isinstance(PoolUnavailable("x"), PoolTimeout)


class _Gated:
    """A generic connector whose first attempt fails once ``gate`` is set; later ones fail fast.

    ``errors`` gives each attempt's error, in the order of the attempts (the
    last one repeats).
    """

    def __init__(self, *errors: Exception) -> None:
        self.gate = anyio.Event()
        self.errors = list(errors)
        self.attempts = 0
        #: set by a test once the server is back: then attempts succeed
        self.succeed = False

    @asynccontextmanager
    async def __call__(self) -> AsyncIterator[object]:
        self.attempts += 1
        error = self.errors.pop(0) if len(self.errors) > 1 else self.errors[0]
        if self.attempts == 1:
            await self.gate.wait()
        else:
            await anyio.lowlevel.checkpoint()
        if not self.succeed:
            raise error
        yield object()


async def test_no_queued_attempt_starts_once_the_circuit_opens() -> None:
    # Three borrowers, one handshake at a time: two connections queue behind
    # the first attempt. It fails and opens the circuit; the two queued ones
    # must not then attempt: their borrowers fail at once with PoolUnavailable.
    connect = _Gated(ConnectionRefusedError("refused"))
    outcomes: list[str] = []

    async def borrow(pool: WebSocketPool[Any]) -> None:
        try:
            await pool.acquire()
        except ConnectionRefusedError:
            outcomes.append("refused")
        except PoolUnavailable:
            outcomes.append("unavailable")

    with anyio.fail_after(10):
        async with open_pool(
            connect=connect,
            max_connections=3,
            max_connecting=1,
            failure_threshold=1,
            connect_attempts=1,
            circuit_reset=60,
        ) as pool:
            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(borrow, pool)
                await anyio.wait_all_tasks_blocked()
                assert connect.attempts == 1
                connect.gate.set()
            assert sorted(outcomes) == ["refused", "unavailable", "unavailable"]
            assert connect.attempts == 1
            assert pool.stats.circuit == "open"
            assert pool.stats.connecting == 0


async def test_no_retry_starts_once_the_circuit_opens() -> None:
    # Connection A's single attempt hangs, then fails for good (not retried);
    # connection B's first attempt fails with a transient error and B backs
    # off before its retry. A's failure opens the circuit: B must not retry.
    connect = _Gated(ValueError("bad token"), ConnectionRefusedError("refused"))
    outcomes: list[str] = []

    async def borrow(pool: WebSocketPool[Any]) -> None:
        try:
            await pool.acquire()
        except Exception as exc:
            outcomes.append(type(exc).__name__)

    with anyio.fail_after(10):
        async with open_pool(
            connect=connect,
            max_connections=2,
            failure_threshold=1,
            connect_attempts=3,
            retry_backoff=30,
            retry_backoff_max=30,
            circuit_reset=60,
        ) as pool:
            # Full jitter could draw a back-off near 0: take its upper bound,
            # so that B is still backing off when A fails.
            assert pool._host is not None
            pool._host._rng.uniform = lambda a, b: b  # type: ignore[method-assign]
            async with anyio.create_task_group() as tg:
                for _ in range(2):
                    tg.start_soon(borrow, pool)
                await anyio.wait_all_tasks_blocked()
                assert connect.attempts == 2  # A hangs, B backs off
                connect.gate.set()
            assert sorted(outcomes) == ["PoolUnavailable", "ValueError"]
            assert connect.attempts == 2
            assert pool.stats.circuit == "open"


async def test_probe_gets_a_handshake_slot_after_queued_connections_were_stopped() -> None:
    # (From the outside attack.) Three borrowers, max_connecting=1: two
    # connections queue for the handshake slot behind the first. Its failure
    # opens the circuit, which stops the two queued ones, one of them just
    # handed the slot. The slot must come back: after circuit_reset the probe
    # handshakes and the borrower is served.
    connect = _Gated(ConnectionRefusedError("refused"))
    outcomes: list[str] = []

    async def borrow(pool: WebSocketPool[Any]) -> None:
        try:
            await pool.acquire()
        except ConnectionRefusedError:
            outcomes.append("refused")
        except PoolUnavailable:
            outcomes.append("unavailable")

    with anyio.fail_after(10):
        async with open_pool(
            connect=connect,
            max_connections=3,
            max_connecting=1,
            failure_threshold=1,
            connect_attempts=1,
            circuit_reset=0.1,
            acquire_timeout=2,
        ) as pool:
            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(borrow, pool)
                await anyio.wait_all_tasks_blocked()
                connect.gate.set()
            assert sorted(outcomes) == ["refused", "unavailable", "unavailable"]
            connect.succeed = True
            await anyio.sleep(0.15)  # circuit_reset elapses (time-based by nature)
            async with pool.connection():
                pass
            assert pool.stats.circuit == "closed"
            assert pool.stats.opened == 1
