"""Every argument of ``open_pool``: options, defaults, validation, and the connector.

Everything is checked once, when the pool is created, so that a wrong type or
value fails before any connection is attempted, with a message that names the
option and the value it was given (never the value of what may be a secret).
:func:`configure` turns ``open_pool``'s arguments into a :class:`Config` and
the :class:`~._connector.Connector` that the pool core will use.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypedDict

import httpx

from ._connector import Connector, GenericConnector
from ._httpx_ws import HttpxWsConnector, check_httpx_option, check_uri, httpx_library
from ._redis import RedisCapacity

__all__ = ("Config", "PoolOptions", "WsOptions", "configure", "parse_options")

#: options of the documented API that a later version implements: refused until they work
NOT_YET_BUILT: frozenset[str] = frozenset()

#: keywords handed to httpx-ws's connect (and through it to ``AsyncClient.stream``)
WS_OPTIONS = frozenset(
    {
        "headers",
        "subprotocols",
        "max_message_size_bytes",
        "queue_size",
        "keepalive_ping_interval_seconds",
        "keepalive_ping_timeout_seconds",
        "session_class",
        "params",
        "cookies",
        "auth",
        "timeout",
        "extensions",
        "follow_redirects",
    }
)


class PoolOptions(TypedDict, total=False):
    """The pool's own options, for type checkers (:class:`Config` has their defaults)."""

    max_connections: int
    min_connections: int
    acquire_timeout: float | None
    connect_timeout: float
    connect_attempts: int
    retry_backoff: float
    retry_backoff_max: float
    idle_timeout: float | None
    max_lifetime: float | None
    lifetime_margin: float
    max_waiting: int | None
    max_connecting: int | None
    lease_warning: float | None
    failure_threshold: int | None
    failure_window: float
    circuit_reset: float
    on_event: Callable[[Any], object] | None
    refresh_on_acquire: bool
    cleanup_interval: float
    check_on_acquire: bool
    on_connect: Callable[[Any], Awaitable[object]] | None
    on_release: Callable[[Any], Awaitable[object]] | None
    drain_on_release: bool
    drain_timeout: float
    drain_quiet_period: float
    drain_condition: Callable[[Any], bool] | None
    on_drained: Callable[[Any], object] | None
    close_timeout: float
    shared_capacity: RedisCapacity | None


