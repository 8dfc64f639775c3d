"""Ten concurrent round trips through a pool of two connections, on asyncio.

Usage: python examples/echo_asyncio.py ws://127.0.0.1:8765/
"""

from __future__ import annotations

import asyncio
import sys

from anyio_wspool import open_pool


async def main(url: str) -> None:
    async with open_pool(url, max_connections=2) as pool:

        async def ask(n: int) -> str:
            async with pool.connection() as ws:  # was: async with aconnect_ws(url) as ws
                await ws.send_text(f"hello {n}")
                return await ws.receive_text()

        replies = await asyncio.gather(*(ask(n) for n in range(10)))
        print(replies)
        print(pool.stats)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
