"""The soak: 200 borrowers on 20 connections, through a proxy that injects faults.

Not part of the default run: ``nox -s soak`` runs it (``SOAK_SECONDS`` per
backend, 20 by default: about a minute for the three). Every message a
borrower sends carries the number of its lease, and the server echoes it: a
borrower that reads a reply of another lease counts as a failure, as does a
borrower that hangs. Meanwhile a fault task drops, resets, stalls, delays and
cuts connections at the proxy, restarts its listener on the same port, and
makes the server close connections or push messages nobody asked for. At the
end the server sees no connection open, and the file descriptors and tasks of
the process are back where they were.
"""

from __future__ import annotations

import collections
import itertools
import os
import random
from dataclasses import dataclass, field

import anyio
import httpx
import pytest
from httpx_ws import AsyncWebSocketSession, HTTPXWSException

from anyio_wspool import PoolError, WebSocketPool, open_pool

from ._proxy import FaultProxy, serve_proxy
from ._wsserver import WSServer, serve_ws

pytestmark = [pytest.mark.anyio, pytest.mark.soak]

SECONDS = float(os.environ.get("SOAK_SECONDS", "20"))
#: the faults' random sequence (printed in the report, to replay a run)
SEED = int(os.environ.get("SOAK_SEED", random.randrange(1_000_000)))
BORROWERS = 200
CONNECTIONS = 20
#: a borrower taking longer than this for one lease is hung
HANG = 20.0


@dataclass
class Tally:
    borrows: int = 0
    replies: int = 0
    foreign: list[str] = field(default_factory=list)
    pushes_read: int = 0
    left_unread: int = 0
    hangs: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    faults: collections.Counter[str] = field(default_factory=collections.Counter)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 0


async def borrower(
    pool: WebSocketPool[AsyncWebSocketSession],
    n: int,
    leases: itertools.count[int],
    stop: anyio.Event,
    tally: Tally,
) -> None:
    rng = random.Random(SEED + n)
    while not stop.is_set():
        lease = next(leases)
        with anyio.move_on_after(HANG) as hang:
            try:
                async with pool.connection() as ws:
                    for i in range(rng.randint(1, 3)):
                        tag = f"{lease}:{i}"
                        await ws.send_text(tag)
                        with anyio.fail_after(2):
                            reply = await ws.receive_text()
                            while reply.startswith("push"):  # the server's, mid-lease
                                tally.pushes_read += 1
                                reply = await ws.receive_text()
                        if reply != tag:
                            tally.foreign.append(f"lease {lease} sent {tag!r}, read {reply!r}")
                        tally.replies += 1
                    if rng.random() < 0.1:
                        # Leave with a reply in flight: the drain must keep it
                        # from the next borrower.
                        await ws.send_text(f"{lease}:unread")
                        tally.left_unread += 1
                tally.borrows += 1
            except (PoolError, HTTPXWSException, httpx.HTTPError, OSError) as exc:
                tally.errors[type(exc).__name__] += 1
            except TimeoutError:
                tally.errors["TimeoutError (no reply within 2 s)"] += 1
        if hang.cancelled_caught:
            tally.hangs += 1