class WsOptions(PoolOptions, total=False):
    """The pool's options plus httpx-ws's, for a pool given a URI."""

    headers: Mapping[str, str] | Any
    subprotocols: list[str] | None
    max_message_size_bytes: int
    queue_size: int
    keepalive_ping_interval_seconds: float | None
    keepalive_ping_timeout_seconds: float | None
    session_class: type[Any]
    params: Any
    cookies: Any
    auth: Any
    timeout: Any
    extensions: dict[str, Any]
    follow_redirects: bool


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_int(name: str, value: object, *, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return value


def check_seconds(
    name: str, value: object, *, allow_none: bool = False, allow_zero: bool = False
) -> float | None:
    if value is None:
        if allow_none:
            return None
        raise TypeError(f"{name} must be a number of seconds, got None")
    if not _is_number(value):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    seconds = float(value)  # type: ignore[arg-type]
    if math.isnan(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound} seconds, got {value!r}")
    return seconds


def check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return value


def check_callable(name: str, value: object, allow_none: bool = True) -> Any:
    if value is None and allow_none:
        return None
    if not callable(value):
        raise TypeError(f"{name} must be callable, got {value!r}")
    return value


def check_capacity(name: str, value: object) -> RedisCapacity | None:
    if value is not None and not isinstance(value, RedisCapacity):
        raise TypeError(f"{name} must be a RedisCapacity or None, got {type(value).__name__}")
    return value


def _option(default: object, check: Callable[[str, Any], Any]) -> Any:
    """A field of :class:`Config`: its default and the function that validates it."""
    return field(default=default, metadata={"check": check})


def _count(minimum: int) -> Callable[[str, Any], int]:
    return lambda name, value: check_int(name, value, minimum=minimum)


def _count_or_none(minimum: int) -> Callable[[str, Any], int | None]:
    return lambda name, value: None if value is None else check_int(name, value, minimum=minimum)


def _seconds(*, allow_none: bool = False, allow_zero: bool = False) -> Callable[[str, Any], Any]:
    return lambda name, value: check_seconds(
        name, value, allow_none=allow_none, allow_zero=allow_zero
    )


@dataclass(frozen=True, slots=True)
class Config:
    """Every option of the pool, its default and its check: the one table of them.

    ``PoolOptions`` repeats the names and types for type checkers (a test keeps
    the two in step); the option table of the documentation explains each one.
    """

    max_connections: int = _option(50, _count(1))
    min_connections: int = _option(0, _count(0))
    acquire_timeout: float | None = _option(30.0, _seconds(allow_none=True, allow_zero=True))
    connect_timeout: float = _option(10.0, _seconds())
    connect_attempts: int = _option(3, _count(1))
    retry_backoff: float = _option(0.5, _seconds(allow_zero=True))
    retry_backoff_max: float = _option(10.0, _seconds())
    idle_timeout: float | None = _option(60.0, _seconds(allow_none=True))
    max_lifetime: float | None = _option(None, _seconds(allow_none=True))
    lifetime_margin: float = _option(0.0, _seconds(allow_zero=True))
    max_waiting: int | None = _option(None, _count_or_none(0))
    max_connecting: int | None = _option(4, _count_or_none(1))
    lease_warning: float | None = _option(None, _seconds(allow_none=True))
    failure_threshold: int | None = _option(None, _count_or_none(1))
    failure_window: float = _option(5.0, _seconds())
    circuit_reset: float = _option(10.0, _seconds())
    on_event: Callable[[Any], object] | None = _option(None, check_callable)
    refresh_on_acquire: bool = _option(False, check_bool)
    cleanup_interval: float = _option(5.0, _seconds())
    check_on_acquire: bool = _option(False, check_bool)
    on_connect: Callable[[Any], Awaitable[object]] | None = _option(None, check_callable)
    on_release: Callable[[Any], Awaitable[object]] | None = _option(None, check_callable)
    drain_on_release: bool = _option(False, check_bool)
    drain_timeout: float = _option(10.0, _seconds())
    drain_quiet_period: float = _option(2.0, _seconds())
    drain_condition: Callable[[Any], bool] | None = _option(None, check_callable)
    on_drained: Callable[[Any], object] | None = _option(None, check_callable)
    close_timeout: float = _option(5.0, _seconds())
    shared_capacity: RedisCapacity | None = _option(None, check_capacity)
    #: httpx-ws keywords, validated, as given (not an option of its own)
    ws: dict[str, Any] = field(default_factory=dict)


#: each option's check, by name
_CHECKS: dict[str, Callable[[str, Any], Any]] = {
    f.name: f.metadata["check"] for f in fields(Config) if "check" in f.metadata
}


def _check_ws_option(name: str, value: Any, lib: Any) -> Any:
    if name in {"max_message_size_bytes", "queue_size"}:
        return check_int(name, value, minimum=1)
    if name in {"keepalive_ping_interval_seconds", "keepalive_ping_timeout_seconds"}:
        return check_seconds(name, value, allow_none=True)
    if name == "subprotocols":
        if value is None:
            return None
        if isinstance(value, str) or not all(isinstance(item, str) for item in value):
            raise TypeError(f"subprotocols must be a list of str, got {value!r}")
        return list(value)
    if name == "follow_redirects":
        return check_bool(name, value)
    # headers, auth, cookies, params, timeout, extensions: httpx's own
    # arguments, whose values may be secrets; checked by the connector.
    return check_httpx_option(name, value, lib)


def parse_options(options: Mapping[str, Any], *, websocket: bool, lib: Any = httpx) -> Config:
    """Validate ``options`` (the keywords of ``open_pool`` but for uri/connect/close/client).

    ``lib`` is the client's httpx (``httpx``, or ``httpx2``) for the options
    passed on to it.
    """
    pool: dict[str, Any] = {}
    ws: dict[str, Any] = {}
    for name, value in options.items():
        if name in NOT_YET_BUILT:
            raise NotImplementedError(
                f"option {name}={value!r} is part of the anyio_wspool contract but is not "
                "implemented in this version; it is refused rather than silently ignored"
            )
        if name in WS_OPTIONS:
            if not websocket:
                raise TypeError(
                    f"option {name!r} is an httpx-ws option: it applies to a pool given "
                    "a uri, not to one given connect=; configure your connector instead"
                )
            ws[name] = _check_ws_option(name, value, lib)
        elif name in _CHECKS:
            pool[name] = _CHECKS[name](name, value)
        else:
            # the value is not shown: an unknown keyword may well be a secret
            raise TypeError(f"open_pool() got an unexpected option {name!r}")
    config = Config(**pool, ws=ws)
    if config.min_connections > config.max_connections:
        raise ValueError(
            f"min_connections={config.min_connections} is more than "
            f"max_connections={config.max_connections}"
        )
    if config.drain_on_release and not websocket:
        raise TypeError(
            "drain_on_release=True reads a WebSocket's server messages: it applies to a pool "
            "given a uri, not to one given connect="
        )
    if config.check_on_acquire and not websocket:
        raise TypeError(
            "check_on_acquire=True pings a WebSocket before lending it: it applies to a pool "
            "given a uri, not to one given connect="
        )
    if config.lifetime_margin and (
        config.max_lifetime is None or config.lifetime_margin >= 0.9 * config.max_lifetime
    ):
        raise ValueError(
            f"lifetime_margin={config.lifetime_margin} needs a max_lifetime of which it is "
            "less than 90 % (a connection's lifetime is drawn between 90 % and 100 % of "
            f"max_lifetime, here {config.max_lifetime}): no connection could ever be lent"
        )
    return config


def configure(
    uri: object,
    connect: Callable[[], Any] | None,
    close: Callable[[Any], Awaitable[object]] | None,
    client: object,
    options: Mapping[str, Any],
) -> tuple[Config, Connector[Any]]:
    """Validate ``open_pool``'s arguments; return the configuration and the connector."""
    connector: Connector[Any]
    if connect is not None:
        if uri is not None:
            raise TypeError("pass either a uri or connect=, not both")
        if client is not None:
            raise TypeError("client= applies to a pool given a uri, not to one given connect=")
        check_callable("connect", connect, allow_none=False)
        check_callable("close", close)
        config = parse_options(options, websocket=False)
        connector = GenericConnector(connect, close, config.close_timeout)
    else:
        if uri is None:
            raise TypeError(
                "open_pool() needs a uri (ws://, wss://, http://, https://) or connect="
            )
        if close is not None:
            raise TypeError(
                "close= goes with connect=; a pool given a uri closes its WebSocket sessions itself"
            )
        url = check_uri(uri)
        config = parse_options(options, websocket=True, lib=httpx_library(client))
        connector = HttpxWsConnector(
            url,
            client,
            config.ws,
            connect_timeout=config.connect_timeout,
            close_timeout=config.close_timeout,
        )
    connector.check_capacity(config.max_connections)
    return config, connector
