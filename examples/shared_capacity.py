"""One limit for a whole fleet of processes, held in Redis: ``shared_capacity=``.

Run this program in as many processes as you like (on as many machines):
together they never hold more than ``LIMIT`` connections to the server, while
each pool may open up to 8 on its own. Each connection holds a slot in Redis
from before its handshake until it is closed; lending and giving back never
touch Redis. A process killed without closing gives its slots back after
``lease_ttl`` seconds.

Needs the extra: ``pip install 'anyio-wspool[redis]'`` and a Redis server.

Usage: python examples/shared_capacity.py ws://127.0.0.1:8765/ redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import sys

import anyio

from anyio_wspool import RedisCapacity, open_pool

LIMIT = 3


async def main(url: str, redis_url: str) -> None:
    capacity = RedisCapacity(redis_url, key="example:echo", limit=LIMIT, lease_ttl=10)
    async with open_pool(url, max_connections=8, shared_capacity=capacity) as pool:

        async def request(n: int) -> None:
            async with pool.connection() as ws:
                await ws.send_text(f"request {n}")
                assert await ws.receive_text() == f"request {n}"

        async with anyio.create_task_group() as tg:
            for n in range(40):
                tg.start_soon(request, n)
        stats = pool.stats
        print(
            f"40 requests over {stats.opened} connections; "
            f"shared limit {stats.shared_limit}, {stats.shared_in_use} slots in use in the fleet"
        )


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2])
