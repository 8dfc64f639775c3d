"""What the runner, the workers and the report share: sizes, records, small statistics.

Kept free of the pool, of httpx and of any event loop, so that the runner (which
only starts processes and writes files) imports nothing it does not need, and
so that the peers' worker can use it from its own virtual environment.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import statistics
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal, TypedDict

Backend = Literal["asyncio", "uvloop", "trio"]
BACKENDS: tuple[Backend, ...] = ("asyncio", "uvloop", "trio")

#: every scenario of the issue, in the order of the report
SCENARIOS: tuple[str, ...] = (
    "overhead",
    "echo",
    "connector",
    "fairness",
    "scale",
    "memory",
    "peers",
    "throughput",
)
#: scenarios that only run on asyncio (the peers use asyncio directly)
ASYNCIO_ONLY = frozenset({"peers"})

#: the payload of every round trip
PAYLOAD = b"x" * 64
#: the line the worker prints its result after, so that stray output cannot confuse the runner
RESULT_MARKER = "@@RESULT@@ "

CLIENT_CPU = 0
SERVER_CPU = 1


@dataclass(frozen=True, slots=True)
class Sizes:
    """How much work each scenario does: the issue's figures, or smaller ones for --quick."""

    overhead_cycles: int = 20_000
    echo_tasks: int = 64
    echo_connections: int = 16
    echo_round_trips: int = 500
    #: connecting per request is ~20x slower: fewer requests give the same precision
    echo_per_request_round_trips: int = 25
    #: the websockets client is ~3x faster than httpx-ws: same work, same precision
    connector_round_trips: int = 500
    fairness_tasks: int = 2_000
    fairness_connections: int = 10
    #: small, medium, large
    scale_idle: tuple[int, int, int] = (10, 1_000, 10_000)
    #: small, large
    scale_waiting: tuple[int, int] = (10, 10_000)
    scale_cycles: int = 20_000
    scale_wait_ops: int = 30_000
    memory_connections: int = 64
    peers_overhead_cycles: int = 5_000
    peers_round_trips: int = 500
    throughput_concurrency: tuple[int, ...] = (1, 4, 16, 64)
    throughput_pool_round_trips: int = 6_400
    throughput_per_request_round_trips: int = 640
    throughput_max_connections: int = 16
    #: each contender's timed work is split into this many segments, run in
    #: alternation with the other contenders' (see _scenarios.interleave)
    segments: int = 5
    repetitions: int = 5
    worker_timeout: float = 600.0


FULL = Sizes()
QUICK = Sizes(
    overhead_cycles=6_000,
    echo_round_trips=45,
    echo_per_request_round_trips=3,
    connector_round_trips=120,
    fairness_tasks=400,
    scale_idle=(10, 1_000, 5_000),
    scale_waiting=(10, 5_000),
    scale_cycles=3_000,
    scale_wait_ops=10_000,
    memory_connections=16,
    peers_overhead_cycles=600,
    peers_round_trips=60,
    throughput_pool_round_trips=640,
    throughput_per_request_round_trips=96,
    segments=3,
    repetitions=3,
    worker_timeout=90.0,
)


def sizes_for(quick: bool) -> Sizes:
    return QUICK if quick else FULL


def sizes_dict(sizes: Sizes) -> dict[str, object]:
    return asdict(sizes)


class Measurement(TypedDict):
    """One figure: what ``contender`` scored on ``metric`` in one repetition."""

    contender: str
    metric: str
    value: float


@dataclass(slots=True)
class Recorder:
    """Collects the measurements of one scenario in a worker, and notes for the report."""

    scenario: str
    measurements: list[Measurement] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    #: wall-clock seconds the scenario took in the worker, set up and torn down included
    seconds: float = 0.0

    def add(self, contender: str, metric: str, value: float) -> None:
        self.measurements.append(Measurement(contender=contender, metric=metric, value=value))

    def note(self, key: str, text: str) -> None:
        self.notes[key] = text

    def fail(self, error: str) -> None:
        """The scenario stopped with ``error``: its figures are not reported."""
        self.error = error
        self.measurements.clear()

    def emit(self) -> None:
        """Print the result line that the runner reads."""
        payload = {
            "scenario": self.scenario,
            "error": self.error,
            "seconds": self.seconds,
            "measurements": self.measurements,
            "notes": self.notes,
        }
        sys.stdout.write(RESULT_MARKER + json.dumps(payload) + "\n")
        sys.stdout.flush()


def rotate(items: Sequence[str], by: int) -> list[str]:
    """``items`` starting at position ``by``: each repetition runs its contenders in turn first."""
    if not items:
        return []
    shift = by % len(items)
    return [*items[shift:], *items[:shift]]


def percentile(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` quantile by the nearest-rank method (no interpolation)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def pin_to_cpu(cpu: int) -> bool:
    """Pin this process to ``cpu`` when the platform allows it and that CPU is ours."""
    if not hasattr(os, "sched_setaffinity"):
        return False
    with contextlib.suppress(OSError):
        if cpu in os.sched_getaffinity(0) and len(os.sched_getaffinity(0)) > 1:
            os.sched_setaffinity(0, {cpu})
            return True
    return False
