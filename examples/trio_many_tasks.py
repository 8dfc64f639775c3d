"""Many trio tasks share one pool: 200 conversations over 4 connections.

Each task borrows a connection for one conversation (three round trips) and
gives it back; tasks beyond the pool's capacity wait their turn, first come,
first served.

Usage: python examples/trio_many_tasks.py ws://127.0.0.1:8765/
"""

from __future__ import annotations

import sys

import trio

from anyio_wspool import open_pool


async def main(url: str) -> None:
    replies = 0
    async with open_pool(url, max_connections=4) as pool:

        async def converse(n: int) -> None:
            nonlocal replies
            async with pool.connection() as ws:
                for turn in range(3):
                    await ws.send_text(f"task {n} turn {turn}")
                    assert await ws.receive_text() == f"task {n} turn {turn}"
                    replies += 1

        async with trio.open_nursery() as nursery:
            for n in range(200):
                nursery.start_soon(converse, n)
        stats = pool.stats
        print(f"{replies} replies over {stats.opened} connections ({stats.reused} reuses)")


if __name__ == "__main__":
    trio.run(main, sys.argv[1])
