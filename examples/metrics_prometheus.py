"""Export a pool's events as Prometheus metrics, with ``on_event``.

Handshake, wait and lease times become histograms; attempts that failed,
connections retired (by reason) and circuit-breaker trips become counters. The
events carry numbers and names only, so no label ever holds a secret or a
message. ``prometheus_client`` is this example's dependency, not the pool's.

Usage: python examples/metrics_prometheus.py ws://127.0.0.1:8765/
(prints the metrics in Prometheus' text format when the work is done; a real
service would call ``prometheus_client.start_http_server`` instead)
"""

from __future__ import annotations

import sys

import anyio
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from anyio_wspool import (
    AcquiredEvent,
    CircuitOpenedEvent,
    ConnectedEvent,
    ConnectFailedEvent,
    PoolEvent,
    ReleasedEvent,
    RetiredEvent,
    open_pool,
)


class PoolMetrics:
    """The metrics of one or more pools, labelled by each pool's target."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.handshake = Histogram(
            "wspool_handshake_seconds", "Time to open a connection", ["target"], registry=registry
        )
        self.wait = Histogram(
            "wspool_acquire_wait_seconds", "Time a borrower waited", ["target"], registry=registry
        )
        self.lease = Histogram(
            "wspool_lease_seconds", "Time a connection was lent", ["target"], registry=registry
        )
        self.connect_failures = Counter(
            "wspool_connect_failures", "Failed attempts", ["target", "error"], registry=registry
        )
        self.retired = Counter(
            "wspool_retired", "Connections closed", ["target", "reason"], registry=registry
        )
        self.circuit_opened = Counter(
            "wspool_circuit_opened", "Circuit breaker trips", ["target"], registry=registry
        )

    def __call__(self, event: PoolEvent) -> None:
        """The pool's ``on_event``."""
        target = event.target
        if isinstance(event, ConnectedEvent):
            self.handshake.labels(target).observe(event.handshake_seconds)
        elif isinstance(event, AcquiredEvent):
            self.wait.labels(target).observe(event.wait_seconds)
        elif isinstance(event, ReleasedEvent):
            self.lease.labels(target).observe(event.lease_seconds)
        elif isinstance(event, ConnectFailedEvent):
            self.connect_failures.labels(target, event.error_type).inc()
        elif isinstance(event, RetiredEvent):
            self.retired.labels(target, event.reason).inc()
        elif isinstance(event, CircuitOpenedEvent):
            self.circuit_opened.labels(target).inc()


async def main(url: str) -> None:
    registry = CollectorRegistry()
    metrics = PoolMetrics(registry)
    async with open_pool(url, max_connections=3, on_event=metrics) as pool:

        async def ask(n: int) -> None:
            async with pool.connection() as ws:
                await ws.send_text(f"hello {n}")
                await ws.receive_text()

        async with anyio.create_task_group() as tg:
            for n in range(12):
                tg.start_soon(ask, n)
    # Leaving the pool closed its connections: their "retired" events are in.
    print(generate_latest(registry).decode())


if __name__ == "__main__":
    anyio.run(main, sys.argv[1])
