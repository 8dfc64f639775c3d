"""A TCP proxy on 127.0.0.1 that injects network faults between a client and a server.

The pool connects to the proxy, the proxy to the real server; the test changes
the proxy's mode at any moment, and the change applies to the connections
already open as well as to new ones:

``pass``
    forward both ways.
``latency``
    forward each chunk ``delay`` seconds after it was read, in order.
``stall``
    stop forwarding (what was read is held); the sockets stay open, so the
    peers see silence, not an error. Forwarding resumes when the mode changes.
``stop_reading``
    stop reading from the side that sends in ``direction`` (its kernel
    buffers fill, then its writes block), the sockets stay open.
``blackhole``
    new connections are accepted and everything they send is read and
    discarded, with no connection to the server; open ones are discarded too.
``cut_mid_message``
    forward the first ``cut_after`` bytes of the next chunk in ``direction``,
    then close both sides: a WebSocket frame cut in half.
``drop`` / ``reset``
    close every connection, open and new, with a FIN or with a TCP reset.

Besides the modes: :attr:`FaultProxy.refuse` closes new connections at once,
:meth:`FaultProxy.drop_all` closes the open ones, and
:meth:`FaultProxy.stop_listening` / :meth:`FaultProxy.start_listening` close
and reopen the listener on the same port (a server restart at one address).
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Literal, get_args

import anyio
from anyio.abc import SocketAttribute, SocketListener, SocketStream, TaskGroup

__all__ = ("Direction", "FaultProxy", "Mode", "serve_proxy")

Mode = Literal[
    "pass", "latency", "stall", "stop_reading", "blackhole", "cut_mid_message", "drop", "reset"
]
#: "up": client to server; "down": server to client
Direction = Literal["up", "down", "both"]

_MODES = frozenset(get_args(Mode))
_CLOSED = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)


def _set_reset(stream: SocketStream) -> None:
    """Make closing ``stream`` send a TCP reset instead of a FIN."""
    with contextlib.suppress(OSError, anyio.TypedAttributeLookupError):
        sock = stream.extra(SocketAttribute.raw_socket)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _pause_reading(stream: SocketStream, paused: bool) -> None:
    """Stop (or resume) taking data off ``stream``'s socket.

    On trio a socket is read only when asked; anyio's asyncio streams read
    eagerly into a buffer without bound, so their transport is paused for the
    sender's kernel buffers to fill (asyncio's own flow control, reached
    through anyio's private attribute: this is test code).
    """
    transport: Any = getattr(stream, "_transport", None)
    if hasattr(transport, "pause_reading"):  # asyncio's and uvloop's transports
        if paused:
            transport.pause_reading()
        else:
            transport.resume_reading()


class _Pair:
    """One client connection and, unless blackholed, its connection to the server."""

    __slots__ = ("client", "dead", "reset", "scope", "server")

    def __init__(self, client: SocketStream) -> None:
        self.client = client
        self.server: SocketStream | None = None
        self.scope = anyio.CancelScope()
        self.reset = False
        #: everything is discarded from now on, both ways, without a word
        self.dead = False

    def drop(self, reset: bool) -> None:
        self.reset = self.reset or reset
        self.scope.cancel()


class FaultProxy:
    """The proxy's state, counters and controls (made by :func:`serve_proxy`)."""

    def __init__(
        self, upstream: tuple[str, int], task_group: TaskGroup, connect_timeout: float
    ) -> None:
        self._upstream = upstream
        self._tg = task_group
        self._connect_timeout = connect_timeout
        self._pairs: set[_Pair] = set()
        self._changed = anyio.Event()
        #: the listener's task: its scope, and an event set once the socket is closed
        self._listening: tuple[anyio.CancelScope, anyio.Event] | None = None
        self.port = 0
        self.mode: Mode = "pass"
        self.direction: Direction = "both"
        self.delay = 0.0
        self.cut_after = 0
        #: close new connections as soon as they are accepted
        self.refuse = False
        # counters
        self.accepted = 0
        self.open = 0
        self.bytes_up = 0
        self.bytes_down = 0

    @property
    def url(self) -> str:
        return self.url_for("/")

    def url_for(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def __repr__(self) -> str:
        return (
            f"<FaultProxy :{self.port} -> {self._upstream[1]} mode={self.mode} "
            f"accepted={self.accepted} open={self.open}>"
        )

    # -- controls ------------------------------------------------------------

    def set_mode(
        self,
        mode: Mode,
        *,
        direction: Direction = "both",
        delay: float = 0.0,
        cut_after: int | None = None,
    ) -> None:
        """Change what the proxy does, for open and new connections alike."""
        if mode not in _MODES:
            raise ValueError(f"unknown mode {mode!r}")
        if mode == "cut_mid_message" and cut_after is None:
            raise ValueError("cut_mid_message needs cut_after")
        self.mode = mode
        self.direction = direction
        self.delay = delay
        self.cut_after = cut_after or 0
        if mode in ("drop", "reset"):
            self.drop_all(reset=mode == "reset")
        self._notify()

    def drop_all(self, *, reset: bool = False) -> None:
        """Close every open connection, both sides (with a TCP reset if ``reset``)."""
        for pair in list(self._pairs):
            pair.drop(reset)

    def kill_open(self) -> None:
        """Make the open connections dead peers: everything they carry is discarded
        from now on and their sockets stay open; new connections follow the mode."""
        for pair in self._pairs:
            pair.dead = True
        self._notify()

    async def stop_listening(self) -> None:
        """Close the listener: new connections are refused until :meth:`start_listening`."""
        if self._listening is not None:
            scope, closed = self._listening
            self._listening = None
            scope.cancel()
            await closed.wait()

    async def start_listening(self) -> None:
        """Listen again, on the same port as before (the first call picks one)."""
        if self._listening is not None:
            return
        multi = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=self.port)
        (listener,) = multi.listeners
        assert isinstance(listener, SocketListener)
        self.port = listener.extra(SocketAttribute.local_port)
        self._listening = (anyio.CancelScope(), anyio.Event())
        self._tg.start_soon(self._listen, listener, *self._listening)

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Wait until ``predicate()`` holds, checked whenever a counter changes."""
        with anyio.fail_after(timeout):
            while not predicate():
                await self._changed.wait()

    # -- serving -------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def _applies(self, direction: Literal["up", "down"]) -> bool:
        return self.direction in ("both", direction)

    async def _listen(
        self, listener: SocketListener, scope: anyio.CancelScope, closed: anyio.Event
    ) -> None:
        try:
            with scope:
                async with listener:
                    while True:
                        stream = await listener.accept()
                        self.accepted += 1
                        self._notify()
                        self._tg.start_soon(self._handle, stream)
        finally:
            closed.set()

    async def _handle(self, client: SocketStream) -> None:
        pair = _Pair(client)
        self._pairs.add(pair)
        self.open += 1
        self._notify()
        try:
            with pair.scope:
                if self.refuse or self.mode in ("drop", "reset"):
                    pair.reset = self.mode == "reset"
                    return
                if self.mode == "blackhole":
                    await self._discard(client)
                    return
                try:
                    with anyio.fail_after(self._connect_timeout):
                        pair.server = await anyio.connect_tcp(*self._upstream)
                except (OSError, TimeoutError):
                    return
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._pump, pair, "up", tg.cancel_scope)
                    tg.start_soon(self._pump, pair, "down", tg.cancel_scope)
        finally:
            self._pairs.discard(pair)
            with anyio.CancelScope(shield=True):
                for stream in (pair.client, pair.server):
                    if stream is not None:
                        if pair.reset:
                            _set_reset(stream)
                        await anyio.aclose_forcefully(stream)
            self.open -= 1
            self._notify()

    async def _discard(self, stream: SocketStream) -> None:
        with contextlib.suppress(*_CLOSED):
            while True:
                await stream.receive()

    async def _until_mode_changes(self) -> None:
        await self._changed.wait()

    async def _pump(
        self, pair: _Pair, direction: Literal["up", "down"], done: anyio.CancelScope
    ) -> None:
        """Forward one direction until its source ends; then end the pair."""
        assert pair.server is not None
        source, sink = (
            (pair.client, pair.server) if direction == "up" else (pair.server, pair.client)
        )
        try:
            while True:
                if self.mode in ("stall", "stop_reading") and self._applies(direction):
                    _pause_reading(source, True)
                    while self.mode in ("stall", "stop_reading") and self._applies(direction):
                        await self._until_mode_changes()
                    _pause_reading(source, False)
                data = await source.receive()
                while True:  # what the mode is when the chunk is to be forwarded
                    mode = self.mode
                    if mode == "stall" and self._applies(direction) and not pair.dead:
                        await self._until_mode_changes()
                        continue
                    break
                if mode == "blackhole" or pair.dead:
                    continue
                if mode == "latency" and self._applies(direction):
                    await anyio.sleep(self.delay)
                if mode == "cut_mid_message" and self._applies(direction):
                    await sink.send(data[: self.cut_after])
                    self._count(direction, min(len(data), self.cut_after))
                    return
                await sink.send(data)
                self._count(direction, len(data))
        except _CLOSED:
            pass
        finally:
            done.cancel()

    def _count(self, direction: Literal["up", "down"], n: int) -> None:
        if direction == "up":
            self.bytes_up += n
        else:
            self.bytes_down += n
        self._notify()


@asynccontextmanager
async def serve_proxy(
    host: str, port: int, *, connect_timeout: float = 2.0
) -> AsyncIterator[FaultProxy]:
    """Run a :class:`FaultProxy` to ``host:port`` (loopback only) until the block ends."""
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError("the fault proxy forwards to loopback addresses only")
    async with anyio.create_task_group() as tg:
        proxy = FaultProxy((host, port), tg, connect_timeout)
        await proxy.start_listening()
        try:
            yield proxy
        finally:
            tg.cancel_scope.cancel()
