"""Capacity shared by many processes through Redis (``shared_capacity=``).

A provider that caps concurrent WebSockets per account does not care how many
processes the program runs: it counts sockets. :class:`RedisCapacity` names one
limit, held in Redis under ``key``, that every pool using the same Redis and
key shares, in any process on any machine.

The limit is kept as a sorted set of *slots*: one member per connection, its
score the moment (in Redis's own clock, milliseconds) at which the slot
expires. A pool takes a slot before a connection's handshake and gives it back
when the connection is closed; while the connection lives, the pool refreshes
its slots every so often. The slots of a process that dies without giving
them back (SIGKILL, a lost machine) therefore come back by themselves after
``lease_ttl``. Every operation is one Lua script on the server, one round
trip, so the limit holds with any number of processes racing, and the time it
uses is the server's (``TIME``), so the clocks of the machines do not matter.

A second sorted set records the pools that are waiting for a slot, so that a
pool whose idle connections nobody needs can give them up for another
process's borrowers.

Redis is reached with ``coredis`` (built on AnyIO, so it runs on asyncio and
trio alike), an optional dependency: ``pip install anyio-wspool[redis]``.
``import anyio_wspool`` works without it; only creating a
:class:`RedisCapacity` needs it.
"""

from __future__ import annotations

import itertools
import math
import secrets
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, Final, Literal, cast
from urllib.parse import urlsplit

from ._redact import redact_url

if TYPE_CHECKING:
    import coredis
    from coredis.commands.script import Script

__all__ = ("RedisCapacity",)

#: Seconds allowed to open a TCP (and TLS) connection to Redis, and to wait for a
#: reply, on a client that the capacity creates from a URL: a Redis that is down
#: or unreachable fails the pool's request within about this long, instead of
#: holding up the borrower for the operating system's TCP timeout. A URL query
#: (``?connect_timeout=5&stream_timeout=5``) overrides them.
CONNECT_TIMEOUT: Final = 2.0
STREAM_TIMEOUT: Final = 2.0

_EXTRA_HINT = (
    "RedisCapacity needs the coredis package: install the extra with "
    "`pip install 'anyio-wspool[redis]'`"
)
_SCHEMES = ("redis", "rediss")

# Each script works on one key, passed in KEYS, so that it also routes on a
# cluster. ``now`` is Redis's clock in milliseconds; a member's score is the
# moment its lease ends. After every write the key is set to expire with its
# latest lease (PEXPIREAT of the highest score), so that no key outlives the
# last lease in it, even when pools with different ``lease_ttl`` share a key;
# a sorted set left empty is deleted by Redis itself.
_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function expire_with_last_lease(key)
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if last[2] then
    redis.call('PEXPIREAT', key, last[2])
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
"""

# ARGV: member, limit, ttl_ms. Returns {taken (0/1), in_use}.
# A member that already holds a slot keeps it (and its lease is renewed), so
# that a retried take never counts one connection twice.
_TAKE = (
    _PRELUDE
    + """
local ends = string.format('%d', now + tonumber(ARGV[3]))
local taken = 0
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], ends, ARGV[1])
  taken = 1
elseif redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], ends, ARGV[1])
  taken = 1
end
expire_with_last_lease(KEYS[1])
return {taken, redis.call('ZCARD', KEYS[1])}
"""
)

# ARGV: member... Returns in_use.
_GIVE_BACK = (
    _PRELUDE
    + """
for i = 1, #ARGV do
  redis.call('ZREM', KEYS[1], ARGV[i])
end
expire_with_last_lease(KEYS[1])
return redis.call('ZCARD', KEYS[1])
"""
)

# ARGV: ttl_ms, member... Returns {in_use, lost member...}: the members that
# no longer held a slot (their lease had ended) are not given a new one.
_REFRESH = (
    _PRELUDE
    + """
