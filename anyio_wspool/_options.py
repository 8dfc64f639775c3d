"""Every option of the pool, its default and its validation.

Options are checked once, when the pool is created, so that a wrong type or
value fails before any connection is attempted, with a message that names the
option and the value it was given.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypedDict

__all__ = ("Config", "PoolOptions", "WsOptions", "parse_options")

#: options of SPEC.md that a later version implements: refused until they work
NOT_YET_BUILT = frozenset(
    {
        "max_connecting",
        "max_waiting",
        "lifetime_margin",
        "failure_threshold",
        "failure_window",
        "circuit_reset",
        "lease_warning",
        "on_event",
    }
)

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
    """The pool's own options (SPEC.md, "open_pool"), for type checkers."""

    max_connections: int
    min_connections: int
    acquire_timeout: float | None
    connect_timeout: float
    connect_attempts: int
    retry_backoff: float
    retry_backoff_max: float
    idle_timeout: float | None
    max_lifetime: float | None
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


@dataclass(frozen=True, slots=True)
class Config:
    max_connections: int = 50
    min_connections: int = 0
    acquire_timeout: float | None = 30.0
    connect_timeout: float = 10.0
    connect_attempts: int = 3
    retry_backoff: float = 0.5
    retry_backoff_max: float = 10.0
    idle_timeout: float | None = 60.0
    max_lifetime: float | None = None
    refresh_on_acquire: bool = False
    cleanup_interval: float = 5.0
    check_on_acquire: bool = False
    on_connect: Callable[[Any], Awaitable[object]] | None = None
    on_release: Callable[[Any], Awaitable[object]] | None = None
    drain_on_release: bool = False
    drain_timeout: float = 10.0
    drain_quiet_period: float = 2.0
    drain_condition: Callable[[Any], bool] | None = None
    on_drained: Callable[[Any], object] | None = None
    close_timeout: float = 5.0
    #: httpx-ws keywords, validated, as given
    ws: dict[str, Any] = field(default_factory=dict)


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


def check_callable(name: str, value: object, *, allow_none: bool = True) -> Any:
    if value is None and allow_none:
        return None
    if not callable(value):
        raise TypeError(f"{name} must be callable, got {value!r}")
    return value


def _check_ws_option(name: str, value: Any) -> Any:
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
    if name == "follow_redirects" and not isinstance(value, bool):
        raise TypeError(f"follow_redirects must be a bool, got {value!r}")
    return value


def parse_options(options: Mapping[str, Any], *, websocket: bool) -> Config:
    """Validate ``options`` (the keywords of ``open_pool`` but for uri/connect/close/client)."""
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
            ws[name] = _check_ws_option(name, value)
        elif name == "max_connections" or name == "connect_attempts":
            pool[name] = check_int(name, value, minimum=1)
        elif name == "min_connections":
            pool[name] = check_int(name, value, minimum=0)
        elif name == "acquire_timeout":
            pool[name] = check_seconds(name, value, allow_none=True, allow_zero=True)
        elif name in {
            "connect_timeout",
            "close_timeout",
            "retry_backoff_max",
            "cleanup_interval",
            "drain_timeout",
            "drain_quiet_period",
        }:
            pool[name] = check_seconds(name, value)
        elif name == "retry_backoff":
            pool[name] = check_seconds(name, value, allow_zero=True)
        elif name in {"idle_timeout", "max_lifetime"}:
            pool[name] = check_seconds(name, value, allow_none=True)
        elif name in {"refresh_on_acquire", "check_on_acquire", "drain_on_release"}:
            pool[name] = check_bool(name, value)
        elif name in {"on_connect", "on_release", "drain_condition", "on_drained"}:
            pool[name] = check_callable(name, value)
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
    return config


ConnectCallable = Callable[[], Any]
CloseCallable = Callable[[Any], Awaitable[object]]
