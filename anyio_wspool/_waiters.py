"""Borrowers waiting for a connection: one FIFO queue and one timer for all of them.

A borrower that finds nothing to lend queues a :class:`Waiter` and sleeps on
its event (a ``pool.connection()`` block is its own waiter). The pool serves
the queue from its synchronous bookkeeping: it fills in ``conn`` (or
``error``), takes the waiter out of the queue and sets the event, so that a
hand-off never waits for the borrower to run.

Nobody waits with a cancel scope of its own: every borrower waits the same
``acquire_timeout`` from the moment it queues, so the queue is also in
deadline order, and a single task (:meth:`WaiterQueue.expire`) sleeps until
the deadline of the head and fails those whose time ran out. That is one timer
for the pool instead of one per wait.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Container
from typing import TYPE_CHECKING, Generic, Literal, TypeVar

import anyio

from ._backend import wake

if TYPE_CHECKING:
    from ._backend import Signal
    from ._conn import Conn

__all__ = ("Waiter", "WaiterQueue")

R = TypeVar("R")


class Waiter(Generic[R]):
    """A borrower waiting for a connection: the pool fills in ``conn`` or ``error``.

    ``event`` and ``deadline`` are set when it joins the queue.
    """

    __slots__ = ("conn", "deadline", "error", "event", "fresh")

    event: Signal
    deadline: float

    def __init__(self, fresh: bool) -> None:
        #: whether the borrower asked for a newly opened connection
        self.fresh = fresh
        self.conn: Conn[R] | None = None
        self.error: BaseException | None = None


class WaiterQueue(OrderedDict["Waiter[R]", None]):
    """The waiting borrowers, first come first served (O(1) removal of any of them).

    An ordered dict of waiters itself, so that the hand-off path's ``if
    waiters`` and ``len(waiters)`` are the dict's own C methods.
    """

    __slots__ = ("_wakeup",)

    def __init__(self) -> None:
        super().__init__()
        #: set when a waiter joins an empty queue, to wake the expiry task
        self._wakeup: anyio.Event | None = None

    def first(self) -> Waiter[R]:
        return next(iter(self))

    def first_needing_room(self, covered: int) -> Waiter[R] | Literal[False] | None:
        """Who a connection given back goes to, when the first waiter wants a new one.

        The first ``covered`` waiters will be served by the connections being
        opened. Returns the first waiter that takes any connection, if it comes
        before the first waiter beyond those that asked for a new connection;
        None if such a waiter comes first (the connection must be closed to make
        room for it); False if nobody needs the connection.
        """
        index = 0
        for waiter in self:
            if waiter.event.cancelled():
                continue  # leaving: it needs nothing
            if not waiter.fresh:
                return waiter
            if index >= covered:
                return None
            index += 1
        return False

    def first_staying(self) -> Waiter[R] | None:
        """The first waiter whose borrower was not cancelled, if any."""
        for waiter in self:
            if not waiter.event.cancelled():
                return waiter
        return None

    def leaving(self) -> int:
        """How many waiters were cancelled, and are still queued until their task runs."""
        return sum(1 for waiter in self if waiter.event.cancelled())

    def add(self, waiter: Waiter[R], *, ahead: Container[Waiter[R]] | None = None) -> None:
        """Queue ``waiter`` last; or, given ``ahead``, behind those only.

        ``ahead`` is for a borrower that was there before it queued (its
        ``check_on_acquire`` ping failed): the waiters that were queued when it
        began. It goes behind those still queued and ahead of every waiter that
        came after it, so that it keeps its place and the queue stays in
        deadline order.
        """
        if (ahead is not None or not self) and self._wakeup is not None:
            self._wakeup.set()  # maybe a new head: the expiry task looks at its deadline
        self[waiter] = None
        if ahead is not None:
            for later in [other for other in self if other not in ahead and other is not waiter]:
                self.move_to_end(later)

    def discard(self, waiter: Waiter[R]) -> bool:
        """Take ``waiter`` out of the queue; False if it was no longer in it."""
        return self.pop(waiter, waiter) is not waiter

    def fail_all(self, error: Callable[[], BaseException]) -> None:
        """Wake every waiter, each with an error of its own (``error()``)."""
        waiters = list(self)
        self.clear()
        for waiter in waiters:
            waiter.error = error()
            wake(waiter.event)

    def fail_beyond(self, keep: int, error: Callable[[], BaseException]) -> None:
        """Wake every waiter but the first ``keep``, each with an error of its own.

        Those cancelled meanwhile are neither kept nor failed: they leave on their own.
        """
        waiters = [waiter for waiter in self if not waiter.event.cancelled()][keep:]
        for waiter in waiters:
            del self[waiter]
            waiter.error = error()
            wake(waiter.event)

    async def expire(
        self, on_expired: Callable[[Waiter[R]], BaseException], event_class: type[anyio.Event]
    ) -> None:
        """Fail each waiter at its deadline with ``on_expired(waiter)``; runs until cancelled.

        The queue is in deadline order (every waiter waits as long, and one put
        first was there before the others), so only its head needs watching.
        """
        queue = self
        while True:
            self._wakeup = event_class()
            deadline = math.inf
            if queue:
                head = next(iter(queue))
                if head.deadline <= anyio.current_time():
                    del queue[head]  # out of the queue before on_expired sees it
                    head.error = on_expired(head)
                    wake(head.event)
                    continue
                deadline = head.deadline
            # Until the head's deadline, or until add() brings a new head.
            with anyio.CancelScope(deadline=deadline):
                await self._wakeup.wait()
