"""What the lending path calls, looked up once when a pool opens.

``anyio.current_time()``, ``anyio.lowlevel.checkpoint_if_cancelled()`` and
``anyio.Event()`` each find the running backend anew (through sniffio's
context variable and a dictionary of backends): on a busy pool that was a third
of the cost of handing a connection to a waiting borrower. A pool runs on one
event loop from the moment it is entered, so it binds these once:

* the backend's clock: trio's own ``current_time`` (so that trio's
  ``MockClock`` still drives every deadline), the asyncio loop's ``time``;
* the backend's cancellation check, the one anyio's own primitives make before
  they take something or wait (on asyncio, behind a synchronous test, so that
  the common case makes no coroutine: see :func:`_asyncio_cancel_check`);
* the cheapest one-shot wake-up the backend offers, for a waiting borrower: a
  bare future on asyncio (``anyio.Event`` wraps an ``asyncio.Event``, which
  makes a future of its own for each wait), the parked task itself on trio.

A wake-up is set at most once and waited on by one task at most once, which is
all a waiting borrower needs; anything waited on repeatedly keeps using
``anyio.Event``. On asyncio the wake-up *is* the future, made by the pool's
loop (``loop.create_future``, bound once) and awaited as it is: a wrapper
object would add Python calls to every hand-off, and a Python subclass of
``Future`` leaves the C task's fast path for bare futures. ``asyncio.Future()``
without ``loop=`` runs fewer instructions but is slower: on Python 3.11 it asks
for the running loop, which checks the process id with a system call each time.
On trio the wake-up speaks the same method, ``set_result()`` (which raises
``asyncio.InvalidStateError`` once its waiter was cancelled, as a cancelled
future does), so that the hand-off sets it with one call and no backend test
(see :func:`wake`).
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Awaitable, Callable, Generator
from functools import partial
from typing import Any, Protocol

import anyio.lowlevel

__all__ = ("Backend", "Signal", "bind", "wake")


class Signal(Protocol):
    """A one-shot wake-up: awaited once, by one task; set once, with :func:`wake`."""

    def set_result(self, result: None, /) -> None:
        """Wake its waiter; ``asyncio.InvalidStateError`` if the waiter was cancelled.

        (Or if it was set already: a wake-up is set once.)
        """
        ...

    def cancelled(self) -> bool:
        """Whether its waiter was cancelled (and is leaving, without a connection)."""
        ...

    def __await__(self) -> Generator[Any, Any, Any]: ...


def wake(signal: Signal) -> bool:
    """Set ``signal``; False if its waiter was cancelled meanwhile (nobody was woken).

    A waiter's wake-up is cancelled with it, at once, on both backends: on
    asyncio the task's cancellation cancels the future it awaits, on trio the
    cancellation aborts the park. So the pool learns as it hands a connection
    over whether anybody will take it, and passes it on to the next waiter if
    not. (The hand-off path writes this out, to save the call; the ``try``
    costs nothing until it catches.)
    """
    try:
        signal.set_result(None)
    except asyncio.InvalidStateError:
        return False
    return True


class Backend:
    """The running backend's clock, cancellation check and wake-up, bound once."""

    __slots__ = ("cancel_check", "now", "signal")

    def __init__(
        self,
        now: Callable[[], float],
        cancel_check: Callable[[], Awaitable[None] | None],
        signal: Callable[[], Signal],
    ) -> None:
        #: the current time on the backend's clock
        self.now = now
        #: the cancellation check: an awaitable that raises the cancellation of
        #: an enclosing cancelled scope (else returns at once), or None when a
        #: synchronous test found that no such scope was cancelled (so that the
        #: common case makes no coroutine): ``if (c := check()) is not None: await c``
        self.cancel_check = cancel_check
        #: a new one-shot wake-up
        self.signal = signal


def bind() -> Backend:
    """The running backend's primitives (call inside its event loop)."""
    token = anyio.lowlevel.current_token()
    loop = token.native_token
    if isinstance(loop, asyncio.AbstractEventLoop):
        # The default loop's clock is time.monotonic itself (its time() method
        # is a Python call around it); another loop (uvloop), or one whose
        # clock a test replaced (virtual time), keeps its own.
        default_clock = getattr(loop.time, "__func__", None) is asyncio.BaseEventLoop.time
        now = time.monotonic if default_clock else loop.time
        signal: Callable[[], Signal] = loop.create_future
        check = _asyncio_cancel_check(loop, token.backend_class.checkpoint_if_cancelled)
        return Backend(now, check, signal)
    import trio  # the only other backend anyio runs on; imported only when running

    return Backend(trio.current_time, trio.lowlevel.checkpoint_if_cancelled, _trio_signal())


