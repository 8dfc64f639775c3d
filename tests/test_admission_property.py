"""Property-based: max_connecting, max_waiting and the circuit breaker under random steps.

Random borrowers (of any connection, or of a new one), releases and
cancellations, and connection attempts that succeed or fail when the test
says so, on a pool with a random capacity, ``max_connecting``, ``max_waiting``
and ``failure_threshold``. After every step, with every task settled: never
more attempts in flight than ``max_connecting``; no attempt started while the
circuit is open; ``PoolOverloaded`` only when ``max_waiting`` borrowers were
already waiting; ``PoolUnavailable`` only after ``failure_threshold``
failures; capacity held. At the end every borrower has an outcome and every
resource opened was closed.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from anyio_wspool import PoolOverloaded, PoolUnavailable, WebSocketPool, open_pool

from .test_invariants import settle

pytestmark = pytest.mark.anyio


@dataclass
class Attempt:
    """One call of the connector, held until the test decides its outcome."""

    decided: anyio.Event = field(default_factory=anyio.Event)
    ok: bool = False


class Connector:
    """A generic connector whose attempts succeed or fail on command, in order."""

    def __init__(self) -> None:
        self.pending: deque[Attempt] = deque()
        self.in_flight = 0
        self.max_in_flight = 0
        self.started_while_open = 0
        self.ids = itertools.count()
        self.opened: set[int] = set()
        self.closed: set[int] = set()
        self.pool: WebSocketPool[int] | None = None

    def decide(self, ok: bool) -> bool:
        """Settle the oldest attempt still waiting; False if there is none."""
        if not self.pending:
            return False
        attempt = self.pending.popleft()
        attempt.ok = ok
        attempt.decided.set()
        return True

    @asynccontextmanager
    async def __call__(self) -> AsyncIterator[int]:
        assert self.pool is not None
        if self.pool.stats.circuit == "open":
            self.started_while_open += 1
        attempt = Attempt()
        self.pending.append(attempt)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await attempt.decided.wait()
        finally:
            self.in_flight -= 1
            if attempt in self.pending:
                self.pending.remove(attempt)
        if not attempt.ok:
            raise ConnectionRefusedError("refused (on command)")
        resource = next(self.ids)
        self.opened.add(resource)
        try:
            yield resource
        finally:
            self.closed.add(resource)


@dataclass
class Borrower:
    n: int
    #: asked for a new connection (new_connection())
    new: bool = False
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    done: anyio.Event = field(default_factory=anyio.Event)
    got: int | None = None
    error: BaseException | None = None
    #: borrowers already waiting when this one asked
    waiting_before: int = 0
    #: attempts that had failed for good when this one got its error
    failures_before: int = 0
    finished: bool = False


#: borrowing and refusing weigh most: they make queues, and open the circuit
STEP = st.one_of(
    st.tuples(
        st.sampled_from(["borrow", "borrow", "borrow", "borrow_new", "refuse", "refuse"]),
        st.just(0),
    ),
    st.tuples(st.sampled_from(["release", "cancel", "connect"]), st.integers(0, 15)),
)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    capacity=st.integers(1, 4),
    max_connecting=st.sampled_from([None, 1, 2, 3]),
    max_waiting=st.sampled_from([None, 0, 1, 2, 3]),
    failure_threshold=st.sampled_from([None, 1, 2, 3]),
    steps=st.lists(STEP, min_size=1, max_size=30),
)
async def test_admission_and_circuit_keep_every_invariant(
    capacity: int,
    max_connecting: int | None,
    max_waiting: int | None,
    failure_threshold: int | None,
    steps: list[tuple[str, int]],
) -> None:
    connector = Connector()
    borrowers: list[Borrower] = []
    failures = 0  # connections whose only attempt was refused

    async def borrow(pool: WebSocketPool[int], b: Borrower) -> None:
        try:
            with b.scope:
                lease = pool.new_connection() if b.new else pool.connection()
                async with lease as resource:
                    b.got = resource
                    await b.done.wait()
        except (ConnectionRefusedError, PoolOverloaded, PoolUnavailable) as exc:
            b.error = exc
            b.failures_before = failures
        b.finished = True

    async with open_pool(
        connect=connector,
        max_connections=capacity,
        max_connecting=max_connecting,
        max_waiting=max_waiting,
        failure_threshold=failure_threshold,
        circuit_reset=60.0,  # no probe within the test: the circuit stays open once open
        connect_attempts=1,
        acquire_timeout=None,
    ) as pool:
        connector.pool = pool
        async with anyio.create_task_group() as tg:
            for op, index in steps:
                live = [b for b in borrowers if not b.finished and not b.scope.cancel_called]
                if op in ("borrow", "borrow_new"):
                    b = Borrower(
                        len(borrowers), new=op == "borrow_new", waiting_before=pool.stats.waiting
                    )
                    borrowers.append(b)
                    tg.start_soon(borrow, pool, b)
                elif op in ("connect", "refuse"):
                    if connector.decide(op == "connect") and op == "refuse":
                        failures += 1
                elif live:
                    b = live[index % len(live)]
                    if op == "cancel":
                        b.scope.cancel()
                    elif b.got is not None:
                        b.done.set()
                await settle()

                stats = pool.stats
                held = stats.connecting + stats.idle + stats.in_use + stats.closing
                assert held <= capacity, stats
                if max_connecting is not None:
                    assert connector.max_in_flight <= max_connecting, stats
                assert connector.started_while_open == 0, stats
                for b in borrowers:
                    if isinstance(b.error, PoolOverloaded):
                        assert max_waiting is not None
                        assert b.waiting_before >= max_waiting, (b, stats)
                    if isinstance(b.error, PoolUnavailable):
                        assert failure_threshold is not None
                        assert b.failures_before >= failure_threshold, (b, stats)
                        assert isinstance(b.error.__cause__, ConnectionRefusedError)
            # The end: every lease given back, every attempt allowed to succeed.
            for _ in range(4 * capacity + len(borrowers) + 10):
                for b in borrowers:
                    b.done.set()
                while connector.decide(True):
                    pass
                await settle()
                if all(b.finished or b.scope.cancel_called for b in borrowers):
                    break
            assert all(b.finished or b.scope.cancel_called for b in borrowers)
    assert connector.opened == connector.closed
    assert connector.in_flight == 0
    event(f"max in flight {connector.max_in_flight}")
    for kind in (PoolOverloaded, PoolUnavailable, ConnectionRefusedError):
        event(f"{kind.__name__}: {min(sum(isinstance(b.error, kind) for b in borrowers), 2)}")
