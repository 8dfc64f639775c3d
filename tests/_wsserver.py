"""A small in-process WebSocket server for the tests, on anyio and wsproto.

The server runs inside the test's own event loop (asyncio, asyncio with uvloop,
or trio), in a task group that :func:`serve_ws` owns: every connection is served
by its own task of that group, and leaving :func:`serve_ws` closes every
connection and ends every task, within a bounded time.

Its behaviour is an echo server with faults that a test can switch on and off
at any moment by setting attributes of the :class:`WSServer` (or by passing
them to :func:`serve_ws`). Its counters are plain ints, updated synchronously.
Those of a handshake and of a message are updated *before* the server answers,
so that a client that has its answer can rely on them; ``open_connections``
drops only once the TCP connection is closed, which a client learns later
than the server: wait for it with :meth:`WSServer.wait_until`, which checks a
condition each time the server's state changes, without polling.

Example::

    async with serve_ws(close_after=2) as server:
        async with httpx.AsyncClient(trust_env=False) as client:
            async with aconnect_ws(server.url, client) as ws:
                ...
        await server.wait_until(lambda: server.open_connections == 0)
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypedDict, TypeVarTuple, Unpack

import anyio
from anyio.abc import SocketAttribute, SocketStream, TaskGroup
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

__all__ = ("Faults", "WSServer", "serve_ws")

logger = logging.getLogger(__name__)

_Ts = TypeVarTuple("_Ts")

# What a vanished or misbehaving client makes a connection's task raise: the
# connection ends, the server goes on.
_CONNECTION_ERRORS = (
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
    OSError,
    LocalProtocolError,
    RemoteProtocolError,
)


class Faults(TypedDict, total=False):
    """The settable behaviour of a :class:`WSServer` (keyword arguments of :func:`serve_ws`)."""

    reject_status: int | None
    close_after: int | None
    close_code: int
    push_after_reply: str | None
    push_delay: float
    silent: bool
    answer_pings: bool
    handshake_delay: float
    stop_reading: bool
    echo: bool
    accept_subprotocol: str | None
    close_timeout: float
    ping_after_close: bool
    close_new_after: float | None
    close_new_code: int


class _Connection:
    """One TCP connection and its WebSocket state, served by one task."""

    __slots__ = ("done", "echoed", "frozen", "is_open", "scope", "stream", "write_lock", "ws")

    def __init__(self, stream: SocketStream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.SERVER)
        # Frames are produced and written under this lock, so that frames of
        # several tasks (echo, push, close) reach the wire in wsproto's order.
        self.write_lock = anyio.Lock()
        # The connection's task runs in this scope: its deadline bounds a
        # closing handshake, cancelling it aborts the connection.
        self.scope = anyio.CancelScope()
        self.done = anyio.Event()
        self.is_open = False
        self.echoed = 0
        # Set by WSServer.freeze(): what arrives is read and dropped, unanswered.
        self.frozen = False

    def abort(self) -> None:
        """Make the task drop the TCP connection at once, with a reset and no close frame."""
        with contextlib.suppress(OSError, anyio.TypedAttributeLookupError):
            sock = self.stream.extra(SocketAttribute.raw_socket)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.scope.cancel()


class WSServer:
    """The state, counters and faults of a server started by :func:`serve_ws`.

    Counters and faults are public attributes; setting any of them (the server
    does it for counters) wakes :meth:`wait_until` and the connections that
    wait for ``stop_reading`` to be cleared. Only :func:`serve_ws` creates
    instances, inside a running event loop.
    """

    __slots__ = (
        "_changed",
        "_connections",
        "_tg",
        "accept_subprotocol",
        "answer_pings",
        "close_after",
        "close_code",
        "close_new_after",
        "close_new_code",
        "close_timeout",
        "closes_received",
        "echo",
        "handshake_delay",
        "handshakes",
        "last_request_headers",
        "last_subprotocols",
        "max_open",
        "max_upgrading",
        "messages_received",
        "open_connections",
        "ping_after_close",
        "pings_received",
        "port",
        "push_after_reply",
        "push_delay",
        "reject_status",
        "rejected",
        "silent",
        "stop_reading",
        "tcp_accepted",
        "upgrading",
        "url",
    )

    def __init__(self, port: int, **faults: Unpack[Faults]) -> None:
        # Replaced by a new event each time a public attribute is set.
        self._changed = anyio.Event()
        self._connections: set[_Connection] = set()
        # The server's task group (set by serve_ws): runs the timed closes of close_new_after.
        self._tg: TaskGroup | None = None
        self.port: int = port
        self.url: str = f"ws://127.0.0.1:{port}/"
        # counters
        self.tcp_accepted: int = 0
        self.handshakes: int = 0
        #: upgrades requested and not answered yet (with handshake_delay), and their peak
        self.upgrading: int = 0
        self.max_upgrading: int = 0
        self.rejected: int = 0
        self.open_connections: int = 0
        self.max_open: int = 0
        self.messages_received: int = 0
        self.closes_received: int = 0
        self.pings_received: int = 0
        self.last_request_headers: list[tuple[str, str]] = []
        self.last_subprotocols: list[str] = []
        # faults
        self.reject_status: int | None = None
        self.close_after: int | None = None
        self.close_code: int = 1000
        self.push_after_reply: str | None = None
        self.push_delay: float = 0.0
        self.silent: bool = False
        self.answer_pings: bool = True
        # Seconds the server takes to answer each upgrade request.
        self.handshake_delay: float = 0.0
        self.stop_reading: bool = False
        self.echo: bool = True
        self.accept_subprotocol: str | None = None
        # When the client starts the closing handshake, send it a Ping first,
        # then answer its close frame (RFC 6455 lets a Ping come in between).
        self.ping_after_close: bool = False
        # Close each new connection, from the server side, this many seconds
        # after its handshake, with close_new_code.
        self.close_new_after: float | None = None
        self.close_new_code: int = 1008
        # Longest closing handshake (server-initiated close, or the server's own
        # shutdown) before the TCP connection is dropped.
        self.close_timeout: float = 5.0
        for name, value in faults.items():
            setattr(self, name, value)

    if not TYPE_CHECKING:
        # Hidden from the type checker so that it still rejects unknown attributes.
        def __setattr__(self, name: str, value: Any) -> None:
            object.__setattr__(self, name, value)
            if not name.startswith("_"):
                self._notify()

    def __repr__(self) -> str:
        return (
            f"<WSServer {self.url} tcp_accepted={self.tcp_accepted} "
            f"handshakes={self.handshakes} rejected={self.rejected} "
            f"open={self.open_connections} max_open={self.max_open} "
            f"messages={self.messages_received} closes={self.closes_received}>"
        )

    # ------------------------------------------------------------------ waiting

    def _notify(self) -> None:
        event, self._changed = self._changed, anyio.Event()
        event.set()

    async def _wait_for(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self._changed.wait()

    async def wait_until(
        self,
        predicate: Callable[[], bool],
        timeout: float = 5.0,  # noqa: ASYNC109 (the tests' API: one deadline per condition)
    ) -> None:
        """Wait until ``predicate()`` is true, checking it each time the server's state changes.

        Raises:
            TimeoutError: ``predicate()`` was still false after ``timeout`` seconds;
                the message shows the counters at that moment.
        """
        try:
            with anyio.fail_after(timeout):
                await self._wait_for(predicate)
        except TimeoutError:
            raise TimeoutError(f"condition still false after {timeout} s: {self!r}") from None

    # ------------------------------------------------------------------ actions

    async def push(self, text: str) -> None:
        """Send a text message to every open connection (a vanished client is skipped)."""
        await self._for_each_open(self._send_quietly, TextMessage(data=text))

    async def push_pong(self, payload: bytes = b"unsolicited") -> None:
        """Send an unsolicited Pong frame to every open connection."""
        await self._for_each_open(self._send_quietly, Pong(payload=payload))

    async def close_all(self, code: int = 1000, *, wait: bool = True) -> None:
        """Close every open connection from the server side: close frame, then TCP close.

        With ``wait`` (the default), returns once every one of them is closed:
        when its client answered the close frame, or ``close_timeout`` seconds
        after it was sent (then the TCP connection is dropped). A connection whose
        close frame cannot even be written within ``close_timeout`` is aborted.
        """
        await self._for_each_open(self._close_one, code, wait)

    async def _close_one(self, conn: _Connection, code: int, wait: bool) -> None:
        with anyio.move_on_after(self.close_timeout) as scope:
            with contextlib.suppress(*_CONNECTION_ERRORS):
                await self._start_close(conn, code)
        if scope.cancelled_caught:
            conn.abort()
        if wait:
            await conn.done.wait()

    async def _for_each_open(
        self, action: Callable[[_Connection, *_Ts], Coroutine[Any, Any, None]], *args: *_Ts
    ) -> None:
        # Concurrently, so that a client that stopped reading delays no other.
        async with anyio.create_task_group() as tg:
            for conn in self._connections:
                if conn.is_open:
                    tg.start_soon(action, conn, *args)

    def freeze(self) -> None:
        """Make every connection open now a dead peer: TCP stays up, nothing is answered.

        What such a connection receives from then on (pings, a close frame,
        messages) is read and dropped; it ends when its client closes the
        socket. Connections opened later are served as usual.
        """
        for conn in self._connections:
            conn.frozen = True
        self._notify()

    async def abort_all(self) -> None:
        """Drop every TCP connection at once (a reset, no close frame); return when all are gone."""
        targets = list(self._connections)
        for conn in targets:
            conn.abort()
        for conn in targets:
            await conn.done.wait()

    # ------------------------------------------------------------------ sending

    async def _send(
        self,
        conn: _Connection,
        event: Event,
        states: tuple[ConnectionState, ...] = (ConnectionState.OPEN,),
    ) -> bool:
        """Write one event if the connection is in one of ``states``; tell whether it was."""
        async with conn.write_lock:
            if conn.ws.state not in states:
                return False
            await conn.stream.send(conn.ws.send(event))
        return True

    async def _send_quietly(self, conn: _Connection, event: Event) -> None:
        with contextlib.suppress(*_CONNECTION_ERRORS):
            await self._send(conn, event)

    async def _start_close(self, conn: _Connection, code: int) -> None:
        """Send a close frame and give the client ``close_timeout`` seconds to answer it."""
        if await self._send(conn, CloseConnection(code=code)):
            deadline = anyio.current_time() + self.close_timeout
            conn.scope.deadline = min(conn.scope.deadline, deadline)

    # ------------------------------------------------------------------ serving

    async def _handle(self, stream: SocketStream) -> None:
        """Serve one TCP connection; nothing it raises (but cancellation) leaves it."""
        conn = _Connection(stream)
        self._connections.add(conn)
        try:
            self.tcp_accepted += 1
            with conn.scope:
                await self._converse(conn)
        except _CONNECTION_ERRORS as exc:
            logger.debug("connection ended: %r", exc)
        except Exception:
            logger.exception("connection handler failed")
        finally:
            # Closing first, then counting: whoever sees the counter drop can
            # rely on the TCP connection being closed.
            await anyio.aclose_forcefully(stream)
            self._connections.discard(conn)
            if conn.is_open:
                conn.is_open = False
                self.open_connections -= 1
            conn.done.set()

    async def _receive(self, conn: _Connection) -> bytes | None:
        """Read the next bytes; None at end of stream."""
        try:
            return await conn.stream.receive()
        except anyio.EndOfStream:
            return None

    async def _read_request(self, conn: _Connection) -> Request | None:
        """Read the upgrade request; None when the client left or sent no valid one."""
        while True:
            data = await self._receive(conn)
            if data is None:
                return None
            try:
                conn.ws.receive_data(data)
                for event in conn.ws.events():
                    if isinstance(event, Request):
                        return event
            except RemoteProtocolError as exc:
                # Not a WebSocket upgrade (a plain GET, a bad header): answer as
                # wsproto suggests (400, 426) and end the connection.
                if isinstance(exc.event_hint, RejectConnection):
                    await conn.stream.send(conn.ws.send(exc.event_hint))
                return None

    async def _converse(self, conn: _Connection) -> None:
        request = await self._read_request(conn)
        if request is None:
            return
        headers = [("host", request.host)]
        headers += [
            (name.decode("latin-1").lower(), value.decode("latin-1"))
            for name, value in request.extra_headers
        ]
        if request.subprotocols:
            headers.append(("sec-websocket-protocol", ", ".join(request.subprotocols)))
        self.last_subprotocols = list(request.subprotocols)
        self.last_request_headers = headers

        if self.silent:
            while await self._receive(conn) is not None:
                pass
            return
        if self.reject_status is not None:
            status = self.reject_status
            self.rejected += 1
            await conn.stream.send(conn.ws.send(RejectConnection(status_code=status)))
            return

        offered = self.accept_subprotocol in request.subprotocols
        subprotocol = self.accept_subprotocol if offered else None
        if self.handshake_delay:
            # An upgrade in flight: requested, not answered yet.
            self.upgrading += 1
            self.max_upgrading = max(self.max_upgrading, self.upgrading)
            try:
                await anyio.sleep(self.handshake_delay)
            finally:
                self.upgrading -= 1
        conn.is_open = True
        self.open_connections += 1
        self.max_open = max(self.max_open, self.open_connections)
        self.handshakes += 1
        async with conn.write_lock:
            await conn.stream.send(conn.ws.send(AcceptConnection(subprotocol=subprotocol)))
        if self.close_new_after is not None and self._tg is not None:
            self._tg.start_soon(self._close_new, conn, self.close_new_after, self.close_new_code)
        await self._exchange(conn)

    async def _close_new(self, conn: _Connection, delay: float, code: int) -> None:
        """``close_new_after``: close ``conn`` with ``code``, ``delay`` s after its handshake."""
        if delay > 0:
            await anyio.sleep(delay)
        with contextlib.suppress(*_CONNECTION_ERRORS):
            await self._start_close(conn, code)

    async def _exchange(self, conn: _Connection) -> None:
        """Serve an open WebSocket connection until its close handshake or end of stream."""
        text_parts: list[str] = []
        byte_parts: list[bytes] = []
        while True:
            await self._wait_for(lambda: not self.stop_reading)
            data = await self._receive(conn)
            if data is None:
                return
            if conn.frozen:
                continue
            conn.ws.receive_data(data)
            for event in conn.ws.events():
                if isinstance(event, TextMessage):
                    text_parts.append(event.data)
                    if event.message_finished:
                        text = "".join(text_parts)
                        text_parts.clear()
                        await self._on_message(conn, TextMessage(data=text))
                elif isinstance(event, BytesMessage):
                    byte_parts.append(bytes(event.data))
                    if event.message_finished:
                        payload = b"".join(byte_parts)
                        byte_parts.clear()
                        await self._on_message(conn, BytesMessage(data=payload))
                elif isinstance(event, Ping):
                    self.pings_received += 1
                    if self.answer_pings:
                        await self._send(conn, event.response())
                elif isinstance(event, CloseConnection):
                    await self._on_close(conn, event)
                    return
                # A Pong needs nothing.

    async def _on_message(self, conn: _Connection, message: TextMessage | BytesMessage) -> None:
        self.messages_received += 1
        if not self.echo or not await self._send(conn, message):
            return
        conn.echoed += 1
        if self.push_after_reply is not None:
            if self.push_delay > 0:
                await anyio.sleep(self.push_delay)
            await self._send(conn, TextMessage(data=self.push_after_reply))
        if self.close_after is not None and conn.echoed >= self.close_after:
            await self._start_close(conn, self.close_code)

    async def _on_close(self, conn: _Connection, event: CloseConnection) -> None:
        state = conn.ws.state
        if state is ConnectionState.REMOTE_CLOSING:
            # The client starts the closing handshake: answer it.
            self.closes_received += 1
            if self.ping_after_close:
                # wsproto sends no Ping once the peer's close frame is in: the
                # frame is written by hand (FIN + opcode 0x9, unmasked).
                async with conn.write_lock:
                    await conn.stream.send(b"\x89\x04late")
            await self._send(conn, event.response(), (ConnectionState.REMOTE_CLOSING,))
        elif state is ConnectionState.CLOSED:
            # The client answers the server's close frame.
            self.closes_received += 1
        else:
            # No close frame: wsproto reports a protocol error this way.
            logger.debug("protocol error from client: %s %s", event.code, event.reason)
            await self._send(conn, CloseConnection(code=event.code))


@asynccontextmanager
async def serve_ws(**faults: Unpack[Faults]) -> AsyncIterator[WSServer]:
    """Run a WebSocket echo server on 127.0.0.1 (a free port) for the block's duration.

    On exit, every open connection gets a close frame (1001) and up to
    ``close_timeout`` seconds to answer it; then every connection still there is
    dropped and every task of the server ends. An exception of the block
    propagates unchanged, not wrapped in an exception group.
    """
    body_error: Exception | None = None
    async with await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0) as listener:
        server = WSServer(listener.extra(SocketAttribute.local_port), **faults)
        try:
            async with anyio.create_task_group() as tg:
                server._tg = tg
                tg.start_soon(listener.serve, server._handle, tg)
                try:
                    yield server
                finally:
                    # Each close takes at most close_timeout to write, then as
                    # long for the client's answer.
                    with anyio.move_on_after(2 * server.close_timeout + 1, shield=True):
                        await server.close_all(1001)
                    tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # The server's own tasks raise nothing, so the group holds what the
            # block raised: give that back as it was.
            if len(group.exceptions) != 1 or not isinstance(group.exceptions[0], Exception):
                raise
            body_error = group.exceptions[0]
    if body_error is not None:
        raise body_error
