"""What a pool reports about itself: :class:`PoolStats`, and the counters behind it."""

from __future__ import annotations

from dataclasses import dataclass, fields

__all__ = ("Counters", "PoolStats", "describe_gauges")


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A snapshot of a pool's gauges and counters.

    Gauges say what the pool holds at the moment of the snapshot;
    ``connecting + idle + in_use + draining + closing`` never exceeds
    ``max_connections`` (a connection keeps its share of the capacity until its
    socket is closed, so the server never sees more than ``max_connections``).
    Counters count events since the pool was opened.
    """

    #: capacity: connections connecting, idle, lent, draining or closing, at most
    max_connections: int
    #: connections whose handshake is in progress
    connecting: int
    #: connections ready to be lent
    idle: int
    #: connections lent to a borrower
    in_use: int
    #: released connections whose stale server data is being drained
    draining: int
    #: connections whose closing handshake is in progress
    closing: int
    #: borrowers waiting for a connection
    waiting: int
    #: the circuit breaker: ``closed`` (or no breaker), ``open`` or ``half_open``
    circuit: str
    #: ``shared_capacity``: the limit shared across processes (None: no shared capacity)
    shared_limit: int | None
    #: ``shared_capacity``: the slots held by every process together, as last
    #: seen in Redis (None: not seen yet, or no shared capacity)
    shared_in_use: int | None
    #: connections whose handshake succeeded
    opened: int
    #: opened connections that have been closed since
    closed: int
    #: connection attempts that failed (each attempt counts)
    connect_failures: int
    #: leases granted
    acquired: int
    #: leases that were given a connection lent before
    reused: int
    #: connections closed because of their borrower or their health (error in
    #: the block, ``release(discard=True)``, found dead, failed ping, stale data)
    discarded: int
    #: borrowers that gave up after ``acquire_timeout``
    acquire_timeouts: int
    #: borrowers turned away at once because ``max_waiting`` were waiting
    overloaded: int
    #: server messages read by the pool on idle or released connections
    drained_messages: int
    #: times the circuit breaker opened
    circuit_opened: int
    #: borrowers turned away at once because the circuit breaker was open, or
    #: because Redis failed (``shared_capacity``)
    unavailable: int


PoolStats.__module__ = "anyio_wspool"


@dataclass(slots=True)
class Counters:
    """The pool's running counters: the counter fields of :class:`PoolStats`, mutable.

    ``acquired`` and ``reused`` are those of the connections that are gone: a
    live connection counts its own leases (``Conn.uses``, one addition a lease),
    and :attr:`WebSocketPool.stats` adds them up.
    """

    opened: int = 0
    closed: int = 0
    connect_failures: int = 0
    acquired: int = 0
    reused: int = 0
    discarded: int = 0
    acquire_timeouts: int = 0
    overloaded: int = 0
    drained_messages: int = 0
    circuit_opened: int = 0
    unavailable: int = 0


#: the names of the counter fields, in PoolStats' order
COUNTER_NAMES = tuple(field.name for field in fields(Counters))


def describe_gauges(stats: PoolStats) -> str:
    """The gauges in one line, for ``repr(pool)`` and error messages."""
    return (
        f"max_connections={stats.max_connections}: {stats.connecting} connecting, "
        f"{stats.idle} idle, {stats.in_use} in use, {stats.draining} draining, "
        f"{stats.closing} closing | {stats.waiting} waiting"
        + ("" if stats.circuit == "closed" else f" | circuit {stats.circuit}")
    )
