"""Count the CPU instructions of one lease on the pool's hot paths (valgrind's cachegrind).

Timings on a shared machine move by ±10 % from one run to the next, so a change
worth 2 % cannot be seen in them. The number of instructions executed does not
depend on the neighbours: this script runs a path twice under cachegrind, with
two different numbers of leases, and divides the difference by the number of
leases added, so that start-up (imports, the event loop) cancels out.

Paths, on the generic connector with a fake resource (only the pool is measured):

* ``contended``: 64 tasks share 16 connections, each lease passes one checkpoint
  of the backend's own (scenario 8's shape: nearly every lease waits and is
  handed a connection by the lease before it);
* ``idle``: one task takes and gives back an idle connection (scenario 1).

Usage::

    python benchmarks/instructions.py [contended|idle] [--backend asyncio|uvloop|trio]

Needs ``valgrind`` (Debian's package). Instructions are not time (cache misses
and branch mispredictions are not counted), but each one saved is saved on
every machine: this is what guided issue 18's changes, and the timed
scenarios are what show their effect.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable

import anyio
from _scenarios import _native_checkpoint, fake_resource, run_on

from anyio_wspool import open_pool

TASKS, CONNECTIONS = 64, 16
#: leases per task in the short and the long run of each path
ROUNDS = {"contended": (20, 220), "idle": (200, 2_200)}


async def _contended(rounds: int) -> None:
    checkpoint = _native_checkpoint()
    async with open_pool(connect=fake_resource, max_connections=CONNECTIONS) as pool:
        resources = [await pool.acquire() for _ in range(CONNECTIONS)]
        for resource in resources:
            await pool.release(resource)
        lease = pool.connection

        async def borrower() -> None:
            for _ in range(rounds):
                async with lease():
                    await checkpoint()

        async with anyio.create_task_group() as tg:
            for _ in range(TASKS):
                tg.start_soon(borrower)


async def _idle(rounds: int) -> None:
    async with open_pool(connect=fake_resource, max_connections=1) as pool:
        lease = pool.connection
        for _ in range(rounds):
            async with lease():
                pass


PATHS: dict[str, Callable[[int], Awaitable[None]]] = {"contended": _contended, "idle": _idle}


def _count(path: str, backend: str, rounds: int) -> int:
    command = [
        "valgrind",
        "--tool=cachegrind",
        "--cache-sim=no",
        "--cachegrind-out-file=/dev/null",
        sys.executable,
        __file__,
        "--run",
        path,
        "--backend",
        backend,
        "--rounds",
        str(rounds),
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0"}  # the same dict layouts in both runs
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    match = re.search(r"I\s+refs:\s+([\d,]+)", result.stderr)
    if match is None:
        raise RuntimeError(f"no instruction count in valgrind's output:\n{result.stderr}")
    return int(match.group(1).replace(",", ""))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", choices=sorted(PATHS), nargs="?", default="contended")
    parser.add_argument("--backend", choices=("asyncio", "uvloop", "trio"), default="asyncio")
    parser.add_argument("--run", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run:  # inside valgrind
        run_on(args.backend, PATHS[args.path], args.rounds)
        return
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (Debian: apt-get install valgrind)")
    short, long = ROUNDS[args.path]
    leases = (long - short) * (TASKS if args.path == "contended" else 1)
    added = _count(args.path, args.backend, long) - _count(args.path, args.backend, short)
    print(f"{args.path} on {args.backend}: {added / leases:,.0f} instructions a lease")


if __name__ == "__main__":
    main()