def _trio_signal() -> Any:
    """The one-shot wake-up on trio: the waiting task itself, rescheduled by ``set_result``.

    ``trio.Event`` keeps a set of waiting tasks and builds an attrs object per
    event; a waiting borrower is one task, parked with trio's own primitive.
    """
    import trio

    reschedule = trio.lowlevel.reschedule
    current_task = trio.lowlevel.current_task
    wait_task_rescheduled = trio.lowlevel.wait_task_rescheduled
    succeeded = trio.lowlevel.Abort.SUCCEEDED
    checkpoint = trio.lowlevel.checkpoint
    InvalidStateError = asyncio.InvalidStateError

    class TrioSignal:
        __slots__ = ("_cancelled", "_done", "_task")

        def __init__(self) -> None:
            #: set, or its waiter was cancelled: set_result() may not be called again
            self._done = False
            self._cancelled = False
            self._task: trio.lowlevel.Task | None = None

        def cancelled(self) -> bool:
            return self._cancelled

        def set_result(self, result: None, /) -> None:
            if self._done:
                raise InvalidStateError("set already, or its waiter was cancelled")
            self._done = True
            task = self._task
            if task is not None:
                self._task = None
                reschedule(task)

        def __await__(self) -> Generator[Any, Any, Any]:
            # The awaiter of trio's own coroutine, returned as it is: no
            # coroutine of our own around it.
            if self._done:
                return checkpoint().__await__()
            self._task = current_task()
            return wait_task_rescheduled(self._abort).__await__()

        def _abort(self, _: object) -> trio.lowlevel.Abort:
            self._task = None  # cancelled: set_result() raises, as on asyncio
            self._done = self._cancelled = True
            return succeeded

    return TrioSignal


def _asyncio_cancel_check(
    loop: asyncio.AbstractEventLoop, checkpoint_if_cancelled: Callable[[], Awaitable[None]]
) -> Callable[[], Awaitable[None] | None]:
    """anyio's ``checkpoint_if_cancelled`` on asyncio, behind a synchronous test.

    Every lease makes this check, and on asyncio anyio's own costs about a
    microsecond, as much as the rest of a hand-off: ``asyncio.current_task()``
    without a loop (on Python 3.11 a system call, to check the process id), a
    ``WeakKeyDictionary`` lookup (a Python call), property calls up the task's
    cancel scopes, all in a coroutine of its own. The function returned walks
    the same scopes, reading the fields those properties return, from the
    current task of the pool's own loop, with no Python call on its way; it
    returns None when no enclosing scope was cancelled, and otherwise anyio's
    check, for the caller to await (it raises the cancellation as anyio does).

    It reads anyio's and asyncio's private state (the task of a loop, the
    states of anyio's tasks, a scope's flags and parent), so it is used only if
    that state is what it expects when the pool opens; otherwise anyio's check
    is returned as it is (the tests check that the two agree, and that this
    one is in use).
    """
    try:
        from anyio._backends._asyncio import _task_states

        task = asyncio.current_task(loop)
        # asyncio.current_task() is a Python function on Python 3.11 (a dict
        # lookup by loop): the lookup itself, bound to the loop, if it agrees.
        running: dict[Any, Any] = asyncio.tasks._current_tasks  # type: ignore[attr-defined]
        current: Callable[[], Any] = partial(running.get, loop)
        if current() is not task:
            current = partial(asyncio.current_task, loop)
        # The dict under the WeakKeyDictionary, keyed by weak references.
        states: dict[Any, Any] = _task_states.data  # type: ignore[attr-defined]
        probe: Any
        with anyio.CancelScope() as probe:  # noqa: ASYNC100 (entered to be looked at)
            state: Any = states.get(weakref.ref(task))
            expected: Any = _task_states.get(task)  # type: ignore[arg-type]
            usable = (
                state is expected
                and state.cancel_scope is probe
                and probe._cancel_called is False
                and probe._shield is False
                and hasattr(probe, "_parent_scope")
            )
    except Exception:
        usable = False
    if not usable:
        return checkpoint_if_cancelled  # (anyio changed: its own check, as it is)
    ref = weakref.ref

    def cancel_check() -> Awaitable[None] | None:
        try:
            state = states.get(ref(current()))
        except TypeError:  # no current task (a coroutine run by hand): nothing to check
            return None
        if state is None:
            return None  # a task that entered no cancel scope of anyio's
        scope: Any = state.cancel_scope
        while scope is not None:
            if scope._cancel_called:
                return checkpoint_if_cancelled()
            if scope._shield:
                return None
            scope = scope._parent_scope
        return None

    return cancel_check
