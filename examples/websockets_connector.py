"""The generic core around another client: the `websockets` library's asyncio client.

`open_pool(connect=...)` takes any zero-argument callable that returns an async
context manager yielding the resource; the pool opens, lends, reuses and closes
it exactly as it does httpx-ws sessions (asyncio only: `websockets` is asyncio).

Usage: python examples/websockets_connector.py ws://127.0.0.1:8765/
"""

from __future__ import annotations

import asyncio
import sys

from websockets.asyncio.client import connect

from anyio_wspool import open_pool


async def main(url: str) -> None:
    async with open_pool(connect=lambda: connect(url), max_connections=4) as pool:

        async def ask(n: int) -> str | bytes:
            async with pool.connection() as ws:
                await ws.send(f"hello {n}")
                return await ws.recv()

        print(await asyncio.gather(*(ask(n) for n in range(20))))
        print(pool.stats)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
