"""The benchmarks' echo server, run as a separate process by ``run.py``.

It echoes every text and binary message back, answers pings, and counts the
WebSocket handshakes it accepted: ``GET /count`` (a plain HTTP request, not a
WebSocket) answers with that number, so that a benchmark can show how many
connections a contender really opened.

Two implementations: ``picows`` (written in Cython, the faster one) and the
``websockets`` library's asyncio server, both on uvloop when it is installed.
Once listening, the server prints one line, ``PORT <port>``, on stdout, then
serves until SIGTERM or SIGINT.

Usage: ``python benchmarks/_server.py picows|websockets``
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import signal
import sys
from typing import Any

HOST = "127.0.0.1"
COUNT_PATH = "/count"


async def serve_picows(handshakes: list[int], stop: asyncio.Event) -> None:
    # Looked up at run time: picows is optional, and this file must type-check
    # where it is not installed.
    picows: Any = importlib.import_module("picows")
    data_types = (picows.WSMsgType.TEXT, picows.WSMsgType.BINARY, picows.WSMsgType.CONTINUATION)

    def on_ws_frame(self: Any, transport: Any, frame: Any) -> None:
        kind = frame.msg_type
        if kind in data_types:
            transport.send(kind, frame.get_payload_as_memoryview(), frame.fin)
        elif kind is picows.WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()

    echo_listener: Any = type("EchoListener", (picows.WSListener,), {"on_ws_frame": on_ws_frame})

    def route(request: Any) -> Any:
        if request.path == COUNT_PATH.encode():
            response = picows.WSUpgradeResponse.create_ok_response(str(handshakes[0]).encode())
            return picows.WSUpgradeResponseWithListener(response, None)
        handshakes[0] += 1
        return echo_listener()

    server = await picows.ws_create_server(route, HOST, 0, websocket_handshake_timeout=10)
    announce(server.sockets[0].getsockname()[1])
    async with server:
        await stop.wait()


async def serve_websockets(handshakes: list[int], stop: asyncio.Event) -> None:
    from websockets.asyncio.server import ServerConnection, serve
    from websockets.http11 import Request, Response

    def route(connection: ServerConnection, request: Request) -> Response | None:
        if request.path == COUNT_PATH:
            return connection.respond(200, str(handshakes[0]))
        return None

    async def echo(connection: ServerConnection) -> None:
        handshakes[0] += 1
        with contextlib.suppress(Exception):
            async for message in connection:
                await connection.send(message)

    options: Any = {"compression": None, "max_size": None, "ping_interval": None}
    async with serve(echo, HOST, 0, process_request=route, **options) as server:
        announce(next(iter(server.sockets)).getsockname()[1])
        await stop.wait()


def announce(port: int) -> None:
    sys.stdout.write(f"PORT {port}\n")
    sys.stdout.flush()


async def main(implementation: str) -> None:
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    serve = serve_picows if implementation == "picows" else serve_websockets
    await serve([0], stop)


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:
        asyncio.run(main(sys.argv[1]))
    else:
        uvloop.run(main(sys.argv[1]))
