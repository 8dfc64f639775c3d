"""Log what a pool does as JSON lines, one per event, with ``on_event``.

Each event is a small frozen dataclass (``ConnectedEvent``, ``AcquiredEvent``,
``ReleasedEvent``, ``RetiredEvent``, ...): numbers and names only, never a
message, a header or a secret, so it can go to a log as it is. The pool's own
callback task calls ``on_event`` in the order things happened; a slow sink
never holds up a connection.

Usage: python examples/events_jsonl.py ws://127.0.0.1:8765/ > events.jsonl
"""

from __future__ import annotations

import dataclasses
import json
import sys

import anyio

from anyio_wspool import PoolEvent, open_pool


def log_event(event: PoolEvent) -> None:
    """Write ``event`` as one JSON object: its type's name, then its fields."""
    record = {"event": type(event).__name__, **dataclasses.asdict(event)}
    print(json.dumps(record), flush=True)


async def main(url: str) -> None:
    async with open_pool(url, max_connections=2, on_event=log_event) as pool:

        async def ask(n: int) -> None:
            async with pool.connection() as ws:
                await ws.send_text(f"hello {n}")
                await ws.receive_text()

        async with anyio.create_task_group() as tg:
            for n in range(6):
                tg.start_soon(ask, n)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1])
