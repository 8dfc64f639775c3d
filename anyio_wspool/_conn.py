"""One pooled connection: its states, the moves between them, and why it ends.

A connection is a small state machine. Its record, :class:`Conn`, is plain
data; the pool changes its state synchronously (never across an ``await``),
and the connection's own host task (:mod:`._host`) does its I/O.

::

    CONNECTING ──► IDLE ◄──► LENT ──► DRAINING ──► IDLE or LENT
        │            │         │          │
        └────────────┴─────────┴──────────┴──► CLOSING ──► CLOSED

A connection that opens goes straight to a waiting borrower (LENT) or to the
idle set; one that comes back goes to the next waiter (LENT again), to DRAINING
when ``drain_on_release`` or ``on_release`` has work to do first, or to IDLE.
Any live state may be retired (CLOSING), always with a :class:`Reason`; CLOSED
is reached only when the host task has left the connection's context, and only
then is its share of the capacity given back.
"""

from __future__ import annotations

import math
from enum import IntEnum, StrEnum
from typing import Generic, TypeVar

import anyio

__all__ = ("TRANSITIONS", "Conn", "Reason", "State")

R = TypeVar("R")


class State(IntEnum):
    CONNECTING = 0
    IDLE = 1
    LENT = 2
    DRAINING = 3
    CLOSING = 4
    CLOSED = 5


#: every move a connection may make; the pool asserts it on each change
TRANSITIONS: dict[State, frozenset[State]] = {
    # CONNECTING -> DRAINING: with drain_on_release, before the first lease.
    State.CONNECTING: frozenset({State.IDLE, State.LENT, State.DRAINING, State.CLOSING}),
    State.IDLE: frozenset({State.LENT, State.CLOSING}),
    # LENT -> LENT: given back and handed straight to the next waiter.
    State.LENT: frozenset({State.IDLE, State.LENT, State.DRAINING, State.CLOSING}),
    State.DRAINING: frozenset({State.IDLE, State.LENT, State.CLOSING}),
    State.CLOSING: frozenset({State.CLOSED}),
    State.CLOSED: frozenset(),
}


class Reason(StrEnum):
    """Why a connection was retired: the values are what logs (and events) say."""

    #: idle for longer than ``idle_timeout``
    IDLE = "idle"
    #: older than its share of ``max_lifetime``
    EXPIRED = "expired"
    #: no pong to the ``check_on_acquire`` ping in time
    PING_FAILED = "ping_failed"
    #: a released connection kept receiving (or its hook kept running) past ``drain_timeout``
    STALE_DATA = "stale_data"
    #: its borrower's block raised or was cancelled: its state is unknown
    ERROR_IN_BLOCK = "error_in_block"
    #: the server closed it, or it broke (keep-alive failed, socket error)
    SERVER_CLOSED = "server_closed"
    #: ``invalidate()`` was called after it opened
    INVALIDATED = "invalidated"
    #: the pool closed
    POOL_CLOSED = "pool_closed"
    #: its borrower gave it back with ``release(conn, discard=True)``
    DISCARDED = "discarded"
    #: ``on_release`` raised on it
    RELEASE_FAILED = "release_failed"
    #: closed to make room for a borrower who asked for a new connection
    MAKE_ROOM = "make_room"
    #: ``max_connections`` was lowered
    RESIZED = "resized"
    #: its context failed in the background (the connector's own task raised)
    FAILED = "failed"
    #: it never opened: every attempt failed
    CONNECT_FAILED = "connect_failed"
    #: it never opened: the circuit breaker opened before its attempt began
    CIRCUIT_OPEN = "circuit_open"
    #: idle, given up for other processes waiting at the shared limit
    #: (``shared_capacity``), or left without a shared slot
    SHARED_LIMIT = "shared_limit"

    @property
    def discarded(self) -> bool:
        """Whether it counts in ``PoolStats.discarded``: closed for its borrower or its health."""
        return self in _DISCARDED


_DISCARDED = frozenset(
    {
        Reason.PING_FAILED,
        Reason.STALE_DATA,
        Reason.ERROR_IN_BLOCK,
        Reason.SERVER_CLOSED,
        Reason.DISCARDED,
        Reason.RELEASE_FAILED,
        Reason.FAILED,
    }
)


class Conn(Generic[R]):
    """One connection's record: its state and what its host task needs."""

    __slots__ = (
        "attempt",
        "attempt_started",
        "background",
        "close_code",
        "delay",
        "died_at",
        "expires_at",
        "generation",
        "idle_since",
        "in_flight",
        "last_data",
        "lease",
        "lent_at",
        "lifetime",
        "listed",
        "opened",
        "opened_at",
        "priming",
        "probe",
        "reason",
        "resource",
        "scope",
        "server_closed",
        "state",
        "uses",
        "wake",
    )

    #: set by the host task once the connector yielded it; read only after ``opened``
    resource: R

    def __init__(
        self, wake: anyio.Event, generation: int, *, background: bool, delay: float = 0.0
    ) -> None:
        self.state = State.CONNECTING
        #: the pool's generation when this connection was started (see invalidate())
        self.generation = generation
        #: opened for no borrower in particular (min_connections, prewarm)
        self.background = background
        #: seconds to wait before the first attempt (background replacements back off)
        self.delay = delay
        #: drawn once, 90-100 % of max_lifetime; the deadline it gives
        self.lifetime = math.inf
        self.expires_at = math.inf
        self.idle_since = 0.0
        #: when the last server data counted by drain_condition arrived (draining)
        self.last_data = 0.0
        self.opened = False
        self.opened_at = 0.0
        #: leases granted on it so far (counted when it is handed to its
        #: borrower): 0 until its first lease
        self.uses = 0
        #: new, and being drained or prepared before its first lease: it counts
        #: as being opened (the pool's _priming) until then
        self.priming = False
        #: lent by acquire(), and so listed for release()
        self.listed = False
        #: incremented at each lend, so that a lease can tell it is still current
        self.lease = 0
        self.reason = Reason.POOL_CLOSED
        #: the attempt under way (1, 2, ...) and when it started, for on_event
        self.attempt = 0
        self.attempt_started = 0.0
        #: an attempt is under way at the server (its handshake slot taken):
        #: not stopped when the circuit breaker opens, unlike one still queued
        self.in_flight = False
        #: when it was last lent, for on_event (-1: no lease being observed)
        self.lent_at = -1.0
        #: the circuit breaker's probe (the one connection allowed after circuit_reset)
        self.probe = False
        #: recorded when it is retired: whether the server (or the network) had
        #: closed it already, and the server's close code if it sent one
        self.server_closed = False
        self.close_code: int | None = None
        #: when the resource was found dead (closed by the server, broken); 0: not yet
        self.died_at = 0.0
        #: what a retirement must stop: connecting, backing off, on_connect,
        #: on_release, the drain, a check_on_acquire ping (None otherwise)
        self.scope: anyio.CancelScope | None = None
        #: set to make the host task look at the connection again
        self.wake = wake
