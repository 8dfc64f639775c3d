"""Stale data: a message left unread never reaches the next borrower.

The first borrower asks two questions and reads one answer, then gives the
connection back: the second answer is still on its way. With
``drain_on_release`` the pool drains the connection before lending it again
(a ping, then a quiet period), and hands what it drained to ``on_drained``.
The next borrower reads the answer to its own question.

Usage: python examples/stale_data.py ws://127.0.0.1:8765/
"""

from __future__ import annotations

import sys
from typing import Any

import anyio

from anyio_wspool import open_pool

drained: list[str] = []


def on_drained(event: Any) -> None:
    drained.append(getattr(event, "data", repr(event)))


async def main(url: str) -> None:
    async with open_pool(
        url,
        max_connections=1,
        drain_on_release=True,
        drain_quiet_period=0.1,
        on_drained=on_drained,
    ) as pool:
        async with pool.connection() as ws:
            await ws.send_text("first question")
            await ws.send_text("second question")
            print("first borrower read:", await ws.receive_text())
            # ... and gives the connection back with an answer unread.
        async with pool.connection() as ws:  # the same connection, drained
            await ws.send_text("third question")
            print("next borrower read:", await ws.receive_text())
        print("drained:", drained)
        print("connections opened:", pool.stats.opened)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1])
