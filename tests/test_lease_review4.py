"""The fourth outside review of the lending path: each test is a break it found.

Written by a reviewer who had not seen the code, against SPEC.md, after the
fixes of tests/test_lease_review3.py. A cancelled waiter stays queued until its
task runs; its wake-up says it was cancelled, and the hand-off, admission and
make-room skipped it, but the readers below still counted it (the demand that
opens connections, a group's room, the circuit breaker's shedding, the error of
a failed attempt). Each test failed on the code it was written against, and
passes since the fix.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import pytest

from anyio_wspool import PoolUnavailable, WebSocketPool, open_pool, open_pool_group

from ._fake import Connector, Resource, enter_in
from ._util import until
from ._wsserver import serve_ws

pytestmark = pytest.mark.anyio


class GatedConnector:
    """Each attempt waits for its own gate (``gates[n]``); those in ``failing`` are refused."""

    def __init__(self, failing: frozenset[int] = frozenset()) -> None:
        self.gates: list[anyio.Event] = []
        self.failing = failing
        self.opened: list[Resource] = []
        self.closed: list[Resource] = []

    @asynccontextmanager
    async def __call__(self) -> AsyncIterator[Resource]:
        number = len(self.gates)
        gate = anyio.Event()
        self.gates.append(gate)
        await gate.wait()
        if number in self.failing:
            raise ConnectionRefusedError("the fake server at 127.0.0.1 refused")
        resource = Resource()
        self.opened.append(resource)
        try:
            yield resource
        finally:
            resource.closed = True
            self.closed.append(resource)


async def _refused(pool: WebSocketPool[Resource], errors: list[BaseException]) -> None:
    """A borrower whose connection fails to open: its error goes to ``errors``."""
    try:
        async with pool.connection():
            pytest.fail("lent a connection that failed to open")
    except ConnectionRefusedError as error:
        errors.append(error)


# -- _demand / _grow count a cancelled waiter ---------------------------------------------


async def test_raising_max_connections_opens_no_connection_for_a_cancelled_waiter() -> None:
    # Promised (SPEC guarantee 6): "a cancelled waiter leaves no trace"; the
    # second review's fix: "a cancelled borrower opens no connection"; SPEC:
    # max_connections "can be changed later by assigning pool.max_connections".
    # What happened (every backend): the only waiter W, at a full pool of one,
    # is cancelled; in the same step max_connections is raised to 2. The
    # setter's _grow() asks _demand(), which counts len(self._waiters): W is
    # still queued until its task runs, although its wake-up says it was
    # cancelled. A second connection is opened for nobody (a handshake, a
    # server slot). Had W's task run first, nothing would be opened.
    connector = Connector()
    async with open_pool(connect=connector, max_connections=1) as pool:
        scope = anyio.CancelScope()

        async with anyio.create_task_group() as tg:
            async with pool.connection():
                tg.start_soon(enter_in, pool.connection(), scope)
                await until(lambda: pool.stats.waiting == 1)
                scope.cancel()  # the only waiter leaves ...
                pool.max_connections = 2  # ... and, in the same step, room is made
        assert scope.cancelled_caught
        await until(lambda: pool.stats.connecting == 0 and pool.stats.waiting == 0)
        assert len(connector.opened) == 1, (
            f"a connection was opened for a cancelled waiter: {connector.opened}"
        )


async def test_a_new_borrower_takes_the_connection_being_opened_for_a_cancelled_waiter() -> None:
    # Promised (SPEC guarantee 6): "a cancelled waiter leaves no trace; a
    # connection being opened for a cancelled borrower is closed or kept" --
    # kept for the next borrower (pool.connection()'s docstring: "a
    # connection being opened for it is kept for the next borrower").
    # What happened (every backend): W waits for the connection C1 being opened
    # for it; W is cancelled and, in the same step, borrower B asks. _enqueue's
    # _grow() counts W (still queued until its task runs) among the waiters
    # that C1 does not cover, and opens a second connection C2 for B. Had W's
    # task run first, B would have been served by C1 and nothing else opened.
    connector = GatedConnector()
    async with open_pool(connect=connector, max_connections=2) as pool:
        scope = anyio.CancelScope()

        async with anyio.create_task_group() as tg:
            tg.start_soon(enter_in, pool.connection(), scope)
            await until(lambda: len(connector.gates) == 1 and pool.stats.waiting == 1)
            scope.cancel()  # W leaves ...
            connector.gates[0].set()  # (C1 opens as soon as its task runs)
            with anyio.fail_after(5):
                async with pool.connection() as resource:  # ... and B asks, in the same step
                    assert resource is connector.opened[0]
        assert scope.cancelled_caught
        assert len(connector.gates) == 1, (
            f"{len(connector.gates)} connections were started for one borrower"
        )


class SlowCloseConnector(Connector):
    """A fake whose closes wait for ``close_gate`` (a closing handshake in flight)."""

    def __init__(self) -> None:
        super().__init__()
        self.close_gate: anyio.Event | None = None

    @asynccontextmanager
    async def __call__(self) -> AsyncIterator[Resource]:
        await anyio.lowlevel.checkpoint()
        resource = Resource()
        self.opened.append(resource)
        try:
            yield resource
        finally:
            if self.close_gate is None:
                self.close_gate = anyio.Event()
            with anyio.move_on_after(10):
                await self.close_gate.wait()
            resource.closed = True
            self.closed.append(resource)


async def test_make_room_closes_no_idle_connection_for_a_cancelled_new_borrower() -> None:
    # Promised (SPEC, new_connection): "when the pool is full and a connection
    # is idle, the idle one that waited longest is closed to make room" -- one
    # for each borrower that waits for a new connection; guarantee 6: "a
    # cancelled waiter leaves no trace"; the third review's fix: "no
    # connection is closed to make room for" a cancelled waiter.
    # What happened (every backend): a full pool of two idle connections X and
    # Y. A new_connection() borrower F1 queues: X (idle longest) is closed to
    # make room for it (its close takes a while). F1 is cancelled and, in the
    # same step, another new_connection() borrower F2 asks. _grow() looks at
    # the first waiter still there (F2, fresh) but counts the waiters with
    # len(self._waiters) (_demand): F1 too. So besides X, whose room now goes
    # to F2, the healthy idle Y is closed as well, for the cancelled F1. Had
    # F1's task run first, Y would have stayed idle.
    connector = SlowCloseConnector()
    async with open_pool(connect=connector, max_connections=2) as pool:
        x = await pool.acquire()
        y = await pool.acquire()
        await pool.release(x)
        await pool.release(y)  # both idle; X has waited longest
        scope = anyio.CancelScope()

        async with anyio.create_task_group() as tg:
            tg.start_soon(enter_in, pool.new_connection(), scope)
            await until(lambda: pool.stats.waiting == 1 and pool.stats.closing == 1)
            assert connector.close_gate is not None
            assert pool.stats.idle == 1
            scope.cancel()  # F1 leaves ...
            connector.close_gate.set()  # (X's close ends as soon as its task runs)
            with anyio.fail_after(5):
                async with pool.new_connection() as new:  # ... and F2 asks, in the same step
                    assert new not in (x, y)
        assert scope.cancelled_caught
        assert connector.closed == [x], (
            f"closed {connector.closed}: the idle {y} was closed for a cancelled borrower"
        )
        assert pool.stats.idle == 2


# -- the circuit breaker's shedding keeps a cancelled waiter's place --------------------------


async def test_the_circuit_breaker_does_not_refuse_a_borrower_for_a_cancelled_waiter() -> None:
    # Promised (SPEC): an open circuit fails at once only "borrowers that need
    # a new connection"; "connections already open keep being lent"; the
    # shedding (_shed): "the first waiters, as many as there are connections
    # being opened (...), keep their place". Guarantee 6: "a cancelled waiter
    # leaves no trace".
    # What happened (every backend): the circuit is open, one connection C2
    # (started before it opened) is still being opened for waiter W. W is
    # cancelled and, in the same step, a plain borrower B asks. _grow() sheds
    # with fail_beyond(keep=1), by position: W (still queued until its task
    # runs) holds the one place that C2 covers, and B fails at once with
    # PoolUnavailable, although C2 opens right after and would have been
    # lent to it. Had W's task run first, B would have waited and got C2.
    connector = GatedConnector(failing=frozenset({0}))
    refused: list[BaseException] = []
    got: list[Resource] = []
    async with open_pool(
        connect=connector,
        max_connections=3,
        connect_attempts=1,
        failure_threshold=1,
        circuit_reset=60,
    ) as pool:
        errors: list[BaseException] = []
        scope = anyio.CancelScope()

        async with anyio.create_task_group() as tg:
            tg.start_soon(_refused, pool, errors)
            await until(lambda: len(connector.gates) == 1)
            tg.start_soon(enter_in, pool.connection(), scope)
            await until(lambda: len(connector.gates) == 2 and pool.stats.waiting == 2)
            connector.gates[0].set()  # C1 fails: the circuit opens; C2 is in flight
            await until(lambda: bool(errors) and pool.stats.closing == 0)
            assert pool.stats.circuit == "open"
            assert pool.stats.connecting == 1
            assert pool.stats.waiting == 1
            scope.cancel()  # W leaves ...
            connector.gates[1].set()  # (C2 opens as soon as its task runs)
            try:
                with anyio.fail_after(5):
                    async with pool.connection() as resource:  # ... and B asks
                        got.append(resource)
            except PoolUnavailable as error:
                refused.append(error)
        assert scope.cancelled_caught
        assert refused == [], f"refused because of a cancelled waiter: {refused}"
        assert got == connector.opened
        assert pool.stats.unavailable == 0


async def test_the_circuit_breaker_does_not_count_a_cancelled_waiter_as_unavailable() -> None:
    # Promised (README, pool.stats): the counter `unavailable` counts the
    # borrowers that failed with PoolUnavailable; guarantee 6: "a cancelled
    # waiter leaves no trace"; the third review's fix for the same case of
    # acquire_timeout: "its expiry is not counted as a timeout".
    # What happened (every backend): the circuit is open and a waiter W waits
    # at a full pool (it waits for a lent connection to come back). W is
    # cancelled and, in the same step, room is made (max_connections raised):
    # _grow() sheds with fail_beyond(0), which builds a PoolUnavailable for W,
    # still queued until its task runs (_unavailable_error counts it), although
    # W's wake-up says it was cancelled and W raises only its cancellation.
    # stats.unavailable says a borrower was refused; none was.
    connector = GatedConnector(failing=frozenset({1}))
    async with open_pool(
        connect=connector,
        max_connections=2,
        connect_attempts=1,
        failure_threshold=1,
        circuit_reset=60,
    ) as pool:
        held: list[Resource] = []
        errors: list[BaseException] = []
        scope = anyio.CancelScope()

        async def hold() -> None:
            held.append(await pool.acquire())

        async with anyio.create_task_group() as tg:
            tg.start_soon(hold)
            await until(lambda: len(connector.gates) == 1)
            connector.gates[0].set()
            await until(lambda: bool(held))
            tg.start_soon(_refused, pool, errors)
            await until(lambda: len(connector.gates) == 2)
            pool.max_connections = 1  # (the pool stays full once C1 has failed)
            tg.start_soon(enter_in, pool.connection(), scope)
            await until(lambda: pool.stats.waiting == 2)
            connector.gates[1].set()  # C1 fails: the circuit opens; W waits for `held`
            await until(lambda: bool(errors) and pool.stats.closing == 0)
            assert pool.stats.circuit == "open"
            assert pool.stats.waiting == 1
            assert pool.stats.unavailable == 0
            scope.cancel()  # W leaves ...
            pool.max_connections = 2  # ... and, in the same step, room is made
        assert scope.cancelled_caught
        assert pool.stats.unavailable == 0, "a cancelled waiter was counted as refused"
        await pool.release(held[0])


# -- a group makes room for a key whose only waiter was cancelled -----------------------------


async def test_a_group_closes_no_idle_connection_for_a_key_whose_waiter_was_cancelled() -> None:
    # Promised (SPEC, open_pool_group): "at the cap an idle connection of
    # another key is closed to make room" -- for a borrower that waits;
    # guarantee 6: "a cancelled waiter leaves no trace"; the third review's
    # fix: "no connection is closed to make room for" a cancelled waiter.
    # What happened (every backend): a group of one; key B's only borrower
    # waits for the group's capacity. It is cancelled and, in the same step,
    # key A's block ends: A's connection goes idle, idle_available() asks B's
    # pool, whose _grow() counts the cancelled waiter (_demand: len(waiters))
    # and has_room() closes A's healthy connection (MAKE_ROOM) for it. Then B's
    # waiter leaves; A's next borrower needs a new handshake.
    async with serve_ws() as a, serve_ws() as b, open_pool_group(max_connections=1) as group:
        scope = anyio.CancelScope()

        async with anyio.create_task_group() as tg:
            async with group.connection(a.url) as ws:
                tg.start_soon(enter_in, group.connection(b.url), scope)
                await until(lambda: b.url in group.pools and group.pools[b.url].stats.waiting == 1)
                scope.cancel()  # B's only waiter leaves ...
            # ... and, in the same step, A's connection comes back idle.
        assert scope.cancelled_caught
        pool_a = group.pools[a.url]
        pool_b = group.pools[b.url]
        await until(lambda: pool_b.stats.waiting == 0 and pool_a.stats.closing == 0)
        assert pool_a.stats.closed == 0, "A's idle connection was closed for a cancelled waiter"
        async with group.connection(a.url) as again:
            assert again is ws
        assert a.handshakes == 1
        assert b.handshakes == 0


# -- a connect error goes to a borrower whose own connection opens -----------------------------


async def test_a_cancelled_waiters_connect_error_does_not_fail_the_next_borrower() -> None:
    # Promised (SPEC guarantee 5): a background error is "given to the
    # borrower that needed the connection"; guarantee 6: "a cancelled waiter
    # leaves no trace; a connection being opened for a cancelled borrower is
    # closed or kept".
    # What happened (every backend): W1 and W2 each have a connection being
    # opened for them (C1, C2). W1 is cancelled and leaves; C1 is kept. C1's
    # attempt then fails, and _connect_failed gives its error to the first
    # waiter, W2, which fails with ConnectionRefusedError although its own
    # connection C2 opens right after (and goes idle, lent to nobody).
    # Without W1 (never there, or not cancelled) W2 would have got C2.
    connector = GatedConnector(failing=frozenset({0}))
    failed: list[BaseException] = []
    got: list[Any] = []
    async with open_pool(connect=connector, max_connections=2, connect_attempts=1) as pool:
        scope = anyio.CancelScope()

        async def second() -> None:
            try:
                async with pool.connection() as resource:
                    got.append(resource)
            except ConnectionRefusedError as error:
                failed.append(error)

        async with anyio.create_task_group() as tg:
            tg.start_soon(enter_in, pool.connection(), scope)
            await until(lambda: len(connector.gates) == 1)
            tg.start_soon(second)
            await until(lambda: len(connector.gates) == 2 and pool.stats.waiting == 2)
            scope.cancel()
            await until(lambda: pool.stats.waiting == 1)  # W1 has left
            connector.gates[0].set()  # C1 (W1's) fails
            await until(lambda: pool.stats.connect_failures == 1 and pool.stats.closing == 0)
            connector.gates[1].set()  # C2 (W2's) opens
        assert scope.cancelled_caught
        assert failed == [], f"W2 failed with the error of W1's connection: {failed}"
        assert got == connector.opened
