"""Per-request deadlines with ``anyio.fail_after``, around the whole lease.

The deadline covers the wait for a connection and the exchange. A request
that runs out of time is cancelled inside the block: the pool closes that
connection (its state is unknown: an answer may still arrive) instead of
lending it again, and the ``TimeoutError`` comes out unchanged.

Usage: python examples/timeouts.py ws://127.0.0.1:8765/
"""

from __future__ import annotations

import sys

import anyio

from anyio_wspool import open_pool


async def main(url: str) -> None:
    async with open_pool(url, max_connections=2) as pool:
        # In time: one question, one answer.
        with anyio.fail_after(5):
            async with pool.connection() as ws:
                await ws.send_text("ping")
                print("answer:", await ws.receive_text())
        # Too slow: we wait for a second answer that the server never sends.
        try:
            with anyio.fail_after(0.2):
                async with pool.connection() as ws:
                    await ws.send_text("once")
                    await ws.receive_text()
                    await ws.receive_text()  # never comes
        except TimeoutError:
            print("timed out; the connection was closed, not reused")
        stats = pool.stats
        print(f"opened={stats.opened} discarded={stats.discarded}")


if __name__ == "__main__":
    anyio.run(main, sys.argv[1])
