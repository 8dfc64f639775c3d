"""The benchmarks' echo server, run as a separate process by ``run.py``.

It echoes every text and binary message back, answers pings, and counts the
WebSocket handshakes it accepted: ``GET /count`` (a plain HTTP request, not a
WebSocket) answers with that number, so that a benchmark can show how many
connections a contender really opened.

Two implementations: ``picows`` (written in Cython, the faster one, used when it
is installed) and the ``websockets`` library's asyncio server. Both run on
uvloop when it is installed. Once listening, the server prints one line,
``PORT <port> <implementation>``, on stdout, then serves until SIGTERM or SIGINT.

Usage: ``python benchmarks/_server.py [--impl auto|picows|websockets] [--cpu N]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from _common import pin_to_cpu

HOST = "127.0.0.1"
COUNT_PATH = "/count"


class _Counter:
    __slots__ = ("handshakes",)

    def __init__(self) -> None:
        self.handshakes = 0


async def _serve_picows(counter: _Counter, stop: asyncio.Event) -> None:
    # Looked up at run time: picows is optional, and this file must type-check
    # where it is not installed.
    picows: Any = importlib.import_module("picows")
    data_types = (picows.WSMsgType.TEXT, picows.WSMsgType.BINARY, picows.WSMsgType.CONTINUATION)
    close_type = picows.WSMsgType.CLOSE

    def on_ws_frame(self: Any, transport: Any, frame: Any) -> None:
        kind = frame.msg_type
        if kind in data_types:
            transport.send(kind, frame.get_payload_as_memoryview(), frame.fin)
        elif kind is close_type:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()

    echo_listener: Any = type("EchoListener", (picows.WSListener,), {"on_ws_frame": on_ws_frame})

    def route(request: Any) -> Any:
        if request.path == COUNT_PATH.encode():
            body = str(counter.handshakes).encode()
            response = picows.WSUpgradeResponse.create_ok_response(body)
            return picows.WSUpgradeResponseWithListener(response, None)
        counter.handshakes += 1
        return echo_listener()

    server = await picows.ws_create_server(route, HOST, 0, websocket_handshake_timeout=10)
    port = server.sockets[0].getsockname()[1]
    _announce(port, "picows")
    async with server:
        await stop.wait()


async def _serve_websockets(counter: _Counter, stop: asyncio.Event) -> None:
    from websockets.asyncio.server import ServerConnection, serve
    from websockets.http11 import Request, Response

    def route(connection: ServerConnection, request: Request) -> Response | None:
        if request.path == COUNT_PATH:
            return connection.respond(200, str(counter.handshakes))
        return None

    async def echo(connection: ServerConnection) -> None:
        counter.handshakes += 1
        with contextlib.suppress(Exception):
            async for message in connection:
                await connection.send(message)

    async with serve(
        echo,
        HOST,
        0,
        process_request=route,
        compression=None,
        max_size=None,
        ping_interval=None,
    ) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        _announce(port, "websockets")
        await stop.wait()


def _announce(port: int, implementation: str) -> None:
    sys.stdout.write(f"PORT {port} {implementation}\n")
    sys.stdout.flush()


def pick_implementation(requested: str) -> str:
    """``picows`` if it is requested or importable (for ``auto``), else ``websockets``."""
    if requested != "auto":
        return requested
    try:
        importlib.import_module("picows")
    except ImportError:
        return "websockets"
    return "picows"


async def _main(implementation: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    counter = _Counter()
    serve: Callable[[_Counter, asyncio.Event], Coroutine[Any, Any, None]] = (
        _serve_picows if implementation == "picows" else _serve_websockets
    )
    await serve(counter, stop)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", choices=("auto", "picows", "websockets"), default="auto")
    parser.add_argument("--cpu", type=int, default=None, help="pin the server to this CPU")
    args = parser.parse_args(argv)
    if args.cpu is not None:
        pin_to_cpu(args.cpu)
    implementation = pick_implementation(args.impl)
    try:
        import uvloop
    except ImportError:
        asyncio.run(_main(implementation))
    else:
        uvloop.run(_main(implementation))


if __name__ == "__main__":
    main()
