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

And, in the contended shape, two references for the pool's figure:

* ``queue``: the backend's own queue called directly (``asyncio.Queue``'s
  ``get()`` and ``put_nowait()``, a trio memory channel's ``receive()`` and
  ``send_nowait()``): what the echo target compares the pool with;
* ``fifo-block`` (asyncio, uvloop): the least a lease of the pool's shape
  does, a first-come, first-served hand-off behind an ``async with`` block,
  with no cancellation check, no deadline and no bookkeeping.

Usage::

    python benchmarks/instructions.py [contended|idle|queue|fifo-block] \
        [--backend asyncio|uvloop|trio]

Needs ``valgrind`` (Debian's package). Instructions are not time (cache misses
and branch mispredictions are not counted), but each one saved is saved on
every machine: this is what guided issue 18's changes, and the timed
scenarios are what show their effect.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager as ACM
from typing import Any

import anyio
from _scenarios import NativeQueue, _native_checkpoint, fake_resource, run_on

from anyio_wspool import open_pool

TASKS, CONNECTIONS = 64, 16
#: leases per task in the short and the long run of each path
ROUNDS = {"contended": (20, 220), "idle": (200, 2_200), "queue": (20, 220), "fifo-block": (20, 220)}


async def _contend(rounds: int, lease: Callable[[], ACM[object]]) -> None:
    """The contended shape around any ``lease``: 64 tasks, one checkpoint inside each."""
    checkpoint = _native_checkpoint()

    async def borrower() -> None:
        for _ in range(rounds):
            async with lease():
                await checkpoint()

    async with anyio.create_task_group() as tg:
        for _ in range(TASKS):
            tg.start_soon(borrower)


async def _contended(rounds: int) -> None:
    async with open_pool(connect=fake_resource, max_connections=CONNECTIONS) as pool:
        resources = [await pool.acquire() for _ in range(CONNECTIONS)]
        for resource in resources:
            await pool.release(resource)
        await _contend(rounds, pool.connection)


async def _idle(rounds: int) -> None:
    async with open_pool(connect=fake_resource, max_connections=1) as pool:
        lease = pool.connection
        for _ in range(rounds):
            async with lease():
                pass


async def _queue(rounds: int) -> None:
    """Reference: the backend's own queue, called directly (``get()``, ``put_nowait()``)."""
    checkpoint = _native_checkpoint()
    queue: NativeQueue[object] = NativeQueue(CONNECTIONS)
    for _ in range(CONNECTIONS):
        queue.put(object())
    get, put = queue._get, queue._put  # (no wrapper of the benchmarks' own in between)

    async def borrower() -> None:
        for _ in range(rounds):
            item = await get()
            await checkpoint()
            put(item)

    async with anyio.create_task_group() as tg:
        for _ in range(TASKS):
            tg.start_soon(borrower)


class _FifoBlock:
    """Reference: a first-come, first-served hand-off behind an ``async with`` block.

    The least a lease with the pool's shape can do: one object and one
    coroutine a lease, a future for a waiter, the item handed to the first
    waiter on exit. No cancellation check, no deadline, no bookkeeping. (The
    hand-off of ``_scenarios.FifoQueue``, written out in the block: calling
    its ``get()`` would add a second coroutine a lease.)
    """

    __slots__ = ("_item", "_queue")

    def __init__(self, queue: tuple[deque[object], deque[Any], Any]) -> None:
        self._queue = queue
        self._item: object = None

    async def __aenter__(self) -> object:
        items, getters, loop = self._queue
        if items and not getters:
            self._item = item = items.popleft()
            return item
        getter = loop.create_future()
        getters.append(getter)
        self._item = item = await getter
        return item

    async def __aexit__(self, *exc_info: object) -> None:
        items, getters, _ = self._queue
        while getters:
            getter = getters.popleft()
            if not getter.done():
                getter.set_result(self._item)
                return
        items.append(self._item)


async def _fifo_block(rounds: int) -> None:
    getters: deque[asyncio.Future[object]] = deque()
    queue = (deque(object() for _ in range(CONNECTIONS)), getters, asyncio.get_running_loop())
    await _contend(rounds, lambda: _FifoBlock(queue))


PATHS: dict[str, Callable[[int], Awaitable[None]]] = {
    "contended": _contended,
    "idle": _idle,
    "queue": _queue,
    "fifo-block": _fifo_block,
}
#: the references run on asyncio only (uvloop included)
ASYNCIO_ONLY = ("fifo-block",)


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
    if args.path in ASYNCIO_ONLY and args.backend == "trio":
        sys.exit(f"{args.path} is written for asyncio (and uvloop)")
    leases = (long - short) * (1 if args.path == "idle" else TASKS)
    added = _count(args.path, args.backend, long) - _count(args.path, args.backend, short)
    print(f"{args.path} on {args.backend}: {added / leases:,.0f} instructions a lease")


if __name__ == "__main__":
    main()
