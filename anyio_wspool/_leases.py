"""``lease_warning``: a lease held too long is logged once, while it is still held.

Every lease lasts the same ``lease_warning`` before it is suspect, so the
leases to watch are in deadline order as they are taken: one FIFO queue and
one task that sleeps until the deadline of the oldest. A lease that ended
before its deadline is dropped when it comes up; one still held is logged at
WARNING with the name of the task that took it and the file and line where it
was taken (the frame outside the pool that asked), so that a forgotten
``acquire()`` or a block that never ends can be found.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections import deque
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

import anyio

if TYPE_CHECKING:
    from ._conn import Conn

__all__ = ("LeaseWatch",)

logger = logging.getLogger("anyio_wspool")

#: the package's own directory: frames in it are the pool's, not the caller's
_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep
#: contextlib's frames (``@asynccontextmanager`` around a lease) are skipped too
_SKIPPED = (_PACKAGE, os.path.abspath(contextlib.__file__))


def _caller() -> str:
    """``file:line`` of the first frame outside the pool (and contextlib)."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not os.path.abspath(filename).startswith(_SKIPPED):
            return f"{filename}:{frame.f_lineno}"
        frame = frame.f_back
    return "<unknown>"


class LeaseWatch:
    """The leases taken since the oldest one not yet past ``lease_warning``."""

    __slots__ = ("_limit", "_now", "_queue", "_target", "_wakeup")

    def __init__(self, limit: float, now: Callable[[], float], target: str) -> None:
        self._limit = limit
        self._now = now
        self._target = target
        #: (deadline, connection, its lease number, where, task name)
        self._queue: deque[tuple[float, Conn[Any], int, str, str]] = deque()
        self._wakeup: anyio.Event | None = None

    def add(self, conn: Conn[Any]) -> None:
        """Watch the lease that ``conn`` was just lent for (call in the borrower's task)."""
        task = anyio.get_current_task().name or "<unnamed task>"
        self._queue.append((self._now() + self._limit, conn, conn.lease, _caller(), task))
        if len(self._queue) == 1 and self._wakeup is not None:
            self._wakeup.set()

    async def run(self, event_class: type[anyio.Event]) -> None:
        """Log each lease still held at its deadline; runs until cancelled."""
        queue = self._queue
        while True:
            self._wakeup = event_class()
            deadline = float("inf")
            while queue:
                deadline, conn, lease, where, task = queue[0]
                if deadline > self._now():
                    break
                queue.popleft()
                if conn.lease == lease:  # still the same lease
                    logger.warning(
                        "a connection to %s has been lent for more than lease_warning=%g s "
                        "and is still held: taken by task %r at %s",
                        self._target,
                        self._limit,
                        task,
                        where,
                    )
                deadline = float("inf")
            with anyio.CancelScope(deadline=deadline):
                await self._wakeup.wait()
