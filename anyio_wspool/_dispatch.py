"""Running the user's callbacks (``on_drained``) in order, in a task of the pool.

A callback is never run where its occasion arises: a connection's reader, or
the pool's synchronous bookkeeping, must not wait for user code, nor die of
its exceptions. Instead each call is queued here and one task of the pool
makes them, in order, awaiting those that return an awaitable. A callback that
raises is logged and the dispatcher goes on. When the pool closes, what is
still queued is given out within ``close_timeout``; after that the task is
cancelled and what is left is dropped, with a warning that says how much.
"""

from __future__ import annotations

import inspect
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import anyio.lowlevel

from ._redact import describe_error

__all__ = ("CallbackCancelled", "Dispatcher", "await_user")

logger = logging.getLogger("anyio_wspool")

T = TypeVar("T")


class CallbackCancelled(RuntimeError):
    """User code raised a cancellation that no scope around it asked for."""


async def await_user(awaitable: Awaitable[T], name: str) -> T:
    """Await what user code returned (a hook, a callback, a connector).

    On asyncio user code can raise ``CancelledError`` without being cancelled:
    it awaited a future that some other code cancelled. Passed on, that would
    end a task of the pool as if the pool had cancelled it. Unless a scope
    around the call was cancelled indeed (then the cancellation goes on), it
    becomes a :class:`CallbackCancelled` error, which the pool treats like any
    other error of that code.
    """
    try:
        return await awaitable
    except anyio.get_cancelled_exc_class() as exc:
        await anyio.lowlevel.checkpoint_if_cancelled()  # a real cancellation raises here
        raise CallbackCancelled(
            f"{name} raised {type(exc).__name__} without being cancelled"
        ) from exc


class Dispatcher:
    """A queue of callback calls and the task that makes them."""

    __slots__ = ("_calls", "_done", "_ready", "_scope", "_stopping")

    def __init__(self) -> None:
        self._calls: deque[tuple[str, Callable[[Any], object], object]] = deque()
        self._ready: anyio.Event | None = None
        self._scope: anyio.CancelScope | None = None
        self._done: anyio.Event | None = None
        self._stopping = False

    def submit(self, name: str, callback: Callable[[Any], object], argument: object) -> None:
        """Queue ``callback(argument)``; ``name`` is the option's, for logs (synchronous)."""
        self._calls.append((name, callback, argument))
        self._wake()

    def _wake(self) -> None:
        ready = self._ready
        if ready is not None:
            self._ready = None
            ready.set()

    async def run(self) -> None:
        """The dispatcher's task: make the queued calls until :meth:`stop`."""
        self._done = anyio.Event()
        calls = self._calls
        try:
            with anyio.CancelScope() as self._scope:
                while True:
                    while calls:
                        name, callback, argument = calls.popleft()
                        try:
                            result = callback(argument)
                            if inspect.isawaitable(result):
                                await await_user(result, name)
                        except Exception as exc:
                            logger.warning(
                                "%s raised an exception (the pool goes on): %s",
                                name,
                                describe_error(exc, with_traceback=True),
                            )
                    if self._stopping:
                        return
                    self._ready = anyio.Event()
                    await self._ready.wait()
        finally:
            self._done.set()

    async def stop(self, grace: float) -> None:
        """Make what is queued within ``grace`` seconds, then end the task."""
        self._stopping = True
        done = self._done
        if done is None or done.is_set():
            return  # not started yet: it will see _stopping when it starts
        self._wake()
        with anyio.move_on_after(grace):
            await done.wait()
        if not done.is_set():
            logger.warning(
                "a callback did not finish within close_timeout=%g s; %d queued call(s) dropped",
                grace,
                len(self._calls),
            )
            assert self._scope is not None
            self._scope.cancel()
