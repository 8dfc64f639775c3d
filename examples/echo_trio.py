"""The same program on trio: the pool's code does not change.

Usage: python examples/echo_trio.py ws://127.0.0.1:8765/
"""

from __future__ import annotations

import sys

import trio

from anyio_wspool import open_pool


async def main(url: str) -> None:
    replies: list[str] = []
    async with open_pool(url, max_connections=2) as pool:

        async def ask(n: int) -> None:
            async with pool.connection() as ws:
                await ws.send_text(f"hello {n}")
                replies.append(await ws.receive_text())

        async with trio.open_nursery() as nursery:
            for n in range(10):
                nursery.start_soon(ask, n)
        print(sorted(replies))
        print(pool.stats)


if __name__ == "__main__":
    trio.run(main, sys.argv[1])
