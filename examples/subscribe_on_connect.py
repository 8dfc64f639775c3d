"""Subscribe once per connection with ``on_connect``, not once per request.

``on_connect`` runs on each new connection before it is first lent: log in,
subscribe, set the session up. Here it sends a subscription and waits for the
server's acknowledgement (the echo server answers with the same text). If it
fails, the connection fails like a failed handshake and is retried.

Usage: python examples/subscribe_on_connect.py ws://127.0.0.1:8765/
"""

from __future__ import annotations

import sys

import anyio
from httpx_ws import AsyncWebSocketSession

from anyio_wspool import open_pool

subscriptions = 0


async def subscribe(ws: AsyncWebSocketSession) -> None:
    global subscriptions
    await ws.send_json({"op": "subscribe", "channel": "quotes"})
    acknowledgement = await ws.receive_json()
    if acknowledgement.get("op") != "subscribe":
        raise RuntimeError(f"subscription refused: {acknowledgement!r}")
    subscriptions += 1


async def main(url: str) -> None:
    async with open_pool(url, max_connections=3, on_connect=subscribe) as pool:

        async def request(n: int) -> None:
            async with pool.connection() as ws:  # subscribed already
                await ws.send_json({"op": "quote", "n": n})
                assert (await ws.receive_json())["n"] == n

        async with anyio.create_task_group() as tg:
            for n in range(30):
                tg.start_soon(request, n)
        print(f"30 requests, {subscriptions} subscriptions, {pool.stats.opened} connections")


if __name__ == "__main__":
    anyio.run(main, sys.argv[1])
