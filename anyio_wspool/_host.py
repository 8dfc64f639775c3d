"""The life of one connection, in the task that hosts it.

Every connection has a *host task* in the pool's task group. It makes the
connection attempts (each bounded by ``connect_timeout``, retried with
exponential back-off and full jitter while the failure is transient), runs
``on_connect``, and then, inside the connector's context manager, sleeps until
the pool wakes it: to prepare a released connection (``on_release``, then the
drain of stale server data), or to close it. Leaving the context closes the
resource: only the task that entered an httpx-ws session may exit it.

The host never decides alone what becomes of a connection. It reports to the
pool's synchronous bookkeeping (the :class:`Keeper`): connected, failed,
prepared, finished; the pool changes the state. Whatever the host is doing
for a connection that is not lent (connecting, backing off, ``on_connect``,
``on_release``, draining) runs in the cancel scope ``conn.scope``, which
retiring the connection cancels: a pool that closes never waits for it.
"""

from __future__ import annotations

import logging
import math
import random
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import anyio

from ._conn import Conn, Reason, State
from ._dispatch import await_user
from ._redact import describe_error

if TYPE_CHECKING:
    from ._connector import Connector
    from ._options import Config

__all__ = ("ConnectionHost", "Keeper")

logger = logging.getLogger("anyio_wspool")

R = TypeVar("R")


class Keeper(Protocol[R]):
    """What a host task reports to: the pool's synchronous bookkeeping."""

    def _connected(self, conn: Conn[R]) -> None:
        """``conn.resource`` opened (``on_connect`` included): lend it, keep it or close it."""

    def _attempt_failed(self, conn: Conn[R], error: Exception, retrying: bool) -> None:
        """Attempt number ``conn.attempt`` failed; another follows if ``retrying``."""

    def _connect_failed(self, conn: Conn[R], error: Exception) -> None:
        """Every attempt failed; ``error`` is the last one's."""

    def _may_retry(self, conn: Conn[R]) -> bool:
        """Whether ``conn`` may make another attempt after a transient failure."""

    def _prepared(self, conn: Conn[R]) -> None:
        """A released connection is ready to be lent again."""

    def _retire(self, conn: Conn[R], reason: Reason) -> None:
        """Close ``conn``."""

    async def _pause(self, conn: Conn[R], delay: float) -> None:
        """Back off ``delay`` seconds before the next attempt (cut short when needed)."""

    def _finished(self, conn: Conn[R]) -> None:
        """The host task is over: the resource is closed."""

    def _drained(self, event: Any) -> None:
        """The sink of messages that no borrower will read."""


