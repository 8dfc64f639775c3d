"""A Starlette app: its lifespan opens the pool, each request borrows a connection.

The pool is opened once, when the app starts, and closed when it stops (every
connection closed, every task of the pool ended). Each request to ``/ask``
borrows a connection for one exchange with the WebSocket service and gives it
back: a busy app makes a handful of handshakes, not one per request.

Usage: python examples/starlette_app.py ws://127.0.0.1:8765/ [port]
then:  curl 'http://127.0.0.1:8000/ask?text=hello'
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypedDict

import uvicorn
from httpx_ws import AsyncWebSocketSession
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from anyio_wspool import WebSocketPool, open_pool


class State(TypedDict):
    pool: WebSocketPool[AsyncWebSocketSession]


def create_app(service_url: str) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        async with open_pool(service_url, max_connections=8, acquire_timeout=5.0) as pool:
            yield {"pool": pool}

    async def ask(request: Request) -> JSONResponse:
        pool: WebSocketPool[AsyncWebSocketSession] = request.state.pool
        async with pool.connection() as ws:
            await ws.send_text(request.query_params.get("text", ""))
            reply = await ws.receive_text()
        return JSONResponse({"reply": reply, "connections_opened": pool.stats.opened})

    return Starlette(routes=[Route("/ask", ask)], lifespan=lifespan)


if __name__ == "__main__":
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 8000
    uvicorn.run(create_app(sys.argv[1]), host="127.0.0.1", port=port)