local ends = string.format('%d', now + tonumber(ARGV[1]))
local result = {0}
for i = 2, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], ends, ARGV[i])
  else
    result[#result + 1] = ARGV[i]
  end
end
expire_with_last_lease(KEYS[1])
result[1] = redis.call('ZCARD', KEYS[1])
return result
"""
)

# ARGV: pool_id, mode ("set" or "count"), ttl_ms, need. A waiting pool's
# entry is the member "<pool_id>|<need>" (how many slots it waits for); "set"
# replaces the pool's entry (need 0: removes it). Returns the total need of
# the pools other than pool_id whose entry has not expired. (A few pools wait
# at a time: the scan of the set is short.)
_WAITING = (
    _PRELUDE
    + """
local prefix = ARGV[1] .. '|'
local entries = redis.call('ZRANGE', KEYS[1], 0, -1)
if ARGV[2] == 'set' then
  for _, entry in ipairs(entries) do
    if string.sub(entry, 1, #prefix) == prefix then
      redis.call('ZREM', KEYS[1], entry)
    end
  end
  if tonumber(ARGV[4]) > 0 then
    redis.call('ZADD', KEYS[1], string.format('%d', now + tonumber(ARGV[3])), prefix .. ARGV[4])
  end
  expire_with_last_lease(KEYS[1])
end
local total = 0
for _, entry in ipairs(entries) do
  if string.sub(entry, 1, #prefix) ~= prefix then
    total = total + (tonumber(string.match(entry, '|(%d+)$')) or 1)
  end
end
return total
"""
)


def _import_coredis() -> Any:
    try:
        import coredis
    except ImportError as exc:
        raise ImportError(_EXTRA_HINT) from exc
    return coredis


def new_pool_id() -> str:
    """A random token that names one open pool in Redis (unique across processes)."""
    return secrets.token_hex(8)


def member_name(pool_id: str, number: int) -> str:
    """The slot member of connection ``number`` of the pool ``pool_id``."""
    return f"{pool_id}:{number}"


class RedisCapacity:
    """A limit on connections shared by every pool, in any process, that uses it.

    Every pool opened with ``shared_capacity=RedisCapacity(...)`` and the same
    Redis and ``key`` counts its connections (connecting, idle, lent and
    draining alike) against one limit of ``limit``, on top of its own
    ``max_connections``.

    Args:
        url_or_client: A ``redis://`` or ``rediss://`` URL
            (``redis://:password@host:6379/0``), or a ``coredis.Redis`` client.
            From a URL, each open pool makes its own client, with a connect and
            reply timeout of 2 seconds (override them with the URL's
            ``connect_timeout`` and ``stream_timeout`` query parameters), and
            closes it when the pool closes. A client you pass is used as it is
            and never closed by the pool; when several pools share it, enter it
            yourself (``async with client:``) in a task that encloses them, as
            coredis requires.
        key: The name of the limit. Every Redis key the pools use begins with
            it (``{key}:slots``, ``{key}:waiting``), so that an operator can
            find them.
        limit: How many connections all the pools together may hold. Pools
            that share a key should agree on it: each checks its own.
        lease_ttl: Seconds after which the slots of a process that stopped
            refreshing them (it died, or lost Redis) are free again. Pools
            refresh their slots every ``lease_ttl / 3``. No key outlives the
            last pool using it by more than this.
        when_unavailable: What a pool does while Redis cannot be reached or
            fails: ``"fail"`` gives a borrower that needs a new connection
            ``PoolUnavailable`` (the Redis error as its ``__cause__``),
            ``"local"`` goes on under the pool's own ``max_connections``.

    Raises:
        ImportError: coredis is not installed (``pip install 'anyio-wspool[redis]'``).
        TypeError: An argument has the wrong type.
        ValueError: An argument is out of range, or the URL's scheme is neither
            ``redis`` nor ``rediss``.

    The URL's password and query values never appear in ``repr()``, ``str()``,
    log records or error messages.

    Examples:
        ::

            capacity = RedisCapacity("redis://127.0.0.1:6379/0", key="stt:team-a", limit=50)
            async with open_pool(uri, max_connections=16, shared_capacity=capacity) as pool:
                ...
    """

    __slots__ = ("_client", "_url", "key", "lease_ttl", "limit", "when_unavailable")

    key: str
    limit: int
    lease_ttl: float
    when_unavailable: Literal["fail", "local"]

    def __init__(
        self,
        url_or_client: str | coredis.Redis[Any],
        *,
        key: str,
        limit: int,
        lease_ttl: float = 30.0,
        when_unavailable: Literal["fail", "local"] = "fail",
    ) -> None:
        redis_lib = _import_coredis()
        self._url: str | None = None
        self._client: coredis.Redis[Any] | None = None
        if isinstance(url_or_client, str):
            self._url = _checked_url(url_or_client)
        elif isinstance(url_or_client, redis_lib.Redis):
            self._client = url_or_client
        else:
            raise TypeError(
                "url_or_client must be a redis:// or rediss:// URL (str) or a coredis.Redis "
                f"client, not {type(url_or_client).__name__}"
            )
        if not isinstance(key, str):
            raise TypeError(f"key must be a str, not {type(key).__name__}")
        if not key:
            raise ValueError("key must not be empty")
        if not isinstance(limit, int) or isinstance(limit, bool):
            raise TypeError(f"limit must be an int, not {type(limit).__name__}")
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        if not isinstance(lease_ttl, int | float) or isinstance(lease_ttl, bool):
            raise TypeError(
                f"lease_ttl must be a number of seconds, not {type(lease_ttl).__name__}"
            )
        if not math.isfinite(lease_ttl) or lease_ttl <= 0:
            raise ValueError(f"lease_ttl must be a finite number of seconds > 0, not {lease_ttl!r}")
        if when_unavailable not in ("fail", "local"):
            raise ValueError(
                f"when_unavailable must be 'fail' or 'local', not {when_unavailable!r}"
            )
        self.key = key
        self.limit = limit
        self.lease_ttl = float(lease_ttl)
        self.when_unavailable = when_unavailable

    def __repr__(self) -> str:
        if self._url is not None:
            target = repr(redact_url(self._url))
        else:
            target = f"<{type(self._client).__name__} client>"
        return (
            f"RedisCapacity({target}, key={self.key!r}, limit={self.limit}, "
            f"lease_ttl={self.lease_ttl}, when_unavailable={self.when_unavailable!r})"
        )

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[_SharedSlots]:
        """Connect one open pool to the shared limit (internal).

        Makes the client from the URL (or takes the user's), enters it, and
        yields the pool's :class:`_SharedSlots`. At exit a client made here is
        closed; the user's is left as it was. Enter and exit it in the same
        task, in the nesting order of the pool's other scopes (coredis's
        client holds a task group). Entering does no I/O: it succeeds while
        Redis is down, and the first command says so.
        """
        # coredis's client can be entered only once, but its connection pool
        # counts how often it is entered: the user's client is used through
        # its pool (so that it works whether or not the user entered it, and
        # stays open for them), one made here through itself.
        context: AbstractAsyncContextManager[object]
        if self._client is not None:
            client = self._client
            context = client.connection_pool
        else:
            assert self._url is not None
            _import_coredis()
            from coredis import Redis
            from coredis.exceptions import ConnectionError as RedisConnectionError
            from coredis.retry import ConstantRetryPolicy

            client = Redis.from_url(
                self._url,
                connect_timeout=CONNECT_TIMEOUT,
                stream_timeout=STREAM_TIMEOUT,
                # One retry on a broken connection (the first command after
                # Redis restarted finds its pooled connection closed); none on
                # a timeout, which would only double the wait.
                retry_policy=ConstantRetryPolicy((RedisConnectionError,), retries=1, delay=0),
            )
            context = client
        await context.__aenter__()
        try:
            yield _SharedSlots(self, client)
        finally:
            # The body's exception is not passed on: coredis would wrap it in
            # an ExceptionGroup (its client holds a task group). No shield is
            # needed (nor possible: the client's task group must be exited in
            # the scope it was entered in): exiting cancels the client's own
            # tasks and waits for nothing else.
            await context.__aexit__(None, None, None)


def _checked_url(url: str) -> str:
    # The URL is never quoted in these errors: one that does not parse may
    # not show where its password ends (a "/" in it, not percent-encoded).
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError on a malformed port)
    except ValueError:
        raise ValueError(
            "url_or_client is not a valid Redis URL (redis://[[user]:password@]host[:port][/db]; "
            "percent-encode a password that has '/', '@', ':' or '#' in it)"
        ) from None
    if parts.scheme not in _SCHEMES:
        scheme = parts.scheme if parts.scheme.isalnum() else "?"
        raise ValueError(f"url_or_client must be a redis:// or rediss:// URL, not a {scheme}: one")
    if not parts.hostname:
        raise ValueError(
            "url_or_client has no host (percent-encode a password that has '/', '@', ':' "
            "or '#' in it)"
        )
    return url


class _SharedSlots:
    """One open pool's handle on the shared limit (internal).

    Each method is one round trip to Redis. A failure of Redis is raised as
    it comes from coredis: a ``coredis.exceptions.RedisError`` (refused
    connection, authentication, script error...) or the built-in
    ``TimeoutError`` (no reply within the client's ``stream_timeout``); the
    tuple :attr:`errors` holds both, for an ``except`` clause. The client
    recovers by itself once Redis is back (scripts are loaded again after a
    restart emptied Redis's script cache).

    Cancellation and timeouts: a call that was cancelled or timed out may
    still be carried out by Redis. For :meth:`take`, give the member back
    (harmless if it holds no slot) or let its lease run out.
    """

    __slots__ = (
        "_client",
        "_give_back",
        "_members",
        "_refresh",
        "_slots_key",
        "_take",
        "_ttl_ms",
        "_waiting",
        "_waiting_key",
        "errors",
        "in_use",
        "limit",
        "pool_id",
    )

    def __init__(self, capacity: RedisCapacity, client: coredis.Redis[Any]) -> None:
        from coredis.exceptions import RedisError

        self._client = client
        #: What a failure of Redis raises: catch these to tell it from a bug.
        self.errors: tuple[type[Exception], ...] = (RedisError, TimeoutError)
        self.limit = capacity.limit
        self._ttl_ms = max(1, round(capacity.lease_ttl * 1000))
        self._slots_key = f"{capacity.key}:slots"
        self._waiting_key = f"{capacity.key}:waiting"
        self._take: Script[Any] = client.register_script(_TAKE)
        self._give_back: Script[Any] = client.register_script(_GIVE_BACK)
        self._refresh: Script[Any] = client.register_script(_REFRESH)
        self._waiting: Script[Any] = client.register_script(_WAITING)
        self._members = itertools.count()
        #: This pool's name in Redis (see :func:`new_pool_id`).
        self.pool_id = new_pool_id()
        #: Slots held by all pools together, as last seen (None before the first call).
        self.in_use: int | None = None

    def new_member(self) -> str:
        """A slot member for this pool's next connection, never used before."""
        return member_name(self.pool_id, next(self._members))

    async def take(self, member: str) -> tuple[bool, int]:
        """Take a slot for ``member`` if fewer than ``limit`` are held.

        Slots whose lease ended are dropped first. The slot's lease lasts
        ``lease_ttl`` from now (Redis's clock). Taking a member that already
        holds a slot renews it and succeeds.

        Returns:
            ``(taken, in_use)``: whether the slot was taken, and how many slots
            are held after the call (this one included).
        """
        args: list[str | int] = [member, self.limit, self._ttl_ms]
        reply: Any = await self._take(keys=[self._slots_key], args=args)
        taken, in_use = _ints(reply)
        self.in_use = in_use
        return bool(taken), in_use

    async def give_back(self, member: str) -> int:
        """Give the slot of ``member`` back (nothing happens if it holds none).

        If this fails (Redis is down), the slot comes back by itself when its
        lease ends.

        Returns:
            How many slots are held after the call.
        """
        return await self.give_back_all([member])

    async def give_back_all(self, members: Iterable[str]) -> int:
        """Give the slots of all ``members`` back in one round trip (for a pool that closes).

        Returns:
            How many slots are held after the call.
        """
        names = list(members)
        in_use = _int(await self._give_back(keys=[self._slots_key], args=names))
        self.in_use = in_use
        return in_use

    async def count_in_use(self) -> int:
        """How many slots all the pools hold right now (slots whose lease ended not counted)."""
        return await self.give_back_all([])

    async def refresh(self, members: Iterable[str]) -> set[str]:
        """Renew the leases of ``members`` to ``lease_ttl`` from now.

        Returns:
            The members that no longer held a slot (their lease had ended, or
            they were given back): they are not given a new one, and the caller
            must treat their connections as holding no slot.
        """
        names = list(members)
        reply: Any = await self._refresh(keys=[self._slots_key], args=[self._ttl_ms, *names])
        items = cast(Sequence[Any], reply)
        self.in_use = _int(items[0])
        return {_str(item) for item in items[1:]}

    async def set_waiting(self, pool_id: str, need: int, ttl: float | None = None) -> int:
        """Record how many slots the pool ``pool_id`` waits for (0: none, the entry goes).

        The entry lasts ``ttl`` seconds (default ``lease_ttl``) unless set
        again: a pool that keeps waiting sets it again before then, and the
        entry of a pool that can no longer reach Redis lapses on its own.

        Returns:
            How many slots *other* pools wait for, as :meth:`others_waiting`.
        """
        ttl_ms = self._ttl_ms if ttl is None else max(1, round(ttl * 1000))
        args: list[str | int] = [pool_id, "set", ttl_ms, max(0, need)]
        return _int(await self._waiting(keys=[self._waiting_key], args=args))

    async def others_waiting(self, pool_id: str) -> int:
        """How many slots pools other than ``pool_id`` are waiting for right now."""
        args: list[str | int] = [pool_id, "count", self._ttl_ms, 0]
        return _int(await self._waiting(keys=[self._waiting_key], args=args))


def _int(value: object) -> int:
    return int(cast(Any, value))


def _ints(reply: object) -> tuple[int, int]:
    first, second = cast(Sequence[Any], reply)
    return int(first), int(second)


def _str(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
