"""The circuit breaker (``failure_threshold``): stop opening connections that keep failing.

A failure is a connection whose every attempt failed, or one that the server
closed within ``failure_window`` seconds of opening (a server that accepts and
then hangs up at once). After ``failure_threshold`` of them in a row the
circuit *opens*: for ``circuit_reset`` seconds the pool starts no connection,
and a borrower that would need a new one fails at once with
:class:`~._errors.PoolUnavailable` instead of waiting out its own timeout.
Connections already open keep being lent. Then the circuit is *half open*: one
probe connection is started (for the next borrower, or for
``min_connections``) while every other borrower that needs a new connection
still fails at once. If the probe opens, the circuit *closes*, on probation: a
single failure before some connection has lived ``failure_window`` seconds
opens it again. If the probe fails, it opens again for ``circuit_reset``.

A connection that lives ``failure_window`` seconds resets the count. The pool
reports both kinds of evidence; this class is the synchronous state machine
and never waits for anything.
"""

from __future__ import annotations

import math
from enum import StrEnum

__all__ = ("Circuit", "CircuitState")


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Circuit:
    """The breaker of one pool."""

    __slots__ = (
        "failures",
        "last_error",
        "last_failure_at",
        "last_success_at",
        "opened_at",
        "reset",
        "reset_at",
        "state",
        "threshold",
        "window",
    )

    def __init__(self, threshold: int, window: float, reset: float) -> None:
        self.threshold = threshold
        self.window = window
        self.reset = reset
        self.state = CircuitState.CLOSED
        #: failures in a row (since the last connection that lived ``window`` s)
        self.failures = 0
        self.last_error: Exception | None = None
        self.last_failure_at = -math.inf
        #: the latest moment at which a connection was seen to have lived ``window`` s
        self.last_success_at = -math.inf
        self.opened_at = 0.0
        #: when an open circuit lets a probe through
        self.reset_at = math.inf

    def lived(self, moment: float) -> None:
        """A connection was still open ``window`` seconds after it opened, at ``moment``."""
        if moment > self.last_success_at:
            self.last_success_at = moment

    def failed(self, now: float, error: Exception, probe: bool = False) -> bool:
        """Count a failure; True if it opens the circuit.

        While half open, only the probe's failure counts: another connection
        failing then was started before the circuit opened.
        """
        if self.last_success_at > self.last_failure_at:
            self.failures = 0  # a connection lived long enough since the last failure
        self.failures += 1
        self.last_failure_at = now
        self.last_error = error
        if self.state is CircuitState.OPEN or (self.state is CircuitState.HALF_OPEN and not probe):
            return False  # a connection started before it opened
        if self.state is CircuitState.HALF_OPEN or self.failures >= self.threshold:
            self.state = CircuitState.OPEN
            self.opened_at = now
            self.reset_at = now + self.reset
            return True
        return False

    def blocks(self, now: float) -> bool:
        """Whether a borrower that needs a new connection must fail now."""
        state = self.state
        if state is CircuitState.CLOSED:
            return False
        return state is CircuitState.HALF_OPEN or now < self.reset_at

    def may_start(self, now: float) -> bool:
        """Whether a connection may be started now; the first one after the reset is the probe.

        The caller starts it when this returns True (and marks it as the probe
        if the state became half open).
        """
        state = self.state
        if state is CircuitState.CLOSED:
            return True
        if state is CircuitState.OPEN and now >= self.reset_at:
            self.state = CircuitState.HALF_OPEN
            return True
        return False

    def probe_failed_quietly(self) -> None:
        """The probe was abandoned (the pool is closing, invalidated): let another through."""
        if self.state is CircuitState.HALF_OPEN:
            self.state = CircuitState.OPEN

    def probe_opened(self, now: float) -> float:
        """The probe connection opened: close the circuit; return how long it was open.

        On probation: one more failure before a connection lives ``window``
        seconds opens it again.
        """
        self.state = CircuitState.CLOSED
        self.failures = self.threshold - 1
        self.last_failure_at = now
        self.reset_at = math.inf
        return now - self.opened_at