async def inject_faults(
    server: WSServer, proxy: FaultProxy, stop: anyio.Event, tally: Tally
) -> None:
    rng = random.Random(SEED)
    pushes = itertools.count()
    while not stop.is_set():
        # The pace of the faults, not a wait for an outcome.
        await anyio.sleep(rng.uniform(0.2, 0.8))
        fault = rng.choice(
            [
                "drop",
                "reset",
                "latency",
                "stall",
                "cut",
                "close",
                "push",
                "restart",
                "blackhole",
            ]
        )
        tally.faults[fault] += 1
        if fault == "drop":
            proxy.drop_all(reset=False)
        elif fault == "reset":
            proxy.drop_all(reset=True)
        elif fault == "latency":
            # Below drain_quiet_period: a reply in flight is still drained.
            proxy.set_mode("latency", delay=0.02)
            await anyio.sleep(1.0)
            proxy.set_mode("pass")
        elif fault == "stall":
            # What a stall held back never arrives late: the stalled
            # connections are dropped when it ends.
            proxy.set_mode("stall")
            await anyio.sleep(0.3)
            proxy.drop_all(reset=False)
            proxy.set_mode("pass")
        elif fault == "cut":
            proxy.set_mode("cut_mid_message", direction="down", cut_after=3)
            await anyio.sleep(0.3)
            proxy.set_mode("pass")
        elif fault == "close":
            await server.close_all(rng.choice([1000, 1001, 1011, 1012]), wait=False)
        elif fault == "push":
            await server.push(f"push:{next(pushes)}")
        elif fault == "restart":
            await proxy.stop_listening()
            proxy.drop_all(reset=True)
            await anyio.sleep(0.3)
            await proxy.start_listening()
        elif fault == "blackhole":
            proxy.set_mode("blackhole")
            await anyio.sleep(0.3)
            proxy.drop_all(reset=False)
            proxy.set_mode("pass")
    proxy.set_mode("pass")


@pytest.mark.timeout(SECONDS + 120)
async def test_soak() -> None:
    # What the event loop opens once, at its first use of a socket (uvloop
    # keeps one descriptor more from then on), is not the soak's.
    async with serve_ws() as server, serve_proxy("127.0.0.1", server.port) as proxy:
        async with open_pool(proxy.url) as pool, pool.connection() as ws:
            await ws.send_text("warm-up")
            await ws.receive_text()
    fds = open_fds()
    tasks = len(anyio.get_running_tasks())
    tally = Tally()
    stop = anyio.Event()
    started = anyio.current_time()
    async with serve_ws() as server, serve_proxy("127.0.0.1", server.port) as proxy:
        async with open_pool(
            proxy.url,
            max_connections=CONNECTIONS,
            acquire_timeout=5.0,
            connect_timeout=1.0,
            retry_backoff=0.05,
            retry_backoff_max=0.5,
            drain_on_release=True,
            drain_quiet_period=0.1,
            drain_timeout=1.0,
            close_timeout=1.0,
        ) as pool:
            leases = itertools.count()
            async with anyio.create_task_group() as tg:
                for n in range(BORROWERS):
                    tg.start_soon(borrower, pool, n, leases, stop, tally)
                tg.start_soon(inject_faults, server, proxy, stop, tally)
                await anyio.sleep(SECONDS)  # the soak's length
                stop.set()
            stats = pool.stats
        await server.wait_until(lambda: server.open_connections == 0, timeout=10)
    elapsed = anyio.current_time() - started
    report = (
        f"\nsoak {elapsed:.0f} s (SOAK_SEED={SEED}), "
        f"{BORROWERS} borrowers on {CONNECTIONS} connections: "
        f"{tally.borrows} leases, {tally.replies} replies, {tally.left_unread} left unread, "
        f"{tally.pushes_read} pushes read mid-lease\n"
        f"  faults injected: {sum(tally.faults.values())} {dict(tally.faults)}\n"
        f"  errors seen by borrowers: {sum(tally.errors.values())} {dict(tally.errors)}\n"
        f"  pool: opened {stats.opened}, closed {stats.closed}, discarded {stats.discarded}, "
        f"connect failures {stats.connect_failures}, drained {stats.drained_messages}\n"
        f"  foreign replies {len(tally.foreign)}, hangs {tally.hangs}, "
        f"fds {open_fds() - fds:+d}, tasks {len(anyio.get_running_tasks()) - tasks:+d}"
    )
    print(report)
    assert tally.foreign == [], report
    assert tally.hangs == 0, report
    assert tally.borrows > BORROWERS, report  # the pool kept serving through the faults
    assert open_fds() == fds, report
    assert len(anyio.get_running_tasks()) == tasks, report
