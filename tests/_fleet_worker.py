"""One process of a fleet: a pool over a shared capacity, for tests/test_shared_processes.py.

Run as ``python -m tests._fleet_worker MODE --ws URL --redis URL --key KEY ...``.
It says what happens as JSON lines on stdout, and takes orders as lines on
stdin:

- ``borrow``: says ``ready``, waits for ``go``, then runs ``--tasks`` borrowers
  of ``--rounds`` round trips each (``--fresh``: each borrows a new connection;
  ``--churn``: every third lease is closed instead of given back), and says
  ``served`` with the count.
- ``hold``: borrows ``--tasks`` connections, says ``held``, keeps them until
  killed.
- ``idle``: borrows ``--tasks`` connections and gives them back (idle), says
  ``idle``, waits for ``exit``, says ``stats`` with what the pool closed.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import anyio

from anyio_wspool import RedisCapacity, open_pool


def say(event: str, **what: Any) -> None:
    print(json.dumps({"event": event, **what}), flush=True)


async def order(stdin: Any, expected: str) -> None:
    line = await stdin.readline()
    if line.strip() != expected:
        raise SystemExit(f"expected {expected!r} on stdin, got {line!r}")


async def main(args: argparse.Namespace) -> None:
    capacity = RedisCapacity(args.redis, key=args.key, limit=args.limit, lease_ttl=args.lease_ttl)
    stdin = anyio.wrap_file(sys.stdin)
    async with open_pool(
        args.ws,
        max_connections=args.max_connections,
        shared_capacity=capacity,
        acquire_timeout=args.acquire_timeout,
        cleanup_interval=args.cleanup_interval,
        idle_timeout=None,
    ) as pool:
        if args.mode == "borrow":
            served = 0

            async def borrower(number: int) -> None:
                nonlocal served
                for round_ in range(args.rounds):
                    ws = await (pool.acquire_new() if args.fresh else pool.acquire())
                    await ws.send_text("x")
                    assert await ws.receive_text() == "x"
                    await pool.release(ws, discard=args.churn and (number + round_) % 3 == 0)
                    served += 1

            say("ready")
            await order(stdin, "go")
            async with anyio.create_task_group() as tg:
                for number in range(args.tasks):
                    tg.start_soon(borrower, number)
            say("served", count=served, opened=pool.stats.opened)
        elif args.mode == "hold":
            held = [await pool.acquire() for _ in range(args.tasks)]
            say("held", count=len(held))
            await anyio.sleep_forever()
        elif args.mode == "idle":
            held = [await pool.acquire() for _ in range(args.tasks)]
            for ws in held:
                await pool.release(ws)
            say("idle", count=pool.stats.idle)
            await order(stdin, "exit")
            say("stats", closed=pool.stats.closed, idle=pool.stats.idle)


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["borrow", "hold", "idle"])
    parser.add_argument("--backend", default="asyncio")
    parser.add_argument("--ws", required=True)
    parser.add_argument("--redis", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--limit", type=int, required=True)
    parser.add_argument("--lease-ttl", type=float, default=30.0)
    parser.add_argument("--max-connections", type=int, default=50)
    parser.add_argument("--acquire-timeout", type=float, default=30.0)
    parser.add_argument("--cleanup-interval", type=float, default=5.0)
    parser.add_argument("--tasks", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--fresh", action="store_true")
    parser.add_argument("--churn", action="store_true")
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse()
    backend, _, flavour = arguments.backend.partition("+")
    options = {"use_uvloop": True} if flavour == "uvloop" else {}
    anyio.run(main, arguments, backend=backend, backend_options=options)
