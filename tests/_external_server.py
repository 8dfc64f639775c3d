"""An independent WebSocket server, built on the ``websockets`` library, run as a subprocess.

Run as a script (``python tests/_external_server.py``), it serves on 127.0.0.1
at a free port, prints that port on the first line of its standard output, and
runs until its standard input closes (so that a killed test run never leaves it
behind), or until SIGTERM or SIGINT. Being another process with its own asyncio
loop, it serves asyncio and trio tests alike, and checks our client code
against a WebSocket implementation that is not ours.

- ``/``: echoes every message. Subprotocols ``chat`` and ``superchat`` are
  accepted: the first of them in the client's order of preference is chosen;
  a client that offers neither gets none.
- ``/headers``: first sends one text message, the JSON object of the upgrade
  request's headers (lower-case names), then echoes.
- ``GET /stats`` (plain HTTP, no upgrade): JSON ``{"handshakes": N, "open": M,
  "max_open": K}``. With ``?open=M&timeout=T`` it answers once ``open`` equals
  M, or after T seconds (default 5) with whatever it is then.

Imported as a module, it gives the tests :func:`run_external_server`, which
starts the subprocess and yields an :class:`ExternalServer` handle.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import selectors
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

# Third-party imports are made where they are needed: the script needs only
# websockets, the tests' side (the handle below) only httpx and anyio.
if TYPE_CHECKING:
    from websockets.asyncio.server import ServerConnection
    from websockets.http11 import Request, Response
    from websockets.typing import Subprotocol

__all__ = ("ExternalServer", "run_external_server")

SUBPROTOCOLS = ("chat", "superchat")
STARTUP_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
MAX_STATS_WAIT = 30.0  # below the handshake's open_timeout, which bounds process_request


# ---------------------------------------------------------------- the server


class _Stats:
    """What ``/stats`` reports; ``changed`` wakes the requests that wait on ``open``."""

    def __init__(self) -> None:
        self.handshakes = 0
        self.open = 0
        self.max_open = 0
        self.changed = asyncio.Condition()

    def as_dict(self) -> dict[str, int]:
        return {"handshakes": self.handshakes, "open": self.open, "max_open": self.max_open}

    async def notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()


async def _serve(stop: asyncio.Event) -> None:
    from websockets.asyncio.server import serve
    from websockets.exceptions import ConnectionClosed

    stats = _Stats()

    def select_subprotocol(
        connection: ServerConnection, offered: Sequence[Subprotocol]
    ) -> Subprotocol | None:
        return next((proto for proto in offered if proto in SUBPROTOCOLS), None)

    async def process_request(connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        if url.path != "/stats":
            return None
        query = parse_qs(url.query)
        if "open" in query:
            wanted = int(query["open"][0])
            timeout = min(float(query.get("timeout", ["5"])[0]), MAX_STATS_WAIT)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout), stats.changed:
                    await stats.changed.wait_for(lambda: stats.open == wanted)
        response = connection.respond(200, json.dumps(stats.as_dict()))
        response.headers["Content-Type"] = "application/json"
        return response

    async def handler(connection: ServerConnection) -> None:
        stats.handshakes += 1
        stats.open += 1
        stats.max_open = max(stats.max_open, stats.open)
        await stats.notify()
        try:
            request = connection.request
            assert request is not None  # the handshake is done
            if urlsplit(request.path).path == "/headers":
                headers = {name.lower(): value for name, value in request.headers.raw_items()}
                await connection.send(json.dumps(headers))
            async for message in connection:
                await connection.send(message)
        except ConnectionClosed:
            pass
        finally:
            stats.open -= 1
            await stats.notify()

    async with serve(
        handler,
        "127.0.0.1",
        0,
        select_subprotocol=select_subprotocol,
        process_request=process_request,
        compression=None,
        open_timeout=MAX_STATS_WAIT + 10,
        close_timeout=2,
    ) as server:
        port = server.sockets[0].getsockname()[1]
        print(port, flush=True)
        await stop.wait()
        server.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STOP_TIMEOUT):
                await server.wait_closed()


async def _wait_for_stdin_eof() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    try:
        while await reader.read(4096):
            pass
    finally:
        transport.close()


async def _main() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    watcher = asyncio.create_task(_wait_for_stdin_eof())
    watcher.add_done_callback(lambda _: stop.set())
    try:
        await _serve(stop)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


# ---------------------------------------------------------------- the tests' handle


class ExternalServer:
    """A running external server, as the tests see it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"ws://127.0.0.1:{port}/"
        self.http_url = f"http://127.0.0.1:{port}/"

    def __repr__(self) -> str:
        return f"<ExternalServer {self.url}>"

    def stats(self, *, wait_open: int | None = None, timeout: float = 5.0) -> dict[str, int]:
        """Return the server's ``/stats``; with ``wait_open``, once ``open`` equals it (or
        after ``timeout`` seconds). A blocking call: from async code, run it in a thread."""
        import httpx

        params: dict[str, Any] = {}
        if wait_open is not None:
            params = {"open": wait_open, "timeout": timeout}
        response = httpx.get(
            f"{self.http_url}stats", params=params, timeout=timeout + 5.0, trust_env=False
        )
        response.raise_for_status()
        result: dict[str, int] = response.json()
        return result

    async def astats(
        self,
        *,
        wait_open: int | None = None,
        timeout: float = 5.0,  # noqa: ASYNC109 (the server-side wait of stats(), passed on)
    ) -> dict[str, int]:
        """:meth:`stats` in a worker thread, for async code."""
        import anyio.to_thread

        return await anyio.to_thread.run_sync(
            functools.partial(self.stats, wait_open=wait_open, timeout=timeout)
        )


def _read_port(proc: subprocess.Popen[bytes]) -> int:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(STARTUP_TIMEOUT):
            raise RuntimeError(f"external server printed no port within {STARTUP_TIMEOUT} s")
    line = proc.stdout.readline()
    if not line.strip():
        raise RuntimeError(f"external server exited early (code {proc.poll()})")
    return int(line)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Close its stdin (it exits), then SIGTERM, then SIGKILL, each with a bounded wait."""
    if proc.stdin is not None:
        with contextlib.suppress(OSError):
            proc.stdin.close()
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def run_external_server() -> Iterator[ExternalServer]:
    """Start the external server in a subprocess, yield its handle, stop it at the end."""
    with subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve())],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    ) as proc:
        try:
            yield ExternalServer(_read_port(proc))
        finally:
            _stop(proc)


if __name__ == "__main__":
    asyncio.run(_main())
