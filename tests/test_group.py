"""Keyed pools: ``open_pool_group``, one pool per URI or key, under one cap for the group."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import pytest

from anyio_wspool import (
    PoolClosed,
    PoolError,
    PoolEvent,
    PoolOverloaded,
    PoolTimeout,
    RetiredEvent,
    WebSocketPoolGroup,
    open_pool_group,
)

from ._util import until
from ._wsserver import WSServer, serve_ws

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def two_servers() -> AsyncIterator[tuple[WSServer, WSServer]]:
    async with serve_ws() as a, serve_ws() as b:
        yield a, b


async def _echo(ws: Any, text: str = "x") -> None:
    await ws.send_text(text)
    assert await ws.receive_text() == text


async def test_one_pool_per_uri_created_on_first_use() -> None:
    async with two_servers() as (a, b), open_pool_group() as group:
        assert dict(group.pools) == {}
        async with group.connection(a.url) as ws:
            await _echo(ws)
        async with group.connection(a.url) as ws:
            await _echo(ws)
        async with group.connection(b.url) as ws:
            await _echo(ws)
        assert set(group.pools) == {a.url, b.url}
        assert a.handshakes == 1  # reused within its key
        assert b.handshakes == 1
        assert group.pools[a.url].stats.reused == 1


async def test_keys_given_by_the_user() -> None:
    async with two_servers() as (a, _), open_pool_group() as group:
        async with group.connection(a.url, key="tenant-1") as one:
            async with group.connection(a.url, key="tenant-2") as two:
                assert one is not two
        assert set(group.pools) == {"tenant-1", "tenant-2"}
        assert a.handshakes == 2
        with pytest.raises(ValueError, match="tenant-1"):
            async with group.connection("ws://127.0.0.1:1/other", key="tenant-1"):
                pass


async def test_per_key_cap() -> None:
    async with (
        two_servers() as (a, b),
        open_pool_group(max_connections=10, max_connections_per_key=2, acquire_timeout=0) as group,
    ):
        first = await group.acquire(a.url)
        second = await group.acquire(a.url)
        with pytest.raises(PoolTimeout):
            await group.acquire(a.url)  # the key's pool is full
        third = await group.acquire(b.url)  # another key is not
        for ws in (first, second, third):
            await group.release(ws)
        assert group.open_connections == 3
        assert group.max_connections == 10
        assert group.max_connections_per_key == 2


async def test_group_cap_closes_idle_of_another_key_only_at_the_cap() -> None:
    events: list[PoolEvent] = []
    async with (
        two_servers() as (a, b),
        open_pool_group(max_connections=2, on_event=events.append) as group,
    ):
        async with group.connection(a.url) as ws:
            await _echo(ws)
        # One idle connection of key A; key B has room under the cap: A's stays open.
        async with group.connection(b.url) as ws:
            await _echo(ws)
            assert a.open_connections == 1
            assert group.open_connections == 2
            # Now at the cap: a second connection for B closes A's idle one.
            async with group.connection(b.url) as other:
                await _echo(other)
                assert group.open_connections == 2
                await a.wait_until(lambda: a.open_connections == 0)
        assert b.handshakes == 2
        assert group.pools[a.url].stats.closed == 1
    retired = [event for event in events if isinstance(event, RetiredEvent)]
    assert retired[0].reason == "make_room"
    assert retired[0].target == a.url


async def test_at_the_cap_with_nothing_idle_a_borrower_waits_for_any_key() -> None:
    async with two_servers() as (a, b), open_pool_group(max_connections=2) as group:
        held_a = await group.acquire(a.url)
        held_b = await group.acquire(b.url)
        got: list[Any] = []

        async def borrow() -> None:
            async with group.connection(b.url) as ws:
                await _echo(ws)
                got.append(ws)

        async with anyio.create_task_group() as tg:
            tg.start_soon(borrow)
            await until(lambda: group.pools[b.url].stats.waiting == 1)
            assert b.handshakes == 1
            # A's connection comes back idle: it is closed to make room for B.
            await group.release(held_a)
        assert len(got) == 1
        assert got[0] is not held_b
        assert b.handshakes == 2
        await a.wait_until(lambda: a.open_connections == 0)
        await group.release(held_b)


async def test_capacity_freed_by_one_key_is_shared_in_turn() -> None:
    # Both keys wait at the group's cap; each connection that closes lets the
    # next key in line open one.
    async with two_servers() as (a, b), open_pool_group(max_connections=2) as group:
        held = [await group.acquire(a.url), await group.acquire(a.url)]
        served: list[str] = []

        async def borrow(url: str, name: str) -> None:
            async with group.connection(url) as ws:
                await _echo(ws)
                served.append(name)

        async with anyio.create_task_group() as tg:
            tg.start_soon(borrow, b.url, "b")
            await until(lambda: b.url in group.pools and group.pools[b.url].stats.waiting == 1)
            await group.release(held.pop(), discard=True)
            await until(lambda: served == ["b"])
            await group.release(held.pop(), discard=True)
        assert served == ["b"]
        assert group.open_connections <= 2


async def test_cancelled_borrower_waiting_for_the_group_leaves_no_trace() -> None:
    async with two_servers() as (a, b), open_pool_group(max_connections=1) as group:
        held = await group.acquire(a.url)
        with anyio.move_on_after(0.05):
            async with group.connection(b.url):
                pytest.fail("no capacity: the borrower must not be served")
        assert group.pools[b.url].stats.waiting == 0
        await group.release(held)
        async with group.connection(b.url) as ws:  # A's idle one makes room
            await _echo(ws)
        assert group.open_connections == 1


async def test_leaving_the_group_closes_every_pool() -> None:
    async with two_servers() as (a, b):
        async with open_pool_group() as group:
            for url in (a.url, b.url):
                async with group.connection(url) as ws:
                    await _echo(ws)
            pools = list(group.pools.values())
        assert group.is_closed
        assert all(pool.is_closed for pool in pools)
        await a.wait_until(lambda: a.open_connections == 0)
        await b.wait_until(lambda: b.open_connections == 0)
        with pytest.raises(PoolClosed):
            async with group.connection(a.url):
                pass


async def test_cancelled_scope_around_the_group_still_closes_every_pool() -> None:
    async with two_servers() as (a, b):
        with anyio.CancelScope() as scope:
            async with open_pool_group() as group:
                for url in (a.url, b.url):
                    await group.acquire(url)  # still lent when the group closes
                scope.cancel()
                await anyio.sleep_forever()
        assert scope.cancelled_caught
        await a.wait_until(lambda: a.open_connections == 0)
        await b.wait_until(lambda: b.open_connections == 0)


async def test_a_group_closed_before_it_was_opened_refuses_to_open() -> None:
    group = open_pool_group()
    await group.aclose()
    with anyio.fail_after(2), pytest.raises(PoolClosed, match="before it was opened"):
        async with group:
            pytest.fail("a closed group must not open")


async def test_error_in_the_block_propagates_unwrapped() -> None:
    async with two_servers() as (a, _):
        with pytest.raises(KeyError):
            async with open_pool_group() as group:
                async with group.connection(a.url) as ws:
                    await _echo(ws)
                raise KeyError("mine")
        await a.wait_until(lambda: a.open_connections == 0)


async def test_release_of_something_the_group_did_not_lend() -> None:
    async with two_servers() as (a, _), open_pool_group() as group:
        ws = await group.acquire(a.url)
        await group.release(ws)
        with pytest.raises(PoolError, match="no pool of this group"):
            await group.release(ws)


def test_group_options_are_validated_when_it_is_created() -> None:
    with pytest.raises(ValueError, match="max_connections_per_key"):
        open_pool_group(max_connections=2, max_connections_per_key=3)
    with pytest.raises(TypeError, match="max_connections_per_key"):
        open_pool_group(max_connections_per_key="2")  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="acquire_timeout"):
        open_pool_group(acquire_timeout=-1)
    with pytest.raises(TypeError, match="bogus"):
        open_pool_group(bogus=1)  # type: ignore[call-overload]
    group = open_pool_group(max_connections=4)
    assert isinstance(group, WebSocketPoolGroup)
    assert "not started" in repr(group)


async def test_bad_uri_fails_at_first_use_naming_it() -> None:
    async with open_pool_group() as group:
        with pytest.raises(ValueError, match="ftp"):
            async with group.connection("ftp://127.0.0.1/"):
                pass
        assert dict(group.pools) == {}


async def test_keys_taken_from_uris_are_shown_with_secrets_masked() -> None:
    async with serve_ws() as server, open_pool_group() as group:
        url = server.url.replace("ws://", "ws://user:hunter2@") + "?token=abc123"
        async with group.connection(url) as ws:
            await ws.send_text("x")
            assert await ws.receive_text() == "x"
        shown = repr(list(group)) + repr(dict(group.pools)) + repr(group)
        assert "hunter2" not in shown
        assert "abc123" not in shown
        assert list(group) == [group.pools[next(iter(group))].uri]


async def test_a_group_over_an_httpx2_client() -> None:
    import httpx2
    import httpx2.websockets as ws2

    async with serve_ws() as a, serve_ws() as b, httpx2.AsyncClient() as client:
        async with open_pool_group(
            client=client, max_connections=2, timeout=httpx2.Timeout(5)
        ) as group:
            for server in (a, b):
                async with group.connection(server.url) as ws:
                    assert isinstance(ws, ws2.AsyncWebSocketSession)
                    await ws.send_text("x")
                    assert await ws.receive_text() == "x"
            assert group.open_connections == 2
        assert not client.is_closed
        await a.wait_until(lambda: a.open_connections == 0)
        await b.wait_until(lambda: b.open_connections == 0)


# -- the group's capacity at its cap -------------------------------------------------


@asynccontextmanager
async def _kept_idle_and_held(
    **options: Any,
) -> AsyncIterator[tuple[WebSocketPoolGroup[Any], str]]:
    """A group at its cap of 2: key A's one idle connection is kept by min_connections=1,
    key B's is lent. Yields the group and B's URL."""
    async with (
        two_servers() as (a, b),
        open_pool_group(max_connections=2, min_connections=1, **options) as group,
    ):
        await (await group.pool(a.url)).wait_ready(timeout=5)
        await (await group.pool(b.url)).wait_ready(timeout=5)
        held = await group.acquire(b.url)
        assert group.open_connections == 2
        yield group, b.url
        await group.release(held)


async def test_at_the_cap_idle_kept_by_min_connections_is_no_room_for_acquire_timeout_zero() -> (
    None
):
    # A's idle connection may not be closed (min_connections): a borrower that
    # may not wait fails at once instead of waiting for ever.
    with anyio.fail_after(5):
        async with _kept_idle_and_held(acquire_timeout=0) as (group, b_url):
            with pytest.raises(PoolTimeout):
                await group.acquire(b_url)
            assert group.pools[b_url].stats.waiting == 0


async def test_at_the_cap_idle_kept_by_min_connections_is_no_room_for_max_waiting_zero() -> None:
    with anyio.fail_after(5):
        async with _kept_idle_and_held(max_waiting=0) as (group, b_url):
            with pytest.raises(PoolOverloaded):
                await group.acquire(b_url)
            assert group.pools[b_url].stats.overloaded == 1


async def test_idle_connection_goes_to_the_next_pool_when_the_first_no_longer_needs_it() -> None:
    # Keys C and D wait for the group's capacity, C first; C's borrower gives
    # up. When A's connection comes back idle, D closes it and is served (C's
    # pool used to be offered it alone, and to let it sit idle).
    async with (
        serve_ws() as a,
        serve_ws() as b,
        serve_ws() as c,
        serve_ws() as d,
        open_pool_group(max_connections=2, acquire_timeout=10) as group,
    ):
        held_a = await group.acquire(a.url)
        held_b = await group.acquire(b.url)
        served = anyio.Event()

        async def borrow_c(*, task_status: anyio.abc.TaskStatus[anyio.CancelScope]) -> None:
            with anyio.CancelScope() as scope:
                task_status.started(scope)
                async with group.connection(c.url):
                    pytest.fail("C's borrower gave up before any capacity was free")

        async def borrow_d() -> None:
            async with group.connection(d.url) as ws:
                await _echo(ws)
            served.set()

        def waiting(url: str) -> bool:
            return url in group.pools and group.pools[url].stats.waiting == 1

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                c_scope = await tg.start(borrow_c)
                await until(lambda: waiting(c.url))
                tg.start_soon(borrow_d)
                await until(lambda: waiting(d.url))
                c_scope.cancel()
                await until(lambda: group.pools[c.url].stats.waiting == 0)
                await group.release(held_a)  # idle: D's borrower may close it
                await served.wait()
        assert d.handshakes == 1
        assert c.handshakes == 0
        await group.release(held_b)


async def test_a_connection_closing_for_one_key_is_not_room_for_another() -> None:
    # At the cap, B and C each need one connection and A has two idle: each
    # closes one of A's. (C used to count the one closing for B as its room,
    # and to wait for its acquire_timeout while A's second sat idle.)
    async with (
        serve_ws() as a,
        serve_ws() as b,
        serve_ws() as c,
        open_pool_group(max_connections=3, acquire_timeout=10) as group,
    ):
        first, second = await group.acquire(a.url), await group.acquire(a.url)
        await group.release(first)
        await group.release(second)
        held_b = await group.acquire(b.url)
        await group.pool(c.url)  # (so that both borrowers ask for capacity at once)
        assert group.open_connections == 3
        served: list[str] = []
        both = anyio.Event()

        async def borrow(url: str) -> None:
            async with group.connection(url) as ws:
                await _echo(ws)
                served.append(url)
                if len(served) == 2:
                    both.set()
                await both.wait()  # each holds its connection until both are served

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(borrow, b.url)
                tg.start_soon(borrow, c.url)
        assert sorted(served) == sorted([b.url, c.url])
        await a.wait_until(lambda: a.open_connections == 0)
        assert group.open_connections <= 3
        await group.release(held_b)
