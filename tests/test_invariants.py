"""Property-based: random borrowers, releases, discards and cancellations.

After every step, with every task settled: capacity (guarantee 1), exclusivity
(2), first come first served (3), no trace of cancelled waiters (6), and gauges
that match what the borrowers hold. At the end, every resource opened was
closed (8).
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anyio_wspool import WebSocketPool, open_pool

pytestmark = pytest.mark.anyio


async def settle() -> None:
    """Let every runnable task run to its next wait.

    No I/O is involved here (the connector only checkpoints), so a bounded
    number of scheduling rounds settles every chain of hand-offs; anyio's
    ``wait_all_tasks_blocked`` would do too, but polls every 0.1 s on asyncio.
    """
    for _ in range(20):
        await anyio.lowlevel.checkpoint()


@dataclass
class Borrower:
    n: int
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    done: anyio.Event = field(default_factory=anyio.Event)
    got: int | None = None
    discard: bool = False
    finished: bool = False


ops = st.lists(
    st.one_of(
        st.tuples(st.just("borrow"), st.just(0)),
        st.tuples(st.sampled_from(["release", "discard", "cancel"]), st.integers(0, 15)),
    ),
    min_size=1,
    max_size=25,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(capacity=st.integers(1, 4), steps=ops)
async def test_random_borrowing_keeps_every_invariant(
    capacity: int, steps: list[tuple[str, int]]
) -> None:
    ids = itertools.count()
    opened: set[int] = set()
    closed: set[int] = set()

    @asynccontextmanager
    async def connector() -> AsyncIterator[int]:
        await anyio.lowlevel.checkpoint()
        resource = next(ids)
        opened.add(resource)
        try:
            yield resource
        finally:
            closed.add(resource)

    borrowers: list[Borrower] = []
    served: list[int] = []

    async def borrow(pool: WebSocketPool[int], b: Borrower) -> None:
        with b.scope:
            async with pool.connection() as resource:
                b.got = resource
                served.append(b.n)
                await b.done.wait()
                if b.discard:
                    raise LookupError("discard")
        b.finished = True

    async def run_borrower(pool: WebSocketPool[int], b: Borrower) -> None:
        try:
            await borrow(pool, b)
        except LookupError:
            b.finished = True

    async with open_pool(connect=connector, max_connections=capacity) as pool:
        async with anyio.create_task_group() as tg:
            for op, index in steps:
                live = [b for b in borrowers if not b.finished and not b.scope.cancel_called]
                if op == "borrow":
                    b = Borrower(len(borrowers))
                    borrowers.append(b)
                    tg.start_soon(run_borrower, pool, b)
                elif live:
                    b = live[index % len(live)]
                    if op == "cancel":
                        b.scope.cancel()
                    elif b.got is not None:
                        b.discard = op == "discard"
                        b.done.set()
                await settle()

                holding = [b for b in borrowers if b.got is not None and not b.done.is_set()]
                holding = [b for b in holding if not b.scope.cancel_called]
                waiting = [b for b in borrowers if b.got is None and not b.scope.cancel_called]
                stats = pool.stats
                held = stats.connecting + stats.idle + stats.in_use + stats.closing
                assert held <= capacity, stats
                assert len({b.got for b in holding}) == len(holding)  # exclusive
                assert stats.in_use == len(holding), (stats, holding)
                assert stats.waiting == len(waiting), (stats, waiting)
                assert len(holding) + len(waiting) == 0 or len(holding) == min(
                    capacity, len(holding) + len(waiting)
                )
            for b in borrowers:  # one at a time, so that hand-offs happen in turn
                b.done.set()
                await settle()
        # first come, first served: borrowers got connections in arrival order
        assert served == sorted(served)
    assert opened == closed
