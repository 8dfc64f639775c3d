"""A hardened httpx-ws session: what the pool lends.

httpx-ws 0.9's :class:`~httpx_ws.AsyncWebSocketSession` has four habits that a
pool cannot live with:

* its reader hands every message over through a memory stream of size zero, so
  one message nobody reads stops the reader, and with it the pongs that
  keep-alive waits for: an idle connection goes deaf and is killed;
* a Pong nobody asked for raises ``KeyError`` in the reader and kills the session;
* its close writes the close frame under a shield with no time limit, which
  hangs for ever against a peer that stopped reading;
* sending after the server closed raises wsproto's ``LocalProtocolError``, and
  the fragment joiner ignores ``max_message_size_bytes``; a bogus
  ``Sec-WebSocket-Accept`` is accepted.

:class:`PooledWebSocketSession` subclasses it and replaces exactly those parts:
received messages go into a buffer of ``queue_size`` messages (the size
httpx-ws documents), or, while the pool holds the connection idle, straight to
a *sink* that the pool gives it, so nothing ever stalls the reader. Everything
else (the public API, the task group, the handshake) is httpx-ws's own, and an
instance is still an ``AsyncWebSocketSession`` (and an instance of the
``session_class`` the user asked for, see :func:`hardened_session_class`).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import math
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Self, TypeVar

import anyio
import httpcore
import wsproto
import wsproto.utilities
from httpx_ws import (
    AsyncWebSocketSession,
    HTTPXWSException,
    WebSocketDisconnect,
    WebSocketNetworkError,
    WebSocketUpgradeError,
)
from wsproto.connection import ConnectionState
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    Pong,
    TextMessage,
)

__all__ = ("PooledWebSocketSession", "hardened_session_class")

_ACCEPT_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_CLOSED_STATES = frozenset({ConnectionState.LOCAL_CLOSING, ConnectionState.CLOSED})

#: what the pool is given for each message read while it holds the connection
Sink = Callable[[Event], None]

S = TypeVar("S", bound=AsyncWebSocketSession)


@dataclass(frozen=True, slots=True)
class Flavour:
    """What differs between the WebSocket stacks a hardened session is made for.

    httpx-ws and httpx2's ``websockets`` share their session's design and
    attribute names, but each raises its own exception types and sits on its
    own httpcore: the hardened session finds them here.
    """

    #: the server closed the connection (``WebSocketDisconnect(code, reason)``)
    disconnect: type[Exception]
    #: the connection broke (``WebSocketNetworkError``)
    network_error: type[Exception]
    #: the upgrade was refused (``WebSocketUpgradeError(response)``)
    upgrade_error: type[Exception]
    #: the base of the stack's WebSocket errors
    base_error: type[Exception]
    #: what reading or writing the network stream raises when it broke (or was closed)
    io_errors: tuple[type[Exception], ...]
    #: what writing it raises then
    write_errors: tuple[type[Exception], ...]


#: httpx + httpx-ws
HTTPX_WS = Flavour(
    disconnect=WebSocketDisconnect,
    network_error=WebSocketNetworkError,
    upgrade_error=WebSocketUpgradeError,
    base_error=HTTPXWSException,
    io_errors=(httpcore.ReadError, httpcore.WriteError, anyio.ClosedResourceError),
    write_errors=(httpcore.WriteError, anyio.ClosedResourceError),
)


def expected_accept(key: str) -> str:
    """The ``Sec-WebSocket-Accept`` value that answers ``key`` (RFC 6455 §4.2.2)."""
    digest = hashlib.sha1(key.encode("ascii") + _ACCEPT_GUID).digest()
    return base64.b64encode(digest).decode("ascii")


def _check_accept(response: Any, flavour: Flavour) -> None:
    key = response.request.headers.get("sec-websocket-key")
    accept = response.headers.get("sec-websocket-accept")
    if key is None or accept is None or accept.strip() != expected_accept(key):
        error = flavour.upgrade_error(response)
        error.args = (
            "the server's Sec-WebSocket-Accept header does not answer the key that was sent "
            f"(got {accept!r}); this is not a WebSocket server that follows RFC 6455",
        )
        raise error


class HardenedSession:
    """What makes a stack's session fit for a pool (see the module doc).

    A mixin: the session class of a stack is ``class X(HardenedSession,
    TheStacksSession)`` with that stack's :class:`Flavour`.
    """

    #: the stack's exception types
    flavour: ClassVar[Flavour]
    #: seconds the closing handshake may take before the socket is aborted; the
    #: pool's connector sets its ``close_timeout`` here (see :meth:`pool_attach`)
    close_timeout: float = 5.0

    if TYPE_CHECKING:
        # Set by the stack's session (httpx-ws's design, shared by httpx2).
        stream: Any
        connection: Any
        _should_close: anyio.Event
        _ping_manager: Any
        _write_lock: anyio.Lock
        _queue_size: int
        _max_message_size_bytes: int
        _keepalive_ping_interval_seconds: float | None
        _keepalive_ping_timeout_seconds: float | None
        _background_task_group: Any

        async def ping(self, payload: bytes = b"") -> anyio.Event: ...

    def __init__(self, stream: Any, *, response: Any = None, **options: Any) -> None:
        if response is not None:
            _check_accept(response, self.flavour)
        super().__init__(stream, response=response, **options)  # type: ignore[call-arg]
        self._inbox: deque[Event] = deque()
        self._inbox_ready: anyio.Event | None = None
        self._inbox_space: anyio.Event | None = None
        # set once the connection can carry no more messages: what receive()
        # raises after the buffered messages have been read
        self._terminal: Exception | None = None
        self._sink: Sink | None = None
        #: whether the server started the closing handshake (its code is the terminal's)
        self._closed_by_server = False
        self._on_dead: Callable[[], None] | None = None
        self._reader_started = False
        self._reader_done = anyio.Event()

    # -- the pool's side ----------------------------------------------------

    @property
    def pool_usable(self) -> bool:
        """Whether the connection can still carry messages both ways."""
        return self._terminal is None and self.connection.state is ConnectionState.OPEN

    def pool_attach(self, on_dead: Callable[[], None], close_timeout: float) -> None:
        """Called once by the pool after the handshake."""
        self._on_dead = on_dead
        self.close_timeout = close_timeout
        if self._terminal is not None:
            on_dead()

    @property
    def pool_close_code(self) -> int | None:
        """The code of the server's close frame, if the server closed the connection."""
        terminal = self._terminal
        if isinstance(terminal, self.flavour.disconnect) and self._closed_by_server:
            code: int = getattr(terminal, "code")  # noqa: B009 (the stack's own type)
            return code
        return None

    def pool_closed_error(self) -> Exception:
        """What ended the connection: the server's close (with its code) or the network."""
        return self._disconnect_error()

    def pool_park(self, sink: Sink) -> None:
        """Hand every buffered message to ``sink`` and send later ones there too.

        Called synchronously when the connection goes back to the pool: what the
        borrower left unread was sent before the next lease can begin.
        """
        inbox = self._inbox
        while inbox:
            sink(inbox.popleft())
        self._sink = sink
        self._wake_space()

    def pool_unpark(self) -> None:
        """Called synchronously when the connection is lent: keep messages for the borrower.

        Because the reader routes each message at the moment it is parsed, a
        message parsed after this call is the borrower's, one parsed before it
        went to the sink: no message is ever lost between the two or given to both.
        """
        self._sink = None

    # -- receiving ----------------------------------------------------------

    def _wake_space(self) -> None:
        waiter = self._inbox_space
        if waiter is not None:
            self._inbox_space = None
            waiter.set()

    def _wake_readers(self) -> None:
        waiter = self._inbox_ready
        if waiter is not None:
            self._inbox_ready = None
            waiter.set()

    async def _deliver(self, event: Event) -> None:
        while True:
            sink = self._sink
            if sink is not None:
                sink(event)
                return
            if len(self._inbox) < self._queue_size:
                self._inbox.append(event)
                self._wake_readers()
                return
            # The borrower is not reading: hold the reader back (httpx-ws's
            # documented queue_size semantics) until there is room.
            if self._inbox_space is None:
                self._inbox_space = anyio.Event()
            await self._inbox_space.wait()

    def _fail(self, error: Exception) -> None:
        """Mark the connection dead: ``receive()`` raises ``error`` once the buffer is read."""
        if self._terminal is None:
            self._terminal = error
            self._should_close.set()
            self._wake_readers()
            self._wake_space()
            if self._on_dead is not None:
                self._on_dead()

    def _disconnect_error(self) -> Exception:
        flavour = self.flavour
        terminal = self._terminal
        if terminal is not None:
            if isinstance(terminal, flavour.disconnect):
                return flavour.disconnect(
                    getattr(terminal, "code"),  # noqa: B009 (the stack's own type)
                    getattr(terminal, "reason"),  # noqa: B009
                )
            return flavour.network_error(*terminal.args)
        return flavour.disconnect(1006, "the connection is closed")

    async def receive(self, timeout: float | None = None) -> Event:  # noqa: ASYNC109 (httpx-ws API)
        """Receive the next event from the server (httpx-ws's semantics).

        Raises:
            TimeoutError: nothing arrived within ``timeout`` seconds.
            WebSocketDisconnect: the server closed the connection (raised again by
                every later call).
            WebSocketNetworkError: the connection broke or keep-alive failed.
        """
        if timeout is None:
            await self._wait_inbox()
        else:
            with anyio.fail_after(timeout):
                await self._wait_inbox()
        if not self._inbox:
            raise self._disconnect_error()
        event = self._inbox.popleft()
        self._wake_space()
        return event

    async def _wait_inbox(self) -> None:
        if self._inbox or self._terminal is not None:
            await anyio.lowlevel.checkpoint()
            return
        while not self._inbox and self._terminal is None:
            if self._inbox_ready is None:
                self._inbox_ready = anyio.Event()
            await self._inbox_ready.wait()

    async def _background_receive(self, max_bytes: int) -> None:
        try:
            await self._read_frames(max_bytes)
            # The conversation is over (a close frame, or a message too big):
            # keep reading until the peer closes the socket, so that our own
            # close frame is flushed before the socket is torn down.
            while await self.stream.read(max_bytes):
                pass
        except self.flavour.io_errors as exc:
            self._fail(self.flavour.network_error(f"the connection broke: {type(exc).__name__}"))
        except wsproto.utilities.RemoteProtocolError as exc:
            self._fail(self.flavour.network_error(f"the server broke the protocol: {exc}"))
        except wsproto.utilities.LocalProtocolError as exc:
            # Not expected (every send checks the state first), but the reader
            # must not die with an exception that would tear the session down.
            self._fail(
                self.flavour.network_error(f"the connection is in no state to answer: {exc}")
            )
        finally:
            self._fail(self.flavour.disconnect(1006, "the server closed the socket"))
            self._reader_done.set()

    async def _read_frames(self, max_bytes: int) -> None:
        limit = self._max_message_size_bytes
        parts: list[Any] = []
        size = 0
        while True:
            data = await self.stream.read(max_bytes)
            if not data:
                return
            self.connection.receive_data(data)
            for event in self.connection.events():
                if isinstance(event, Message):
                    parts.append(event.data)
                    size += len(event.data)
                    if size > limit:
                        # httpx-ws's joiner has no limit; RFC 6455 §7.4.1: 1009.
                        self._fail(
                            self.flavour.disconnect(
                                1009, f"a message exceeded max_message_size_bytes={limit}"
                            )
                        )
                        await self._send_close_frame(1009, "message too big")
                        return
                    if event.message_finished:
                        payload = parts[0] if len(parts) == 1 else parts[0][:0].join(parts)
                        parts.clear()
                        size = 0
                        message: Event = (
                            TextMessage(data=payload)
                            if isinstance(event, TextMessage)
                            else BytesMessage(data=payload)
                        )
                        await self._deliver(message)
                elif isinstance(event, Ping):
                    # Once our close frame is out (LOCAL_CLOSING) no Pong may
                    # follow it: the ping is ignored, the closing handshake goes on.
                    if self.connection.state is ConnectionState.OPEN:
                        await self._write(self.connection.send(event.response()))
                elif isinstance(event, Pong):
                    # RFC 6455 §5.5.3: an unsolicited Pong is to be ignored.
                    with contextlib.suppress(KeyError):
                        self._ping_manager.ack(event.payload)
                elif isinstance(event, CloseConnection):
                    # The server's code is recorded before the answer is
                    # written: a send racing with that write reports it.
                    if (
                        self._terminal is None
                        and self.connection.state is ConnectionState.REMOTE_CLOSING
                    ):
                        self._closed_by_server = True  # not the answer to our close
                    self._fail(self.flavour.disconnect(event.code, event.reason))
                    if self.connection.state is ConnectionState.REMOTE_CLOSING:
                        await self._write(self.connection.send(event.response()))
                    return

    async def _background_keepalive_ping(
        self, interval_seconds: float, timeout_seconds: float | None = None
    ) -> None:
        while self._terminal is None:
            await anyio.sleep(interval_seconds)
            try:
                pong = await self.ping()
            except self.flavour.base_error:
                return
            with anyio.move_on_after(math.inf if timeout_seconds is None else timeout_seconds):
                await pong.wait()
                continue
            self._fail(
                self.flavour.network_error(
                    f"no answer to a keep-alive ping within {timeout_seconds} s"
                )
            )
            await self.close(1011, "keep-alive ping timeout")
            return

    # -- sending and closing --------------------------------------------------

    async def _write(self, data: bytes) -> None:
        async with self._write_lock:
            await self.stream.write(data)

    async def send(self, event: Event) -> None:
        """Send a wsproto event (httpx-ws's semantics).

        Raises:
            WebSocketDisconnect: the connection is closed (never wsproto's
                ``LocalProtocolError``).
            WebSocketNetworkError: writing to the socket failed.
        """
        try:
            data = self.connection.send(event)
        except wsproto.utilities.LocalProtocolError as exc:
            raise self._disconnect_error() from exc
        try:
            await self._write(data)
        except self.flavour.write_errors as exc:
            self._fail(self.flavour.network_error(f"the connection broke: {type(exc).__name__}"))
            with anyio.CancelScope(shield=True):
                await self.close(1011, "write error")
            raise self._disconnect_error() from exc

    async def _send_close_frame(self, code: int, reason: str | None) -> None:
        if self.connection.state in _CLOSED_STATES:
            return
        with contextlib.suppress(*self.flavour.write_errors, wsproto.utilities.LocalProtocolError):
            await self._write(self.connection.send(CloseConnection(code, reason)))

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        """Close the session: the closing handshake, bounded by ``close_timeout``.

        Sends the close frame, waits for the server to answer it and to close
        the socket, then closes the socket. After ``close_timeout`` seconds (a
        peer that stopped reading, a lock held by a stuck writer) the socket is
        aborted instead. A connection known to be dead (the socket broke,
        keep-alive failed, the peer broke the protocol) is failed at once, as
        RFC 6455 says: its socket is aborted with no closing handshake, since no
        answer can come. Closing twice is a no-op.
        """
        self._should_close.set()
        if isinstance(self._terminal, self.flavour.network_error):
            await self._abort()
            return
        with anyio.move_on_after(self.close_timeout) as scope:
            await self._send_close_frame(code, reason)
            if self._reader_started:
                await self._reader_done.wait()
            await self.stream.aclose()
        if scope.cancelled_caught:
            await self._abort()
        if self._terminal is None:
            self._terminal = self.flavour.disconnect(code, reason)
            self._wake_readers()

    async def _abort(self) -> None:
        """Close the socket at once, without a word to the peer."""
        with anyio.CancelScope() as scope:
            scope.cancel()  # httpcore's aclose() then closes without waiting
            await self.stream.aclose()

    @contextlib.asynccontextmanager
    async def __asynccontextmanager__(self) -> AsyncIterator[Self]:
        # httpx-ws's own version cancels the reader before closing, so nobody
        # reads the server's answer to the close frame; this one closes first.
        self._background_task_group = anyio.create_task_group()
        async with self._background_task_group as tg:
            self._reader_started = True
            tg.start_soon(self._background_receive, self._max_message_size_bytes)
            if self._keepalive_ping_interval_seconds is not None:
                tg.start_soon(
                    self._background_keepalive_ping,
                    self._keepalive_ping_interval_seconds,
                    self._keepalive_ping_timeout_seconds,
                )
            try:
                yield self
            finally:
                with anyio.CancelScope(shield=True):
                    await self.close()
                tg.cancel_scope.cancel()


class PooledWebSocketSession(HardenedSession, AsyncWebSocketSession):
    """An :class:`httpx_ws.AsyncWebSocketSession` fit for a pool (see the module doc)."""

    flavour = HTTPX_WS


_hardened: dict[type[AsyncWebSocketSession], type[AsyncWebSocketSession]] = {
    AsyncWebSocketSession: PooledWebSocketSession,
    PooledWebSocketSession: PooledWebSocketSession,
}


def hardened_session_class(cls: type[S]) -> type[S]:
    """The class the pool instantiates for a user's ``session_class``.

    A subclass of both :class:`PooledWebSocketSession` and ``cls``, so that the
    user's own methods are there and ``isinstance(ws, cls)`` holds.
    """
    if not (isinstance(cls, type) and issubclass(cls, AsyncWebSocketSession)):
        raise TypeError(
            f"session_class must be a subclass of httpx_ws.AsyncWebSocketSession, got {cls!r}"
        )
    made = _hardened.get(cls)
    if made is None:
        made = type(f"Pooled{cls.__name__}", (PooledWebSocketSession, cls), {})
        _hardened[cls] = made
    return made  # type: ignore[return-value]
