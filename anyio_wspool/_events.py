"""What ``on_event`` is given: one small frozen object per thing that happened.

Every event names the pool's target (its URI with secrets masked, or the
connector's name) and carries numbers and names only: never a message, a
header, a URL with its secrets, nor an error's text (only its type's name).
The pool's callback task gives them to ``on_event`` in the order they
happened; a connection's reader never runs the callback and never waits for it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = (
    "AcquiredEvent",
    "CircuitClosedEvent",
    "CircuitOpenedEvent",
    "ConnectFailedEvent",
    "ConnectedEvent",
    "PoolEvent",
    "ReleasedEvent",
    "RetiredEvent",
)


@dataclass(frozen=True, slots=True)
class PoolEvent:
    """The base of every event: which pool it is about."""

    #: where the pool connects, secrets masked (``pool.uri``, or the connector's name)
    target: str


@dataclass(frozen=True, slots=True)
class ConnectedEvent(PoolEvent):
    """A connection opened: its handshake (and ``on_connect``) succeeded."""

    #: seconds from the start of the successful attempt to the open connection
    handshake_seconds: float
    #: which attempt succeeded (1 for the first)
    attempt: int


@dataclass(frozen=True, slots=True)
class ConnectFailedEvent(PoolEvent):
    """One connection attempt failed."""

    #: the error's type, qualified by its module (``httpx.ConnectError``); never its text
    error_type: str
    #: which attempt of this connection failed (1 for the first)
    attempt: int
    #: whether another attempt follows (False: the connection is given up)
    retrying: bool


@dataclass(frozen=True, slots=True)
class AcquiredEvent(PoolEvent):
    """A borrower was lent a connection."""

    #: seconds the borrower waited (0.0 when an idle connection was there)
    wait_seconds: float
    #: whether the connection had been lent before
    reused: bool


@dataclass(frozen=True, slots=True)
class ReleasedEvent(PoolEvent):
    """A lease ended: the connection came back (to be kept, or closed)."""

    #: seconds from the lend to the give-back
    lease_seconds: float
    #: whether it came back to be closed (an error in the block, ``discard=True``)
    discarded: bool


@dataclass(frozen=True, slots=True)
class RetiredEvent(PoolEvent):
    """An open connection was closed by the pool (or found closed by the server).

    ``reason`` is one of ``idle``, ``expired``, ``ping_failed``,
    ``stale_data``, ``error_in_block``, ``server_closed``, ``invalidated``,
    ``pool_closed``, ``discarded``, ``release_failed``, ``make_room``,
    ``resized`` or ``failed``.
    """

    reason: str
    #: the server's close code, when the server closed it (None otherwise)
    close_code: int | None
    #: seconds the connection was open
    age_seconds: float


@dataclass(frozen=True, slots=True)
class CircuitOpenedEvent(PoolEvent):
    """The circuit breaker opened: borrowers that need a new connection fail at once."""

    #: failures in a row that opened it
    failures: int
    #: the last failure's error type (see :class:`ConnectFailedEvent`)
    error_type: str
    #: seconds until one probe connection may try again (``circuit_reset``)
    reset_seconds: float


@dataclass(frozen=True, slots=True)
class CircuitClosedEvent(PoolEvent):
    """The circuit breaker closed: a probe connection opened."""

    #: seconds the circuit was open
    open_seconds: float


for _cls in (
    PoolEvent,
    ConnectedEvent,
    ConnectFailedEvent,
    AcquiredEvent,
    ReleasedEvent,
    RetiredEvent,
    CircuitOpenedEvent,
    CircuitClosedEvent,
):
    _cls.__module__ = "anyio_wspool"
del _cls


def error_type(error: BaseException) -> str:
    """``module.Name`` of an error's type, the module cut at its first private part."""
    cls = type(error)
    parts = []
    for part in cls.__module__.split("."):
        if part.startswith("_"):
            break
        parts.append(part)
    if parts == ["builtins"]:
        return cls.__qualname__
    return ".".join([*parts, cls.__qualname__])
