"""The pool's pure functions and tables, tested directly (no event loop, no server)."""

from __future__ import annotations

import ast
import math
import random
import re
import traceback
import typing
from dataclasses import fields
from pathlib import Path

import httpx
import pytest
from httpx_ws import WebSocketDisconnect, WebSocketNetworkError, WebSocketUpgradeError
from hypothesis import given
from hypothesis import strategies as st

from anyio_wspool import PoolStats
from anyio_wspool._conn import TRANSITIONS, Reason, State
from anyio_wspool._host import ConnectionHost
from anyio_wspool._options import WS_OPTIONS, Config, PoolOptions, WsOptions
from anyio_wspool._redact import describe_error, redact_text, redact_url, scrub_error
from anyio_wspool._stats import COUNTER_NAMES
from anyio_wspool._transient import is_transient

README = Path(__file__).resolve().parent.parent / "README.md"


def _upgrade_error(status: int) -> WebSocketUpgradeError:
    request = httpx.Request("GET", "http://127.0.0.1/ws")
    return WebSocketUpgradeError(httpx.Response(status, request=request))


class _Answered(Exception):
    """Another client's error that carries the HTTP answer (like websockets' InvalidStatus)."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.response = type("Response", (), {"status_code": status})()


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (httpx.ConnectError("refused"), True),
        (httpx.ConnectTimeout("slow"), True),
        (httpx.ReadError("reset"), True),
        (ConnectionRefusedError(), True),
        (TimeoutError(), True),
        (WebSocketNetworkError("broke"), True),
        (_upgrade_error(503), True),
        (_upgrade_error(500), True),
        (_upgrade_error(401), False),
        (_upgrade_error(404), False),
        (_Answered(429), False),
        (_Answered(502), True),
        (httpx.UnsupportedProtocol("ftp"), False),
        (httpx.InvalidURL("bad"), False),
        (httpx.LocalProtocolError("Illegal header value"), False),
        (WebSocketDisconnect(1001), True),
        (WebSocketDisconnect(1013), True),
        (WebSocketDisconnect(1008), False),
        (WebSocketDisconnect(4000), False),
        (ValueError("a bug"), False),
        (KeyError("a bug"), False),
    ],
    ids=repr,
)
def test_is_transient(error: Exception, transient: bool) -> None:
    assert is_transient(error) is transient


@pytest.mark.parametrize(
    ("url", "shown", "hidden"),
    [
        ("wss://user:hunter2@h.example/ws", "wss://user:***@h.example/ws", "hunter2"),
        ("wss://h.example/ws?api_key=SEKRET&v=1", "wss://h.example/ws?api_key=***&v=***", "SEKRET"),
        ("wss://h.example/ws?eyJhbGciOi", "wss://h.example/ws?***", "eyJhbGciOi"),
        ("wss://h.example/ws?v=1&eyJhbGciOi", "wss://h.example/ws?v=***&***", "eyJhbGciOi"),
        ("ws://127.0.0.1:8765/echo", "ws://127.0.0.1:8765/echo", None),
        ("wss://u:pw@h:99999/ws?SEKRET", "wss://u:***@h:99999/ws?***", "SEKRET"),
    ],
)
def test_redact_url(url: str, shown: str, hidden: str | None) -> None:
    redacted = redact_url(url)
    assert redacted == shown
    if hidden is not None:
        assert hidden not in redacted
    assert redact_url(httpx.URL(url)) == redact_url(url)


def test_redact_text_masks_every_url_and_keeps_the_rest() -> None:
    text = "failed: wss://a:pw1@x/ws?k=v1 then https://y/?token=v2 (attempt 3)"
    redacted = redact_text(text)
    for secret in ("pw1", "v1", "v2"):
        assert secret not in redacted
    assert redacted.startswith("failed: wss://a:***@x/ws?k=***")
    assert redacted.endswith("(attempt 3)")


def test_describe_error_redacts_the_message_and_the_traceback() -> None:
    try:
        raise ConnectionError("could not reach wss://h/ws?api_key=SEKRET")
    except ConnectionError as exc:
        error = exc
    for text in (describe_error(error), describe_error(error, with_traceback=True)):
        assert "SEKRET" not in text
        assert "ConnectionError" in text
        assert "api_key=***" in text


@pytest.mark.parametrize(
    "text",
    [
        "Illegal header value b'Bearer SEKRET\\n'",
        'Illegal header value b"Bearer SEKRET \\"quoted\\""',
        "illegal header value: 'SEKRET'",
    ],
)
def test_redact_text_masks_a_quoted_header_value(text: str) -> None:
    redacted = redact_text(text)
    assert "SEKRET" not in redacted
    assert redacted.lower().startswith("illegal header value")
    assert redacted.endswith("***")


def test_scrub_error_masks_the_error_and_its_chain_in_place() -> None:
    inner = ValueError("Illegal header value b'Bearer SEKRET\\n'")
    outer = httpx.LocalProtocolError(str(inner))
    outer.__cause__ = inner
    wrapper = ConnectionError(inner, 3)
    for error in (outer, wrapper):
        scrub_error(error)
        text = "".join(traceback.format_exception(error))
        assert "SEKRET" not in text
    assert type(outer) is httpx.LocalProtocolError
    assert wrapper.args[1] == 3


def _host(**options: float) -> ConnectionHost[object]:
    config = Config(**options)  # type: ignore[arg-type]
    return ConnectionHost(config, None, None, None)  # type: ignore[arg-type]


@given(
    base=st.floats(min_value=0.0, max_value=5.0),
    cap=st.floats(min_value=0.001, max_value=20.0),
    attempt=st.integers(min_value=1, max_value=40),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_backoff_is_full_jitter_under_the_doubling_cap(
    base: float, cap: float, attempt: int, seed: int
) -> None:
    host = _host(retry_backoff=base, retry_backoff_max=cap)
    host._rng = random.Random(seed)
    delay = host.backoff(attempt)
    assert 0.0 <= delay <= min(cap, base * 2 ** (attempt - 1))


def test_backoff_reaches_its_bounds() -> None:
    host = _host(retry_backoff=0.5, retry_backoff_max=3.0)
    host._rng.uniform = lambda a, b: b  # type: ignore[method-assign]
    assert [host.backoff(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    host._rng.uniform = lambda a, b: a  # type: ignore[method-assign]
    assert host.backoff(3) == 0.0


@given(max_lifetime=st.floats(min_value=0.001, max_value=1e6), seed=st.integers(0, 2**32))
def test_lifetime_is_drawn_between_90_and_100_percent(max_lifetime: float, seed: int) -> None:
    host = _host()
    host._rng = random.Random(seed)
    assert 0.9 * max_lifetime <= host.lifetime(max_lifetime) <= max_lifetime


def test_every_state_can_end_closed_and_closed_is_final() -> None:
    assert TRANSITIONS[State.CLOSED] == frozenset()
    assert TRANSITIONS[State.CLOSING] == {State.CLOSED}
    for state in State:
        if state is not State.CLOSED:
            assert State.CLOSING in TRANSITIONS[state] or state is State.CLOSING


def test_retirement_reasons_name_what_events_report() -> None:
    # The reasons that events and logs use, as the documentation names them.
    for name in (
        "idle",
        "expired",
        "ping_failed",
        "stale_data",
        "error_in_block",
        "server_closed",
        "invalidated",
        "pool_closed",
    ):
        assert Reason(name).value == name
    discarded = {reason.value for reason in Reason if reason.discarded}
    assert discarded == {
        "ping_failed",
        "stale_data",
        "error_in_block",
        "server_closed",
        "discarded",
        "release_failed",
        "failed",
    }


def test_the_typed_options_match_the_option_table() -> None:
    table = {field.name for field in fields(Config)} - {"ws"}
    assert set(typing.get_type_hints(PoolOptions)) == table
    assert set(typing.get_type_hints(WsOptions)) - table == WS_OPTIONS


def test_every_option_and_its_default_is_in_the_readme() -> None:
    rows = re.findall(r"^\| `([a-z_]+)`(?:, `([a-z_]+)`)? \| ([^|]+) \|", README.read_text(), re.M)
    documented: dict[str, str] = {}
    for first, second, defaults in rows:
        values = [value.strip() for value in defaults.split(",")]
        for name, value in zip([first, second] if second else [first], values, strict=False):
            documented[name] = value
    for field in fields(Config):
        if field.name == "ws":
            continue
        assert field.name in documented, f"{field.name} is not in the README's option table"
        assert documented[field.name] == repr(field.default), field.name


def test_stats_counters_are_the_counter_fields_of_pool_stats() -> None:
    names = [field.name for field in fields(PoolStats)]
    assert names[-len(COUNTER_NAMES) :] == list(COUNTER_NAMES)


PACKAGE = README.parent / "anyio_wspool"
CORE = ("_pool.py", "_conn.py", "_host.py", "_waiters.py", "_dispatch.py")


@pytest.mark.parametrize("module", CORE)
def test_the_core_does_not_import_the_websocket_stack(module: str) -> None:
    tree = ast.parse((PACKAGE / module).read_text())
    # What runs: every statement but the `if TYPE_CHECKING:` blocks (types only).
    running = [
        node
        for node in tree.body
        if not (isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING")
    ]
    imported: set[str] = set()
    for node in (inner for top in running for inner in ast.walk(top)):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split(".")[0])
    assert "anyio" in imported
    assert imported.isdisjoint({"httpx", "httpx_ws", "wsproto"}), imported


def test_the_package_stands_on_its_own_docs() -> None:
    for path in PACKAGE.glob("*.py"):
        assert "SPEC" not in path.read_text(), path.name


@given(st.lists(st.booleans(), max_size=8), st.integers(0, 8), st.booleans())
def test_a_waiter_put_back_first_keeps_its_place(
    stayed: list[bool], after: int, endless: bool
) -> None:
    # A borrower whose check_on_acquire ping failed goes back behind the
    # waiters that were queued when it began (those still there) and ahead of
    # every one that came after it: its place, and the queue's deadline order
    # (the single expiry task watches only the head), whatever the deadlines,
    # infinite ones (acquire_timeout=None) included.
    from anyio_wspool._waiters import Waiter, WaiterQueue

    clock = iter(range(100))

    def waiter() -> Waiter[object]:
        new: Waiter[object] = Waiter(fresh=True)
        new.deadline = math.inf if endless else float(next(clock))
        return new

    before = [waiter() for _ in stayed]
    back = waiter()
    later = [waiter() for _ in range(after)]
    queue: WaiterQueue[object] = WaiterQueue()
    for one, stays in zip(before, stayed, strict=True):
        if stays:
            queue.add(one)
    for one in later:
        queue.add(one)
    queue.add(back, ahead=frozenset(before))
    expected = [one for one, stays in zip(before, stayed, strict=True) if stays]
    assert list(queue) == [*expected, back, *later]
    deadlines = [one.deadline for one in queue]
    assert deadlines == sorted(deadlines)