class ConnectionHost(Generic[R]):
    """The host tasks of one pool: :meth:`run` is the body of each."""

    __slots__ = (
        "_config",
        "_connector",
        "_event_class",
        "_handshakes",
        "_keeper",
        "_rng",
    )

    def __init__(
        self,
        config: Config,
        connector: Connector[R],
        keeper: Keeper[R],
        event_class: type[anyio.Event],
    ) -> None:
        self._config = config
        self._connector = connector
        self._keeper = keeper
        self._event_class = event_class
        self._rng = random.Random()
        #: max_connecting: a slot for each handshake in flight, taken in order
        self._handshakes = (
            anyio.Semaphore(config.max_connecting) if config.max_connecting is not None else None
        )

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1, 2, ...).

        Exponential with full jitter: uniform between 0 and ``retry_backoff``
        doubled at each attempt, capped at ``retry_backoff_max``.
        """
        config = self._config
        cap = min(config.retry_backoff_max, config.retry_backoff * 2 ** (attempt - 1))
        return self._rng.uniform(0.0, cap)

    def lifetime(self, max_lifetime: float) -> float:
        """A connection's share of ``max_lifetime``: 90-100 % of it, at random.

        The jitter keeps connections opened together from expiring together.
        """
        return self._rng.uniform(0.9, 1.0) * max_lifetime

    async def run(self, conn: Conn[R]) -> None:
        """The host task of ``conn``, from the first attempt to the closed socket."""
        try:
            await self._connect_and_serve(conn)
        finally:
            self._keeper._finished(conn)

    async def _connect_and_serve(self, conn: Conn[R]) -> None:
        config = self._config
        connector = self._connector
        keeper = self._keeper
        if conn.state is not State.CONNECTING:
            return  # retired before this task first ran (the pool closed at once)
        error: Exception | None = None
        attempt = 0
        # Retiring the connection cancels this scope while it connects: the
        # attempts, the back-off between them and on_connect.
        with anyio.CancelScope() as outer:
            conn.scope = outer
            if conn.delay:
                await keeper._pause(conn, conn.delay)
            while True:
                attempt += 1
                conn.attempt = attempt
                scope = anyio.CancelScope(deadline=anyio.current_time() + config.connect_timeout)
                try:
                    # (The connector is user code too, with connect=.)
                    hook_error = await await_user(self._attempt(conn, scope), "connect")
                    if hook_error is not None:
                        raise hook_error
                except Exception as exc:
                    connector.scrub(exc)
                    if conn.opened:
                        logger.warning(
                            "a connection to %s failed in the background and was closed: %s",
                            connector.target,
                            describe_error(exc, with_traceback=True),
                        )
                        keeper._retire(conn, Reason.FAILED)
                        return
                    error = exc
                else:
                    if conn.opened:
                        return
                    error = connector.timeout_error(config.connect_timeout)
                retrying = (
                    attempt < config.connect_attempts
                    and connector.is_transient(error)
                    and keeper._may_retry(conn)
                )
                keeper._attempt_failed(conn, error, retrying)
                if not retrying:
                    break
                delay = self.backoff(attempt)
                logger.info(
                    "connection attempt %d of %d to %s failed (%s); retrying in %.2f s",
                    attempt,
                    config.connect_attempts,
                    connector.target,
                    describe_error(error),
                    delay,
                )
                await keeper._pause(conn, delay)
        conn.scope = None
        if outer.cancelled_caught or error is None:
            return  # retired while connecting: the pool is closing or invalidated
        if connector.is_transient(error):
            error.add_note(
                f"anyio_wspool: {attempt} attempt(s) to connect to {connector.target} failed"
            )
        else:
            error.add_note(
                f"anyio_wspool: connecting to {connector.target} failed after {attempt} "
                "attempt(s); this error is not retried"
            )
        keeper._connect_failed(conn, error)

    async def _attempt(self, conn: Conn[R], scope: anyio.CancelScope) -> Exception | None:
        """One attempt, and the connection's whole life if it succeeds.

        Returns the error of ``on_connect`` (or the server's close during it),
        raised by the caller outside the session, whose task group would wrap
        it; returns None when the attempt timed out (``scope``) or the
        connection was served and retired. With ``max_connecting`` the attempt
        first takes a handshake slot, in order, and gives it back once the
        connection is open (``on_connect`` included) or the attempt is over.
        """
        config = self._config
        connector = self._connector
        handshakes = self._handshakes
        held = False

        def release() -> None:
            nonlocal held
            if held:
                held = False
                assert handshakes is not None
                handshakes.release()

        hook_error: Exception | None = None
        try:
            if handshakes is not None:
                # Queued behind the handshakes in flight; retiring the connection
                # cancels the wait. connect_timeout starts when the attempt does.
                await handshakes.acquire()
                held = True
                # Retired while queued (the circuit breaker opened, the pool is
                # closing): the slot is given back (finally) without an attempt.
                await anyio.lowlevel.checkpoint_if_cancelled()
                scope.deadline = anyio.current_time() + config.connect_timeout
            conn.in_flight = True
            conn.attempt_started = anyio.current_time()
            with scope:
                async with connector.open() as resource:
                    if config.on_connect is not None:
                        try:
                            await await_user(config.on_connect(resource), "on_connect")
                        except Exception as exc:
                            hook_error = exc
                    if hook_error is None and not connector.usable(resource):
                        # Closed by the server during the handshake or
                        # on_connect: a failed attempt, with its close code
                        # (retried if the code says it may help).
                        hook_error = connector.closed_error(resource)
                    if hook_error is None:
                        release()
                        # Connected: the deadline now only bounds the close.
                        scope.deadline = math.inf
                        conn.scope = None
                        conn.resource = resource
                        self._keeper._connected(conn)
                        await self._serve(conn)
                        scope.deadline = anyio.current_time() + config.close_timeout
        finally:
            conn.in_flight = False
            release()
        return hook_error

    async def _serve(self, conn: Conn[R]) -> None:
        """While the connection is open: prepare its releases, until it is retired."""
        while True:
            await conn.wake.wait()
            conn.wake = self._event_class()
            if conn.state is State.DRAINING:
                await self._prepare(conn)
            if conn.state >= State.CLOSING:
                return

    async def _prepare(self, conn: Conn[R]) -> None:
        """Run ``on_release``, then drain stale server data, then report to the pool.

        A new connection (``drain_on_release``) comes here before its first
        lease, for the drain only.

        Both together are bounded by ``drain_timeout``: a hook that hangs, or a
        server that keeps sending, gets the connection closed, never lent.
        """
        config = self._config
        failure: Exception | None = None
        # Retiring the connection (the pool closes) cancels the hook and the drain.
        with anyio.CancelScope() as conn.scope, anyio.move_on_after(config.drain_timeout) as scope:
            try:
                if config.on_release is not None and conn.uses:
                    await await_user(config.on_release(conn.resource), "on_release")
                if config.drain_on_release and conn.state is State.DRAINING:
                    await self._drain(conn)
            except Exception as exc:
                failure = exc
        conn.scope = None
        if conn.state is not State.DRAINING:
            return  # retired meanwhile (the pool closed)
        if not self._connector.usable(conn.resource):
            # The server closed it meanwhile (which cut the hook or the drain
            # short): the pool retires it, and if it is a new connection closed
            # with a code that refuses the client, tells the borrower waiting
            # for it why.
            self._keeper._prepared(conn)
        elif failure is not None:
            logger.warning(
                "on_release failed on a connection to %s; closing it: %s",
                self._connector.target,
                describe_error(failure),
            )
            self._keeper._retire(conn, Reason.RELEASE_FAILED)
        elif scope.cancelled_caught:
            logger.info(
                "a released connection to %s was still busy after drain_timeout=%g s; closing it",
                self._connector.target,
                config.drain_timeout,
            )
            self._keeper._retire(conn, Reason.STALE_DATA)
        else:
            self._keeper._prepared(conn)

    async def _drain(self, conn: Conn[R]) -> None:
        """Return once the server's earlier messages are in and it has been quiet.

        First a ping: the server answers it after every message it sent before
        it read the ping, so once the pong is in, nothing sent before this
        release is still on its way, however slow the network. Then
        ``drain_quiet_period`` without server data, for what the server sends
        late on its own. What the borrower left unread, and what arrives
        meanwhile, goes to the pool's sink (``on_drained``); each message that
        ``drain_condition`` counts (every message by default) restarts the
        quiet period.
        """
        quiet = self._config.drain_quiet_period
        condition = self._config.drain_condition
        drained = self._keeper._drained

        def sink(event: Any) -> None:
            drained(event)
            if condition is None or condition(event):
                conn.last_data = anyio.current_time()

        self._connector.park(conn.resource, sink)
        await self._connector.ping(conn.resource)
        conn.last_data = anyio.current_time()
        while conn.state is State.DRAINING:
            remaining = conn.last_data + quiet - anyio.current_time()
            if remaining <= 0:
                return
            with anyio.move_on_after(remaining):
                await conn.wake.wait()  # only a retirement sets it while draining
