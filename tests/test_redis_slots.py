"""The Redis layer of the shared capacity (``RedisCapacity`` and its slots), on a real Redis."""

from __future__ import annotations

import logging
import math
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import coredis
import pytest
from coredis.exceptions import RedisError

from anyio_wspool._redis import (
    STREAM_TIMEOUT,
    RedisCapacity,
    _SharedSlots,
    member_name,
    new_pool_id,
)

from ._redis import (
    RedisServer,
    collect_failed_connections,
    redis_key,
    redis_server,
    run_redis_server,
)

# the fixtures, imported for pytest to find
__all__ = ("collect_failed_connections", "redis_key", "redis_server")

pytestmark = pytest.mark.anyio

SHORT_TTL = 0.3
WAIT_LIMIT = 5.0
PASSWORD = "hunter2-redis"


@asynccontextmanager
async def open_slots(
    url: str, key: str, *, limit: int = 3, lease_ttl: float = 30.0
) -> AsyncIterator[_SharedSlots]:
    capacity = RedisCapacity(url, key=key, limit=limit, lease_ttl=lease_ttl)
    async with capacity._open() as slots:
        yield slots


@asynccontextmanager
async def raw_client(url: str) -> AsyncIterator[coredis.Redis[str]]:
    """A client of the test's own, to look at the keys."""
    async with coredis.Redis.from_url(url, decode_responses=True) as client:
        yield client


async def poll_until(check: Callable[[], Any], limit: float = WAIT_LIMIT) -> None:
    """Call the coroutine function ``check`` every 20 ms until it returns something true.

    For what happens in Redis (a lease that ends), which nothing here can signal.
    """
    with anyio.fail_after(limit):
        while not await check():  # noqa: ASYNC110
            await anyio.sleep(0.02)


async def test_take_up_to_the_limit_then_refused(redis_server: RedisServer, redis_key: str) -> None:
    async with open_slots(redis_server.url, redis_key, limit=3) as slots:
        members = [slots.new_member() for _ in range(4)]
        assert [await slots.take(m) for m in members] == [
            (True, 1),
            (True, 2),
            (True, 3),
            (False, 3),
        ]
        assert slots.in_use == 3


async def test_a_member_that_holds_a_slot_is_counted_once(
    redis_server: RedisServer, redis_key: str
) -> None:
    async with open_slots(redis_server.url, redis_key, limit=2) as slots:
        member = slots.new_member()
        assert await slots.take(member) == (True, 1)
        assert await slots.take(member) == (True, 1)


async def test_give_back_frees_a_slot(redis_server: RedisServer, redis_key: str) -> None:
    async with open_slots(redis_server.url, redis_key, limit=1) as slots:
        first, second = slots.new_member(), slots.new_member()
        assert await slots.take(first) == (True, 1)
        assert await slots.take(second) == (False, 1)
        assert await slots.give_back(first) == 0
        assert await slots.take(second) == (True, 1)
        assert await slots.give_back(first) == 1  # not held: nothing happens


async def test_give_back_all_frees_many_slots_at_once(
    redis_server: RedisServer, redis_key: str
) -> None:
    async with open_slots(redis_server.url, redis_key, limit=5) as slots:
        members = [slots.new_member() for _ in range(4)]
        for member in members:
            assert (await slots.take(member))[0]
        assert await slots.count_in_use() == 4
        assert await slots.give_back_all(members[:3]) == 1
        assert await slots.give_back_all([]) == 1
        assert await slots.refresh(members) == set(members[:3])


async def test_pools_share_one_limit(redis_server: RedisServer, redis_key: str) -> None:
    async with open_slots(redis_server.url, redis_key, limit=2) as one:
        async with open_slots(redis_server.url, redis_key, limit=2) as other:
            assert one.pool_id != other.pool_id
            assert await one.take(one.new_member()) == (True, 1)
            assert await other.take(other.new_member()) == (True, 2)
            assert await other.take(other.new_member()) == (False, 2)
            assert await one.take(one.new_member()) == (False, 2)


async def test_racing_takes_never_exceed_the_limit(
    redis_server: RedisServer, redis_key: str
) -> None:
    granted: list[str] = []
    peaks: list[int] = []

    async def taker(slots: _SharedSlots) -> None:
        member = slots.new_member()
        taken, in_use = await slots.take(member)
        peaks.append(in_use)
        if taken:
            granted.append(member)

    with anyio.fail_after(WAIT_LIMIT):
        # Two pools (two clients, several connections each) race 50 takes.
        async with open_slots(redis_server.url, redis_key, limit=7) as one:
            async with open_slots(redis_server.url, redis_key, limit=7) as other:
                async with anyio.create_task_group() as tg:
                    for n in range(50):
                        tg.start_soon(taker, one if n % 2 else other)
        async with raw_client(redis_server.url) as client:
            assert await client.zcard(f"{redis_key}:slots") == 7
    assert len(granted) == 7
    assert len(set(granted)) == 7
    assert max(peaks) == 7


async def test_a_slot_not_refreshed_expires_after_lease_ttl(
    redis_server: RedisServer, redis_key: str
) -> None:
    async with open_slots(redis_server.url, redis_key, limit=1, lease_ttl=SHORT_TTL) as slots:
        held, waiting = slots.new_member(), slots.new_member()
        started = anyio.current_time()
        assert await slots.take(held) == (True, 1)
        assert await slots.take(waiting) == (False, 1)

        async def taken() -> bool:
            return (await slots.take(waiting))[0]

        await poll_until(taken)
        # Redis's clock and ours differ by the round trips only.
        assert anyio.current_time() - started >= SHORT_TTL - 0.05
        assert await slots.refresh([held, waiting]) == {held}


async def test_refresh_keeps_slots_and_returns_the_lost_ones(
    redis_server: RedisServer, redis_key: str
) -> None:
    async with open_slots(redis_server.url, redis_key, limit=3, lease_ttl=SHORT_TTL) as slots:
        kept, left, given_back = (slots.new_member() for _ in range(3))
        for member in (kept, left, given_back):
            assert (await slots.take(member))[0]
        await slots.give_back(given_back)
        assert await slots.refresh([kept, given_back]) == {given_back}
        started = anyio.current_time()

        async def left_expired() -> bool:
            # ``kept`` is refreshed at each round, ``left`` never.
            assert await slots.refresh([kept]) == set()
            return slots.in_use == 1

        await poll_until(left_expired)
        assert anyio.current_time() - started >= SHORT_TTL / 2
        assert await slots.refresh([kept, left]) == {left}
        assert await slots.refresh([]) == set()
        assert await slots.take(kept) == (True, 1)  # still held: counted once


async def test_others_waiting_counts_the_other_pools(
    redis_server: RedisServer, redis_key: str
) -> None:
    async with open_slots(redis_server.url, redis_key, lease_ttl=30.0) as one:
        async with open_slots(redis_server.url, redis_key, lease_ttl=SHORT_TTL) as other:
            assert await one.others_waiting(one.pool_id) == 0
            assert await one.set_waiting(one.pool_id, 1) == 0
            assert await one.set_waiting(one.pool_id, 1) == 0  # again: still one entry
            assert await other.others_waiting(other.pool_id) == 1
            assert await one.others_waiting(one.pool_id) == 0
            assert await other.set_waiting(other.pool_id, 1) == 1
            assert await one.others_waiting(one.pool_id) == 1
            assert await one.set_waiting(one.pool_id, 0) == 1
            assert await other.others_waiting(other.pool_id) == 0

            # ``other``'s entry lapses after its lease_ttl unless set again.
            async def lapsed() -> bool:
                return await one.others_waiting(one.pool_id) == 0

            await poll_until(lapsed)


async def test_others_waiting_sums_what_each_other_pool_needs(
    redis_server: RedisServer, redis_key: str
) -> None:
    async with (
        open_slots(redis_server.url, redis_key, lease_ttl=30.0) as one,
        open_slots(redis_server.url, redis_key, lease_ttl=30.0) as other,
        open_slots(redis_server.url, redis_key, lease_ttl=30.0) as third,
    ):
        assert await one.set_waiting(one.pool_id, 3) == 0
        assert await other.set_waiting(other.pool_id, 2) == 3
        assert await third.others_waiting(third.pool_id) == 5
        assert await one.set_waiting(one.pool_id, 1) == 2  # replaced, not added
        assert await third.others_waiting(third.pool_id) == 3
        assert await other.set_waiting(other.pool_id, 0) == 1
        assert await third.others_waiting(third.pool_id) == 1
        # A short ttl: the entry of a pool that stopped renewing it lapses soon.
        await other.set_waiting(other.pool_id, 4, ttl=SHORT_TTL)
        assert await third.others_waiting(third.pool_id) == 5

        async def lapsed() -> bool:
            return await third.others_waiting(third.pool_id) == 1

        await poll_until(lapsed)


async def test_keys_begin_with_key_and_vanish_after_lease_ttl(
    redis_server: RedisServer, redis_key: str
) -> None:
    ttl_ms = SHORT_TTL * 1000
    async with open_slots(redis_server.url, redis_key, lease_ttl=SHORT_TTL) as slots:
        async with raw_client(redis_server.url) as client:
            given_back, abandoned = slots.new_member(), slots.new_member()
            await slots.take(given_back)
            await slots.take(abandoned)
            await slots.set_waiting(slots.pool_id, 1)
            keys = set(await client.keys(f"{redis_key}*"))
            assert keys == {f"{redis_key}:slots", f"{redis_key}:waiting"}
            for name in keys:
                assert 0 < await client.pttl(name) <= ttl_ms
            await slots.give_back(given_back)

            async def gone() -> bool:
                return await client.exists(keys) == 0

            await poll_until(gone)


async def test_keys_last_as_long_as_the_longest_lease(
    redis_server: RedisServer, redis_key: str
) -> None:
    async with open_slots(redis_server.url, redis_key, lease_ttl=30.0) as long:
        async with open_slots(redis_server.url, redis_key, lease_ttl=SHORT_TTL) as short:
            async with raw_client(redis_server.url) as client:
                await long.take(long.new_member())
                await short.take(short.new_member())
                assert await client.pttl(f"{redis_key}:slots") > 20_000


@pytest.mark.usefixtures("collect_failed_connections")
async def test_redis_down_fails_fast_and_the_same_client_recovers(redis_key: str) -> None:
    with run_redis_server() as server:
        async with open_slots(server.url, redis_key, limit=2) as slots:
            first, second = slots.new_member(), slots.new_member()
            assert await slots.take(first) == (True, 1)
            server.stop()
            started = anyio.current_time()
            with anyio.fail_after(WAIT_LIMIT):
                with pytest.raises(RedisError):
                    await slots.take(second)
                with pytest.raises(RedisError):
                    await slots.refresh([first])
            assert anyio.current_time() - started < 3.0
            # A new, empty Redis on the same port: no slots, no scripts loaded.
            server.restart()
            with anyio.fail_after(WAIT_LIMIT):
                assert await slots.refresh([first]) == {first}
                assert await slots.take(second) == (True, 1)
                assert await slots.others_waiting(slots.pool_id) == 0


async def test_redis_that_does_not_answer_times_out_and_the_client_recovers(
    redis_server: RedisServer, redis_key: str
) -> None:
    async with open_slots(redis_server.url, redis_key, limit=2) as slots:
        first, second = slots.new_member(), slots.new_member()
        assert await slots.take(first) == (True, 1)
        redis_server.pause()
        try:
            started = anyio.current_time()
            with anyio.fail_after(WAIT_LIMIT), pytest.raises(slots.errors) as caught:
                await slots.take(second)
            assert isinstance(caught.value, TimeoutError)
            assert anyio.current_time() - started < STREAM_TIMEOUT + 1.0
        finally:
            redis_server.resume()
        # The take that timed out may have been carried out once Redis woke up:
        # giving the member back settles it either way.
        with anyio.fail_after(WAIT_LIMIT):
            assert await slots.give_back(second) == 1
            assert await slots.refresh([first]) == set()


async def test_a_cancelled_take_leaves_the_client_in_step(
    redis_server: RedisServer, redis_key: str
) -> None:
    async with open_slots(redis_server.url, redis_key, limit=3) as slots:
        first, cancelled, third = (slots.new_member() for _ in range(3))
        assert await slots.take(first) == (True, 1)
        redis_server.pause()
        try:
            with anyio.move_on_after(0.2) as scope:
                await slots.take(cancelled)
            assert scope.cancelled_caught
        finally:
            redis_server.resume()
        with anyio.fail_after(WAIT_LIMIT):
            # each reply still goes to its own request
            assert await slots.give_back(cancelled) == 1
            assert await slots.take(third) == (True, 2)
            assert await slots.refresh([first, cancelled, third]) == {cancelled}


async def test_a_client_of_the_user_is_not_closed(
    redis_server: RedisServer, redis_key: str
) -> None:
    async with coredis.Redis.from_url(redis_server.url, decode_responses=True) as client:
        capacity = RedisCapacity(client, key=redis_key, limit=2)
        assert "client" in repr(capacity)
        async with capacity._open() as slots:
            member = slots.new_member()
            assert await slots.take(member) == (True, 1)
            await slots.give_back(member)
            # the user's client decodes replies: members come back as str all the same
            assert await slots.refresh([member]) == {member}
        assert await client.ping() == "PONG"


async def test_a_client_the_user_did_not_enter_works_too(
    redis_server: RedisServer, redis_key: str
) -> None:
    client = coredis.Redis.from_url(redis_server.url)
    capacity = RedisCapacity(client, key=redis_key, limit=1)
    for _ in range(2):  # and again after the first pool closed
        async with capacity._open() as slots:
            member = slots.new_member()
            assert await slots.take(member) == (True, 1)
            assert await slots.give_back(member) == 0


@pytest.mark.usefixtures("collect_failed_connections")
async def test_the_password_is_never_shown(
    redis_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with run_redis_server(password=PASSWORD) as server:
        url = server.url + "?client_name=s3cret-query"
        capacity = RedisCapacity(url, key=redis_key, limit=2)
        for text in (repr(capacity), str(capacity)):
            assert PASSWORD not in text
            assert "s3cret-query" not in text
            assert ":***@" in text
        async with capacity._open() as slots:
            assert await slots.take(slots.new_member()) == (True, 1)

        wrong = RedisCapacity(url.replace(PASSWORD, "wrong-pass"), key=redis_key, limit=2)
        assert "wrong-pass" not in repr(wrong)
        async with wrong._open() as slots:
            with anyio.fail_after(WAIT_LIMIT), pytest.raises(RedisError) as caught:
                await slots.take(slots.new_member())
        assert "wrong-pass" not in str(caught.value)

        server.stop()
        async with capacity._open() as slots:
            with anyio.fail_after(WAIT_LIMIT), pytest.raises(RedisError) as caught:
                await slots.take(slots.new_member())
        assert PASSWORD not in str(caught.value)
        assert PASSWORD not in repr(caught.value)
    assert caplog.records  # coredis did log (its retries, at INFO)
    for record in caplog.records:
        assert PASSWORD not in record.getMessage()
        assert "wrong-pass" not in record.getMessage()


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"key": ""}, ValueError, "key"),
        ({"key": 3}, TypeError, "key"),
        ({"limit": 0}, ValueError, "limit"),
        ({"limit": True}, TypeError, "limit"),
        ({"limit": 2.0}, TypeError, "limit"),
        ({"lease_ttl": 0}, ValueError, "lease_ttl"),
        ({"lease_ttl": -1.0}, ValueError, "lease_ttl"),
        ({"lease_ttl": math.inf}, ValueError, "lease_ttl"),
        ({"lease_ttl": math.nan}, ValueError, "lease_ttl"),
        ({"lease_ttl": "30"}, TypeError, "lease_ttl"),
        ({"lease_ttl": True}, TypeError, "lease_ttl"),
        ({"when_unavailable": "ignore"}, ValueError, "when_unavailable"),
        ({"url_or_client": "http://:hunter2@h:1/0"}, ValueError, "url_or_client"),
        ({"url_or_client": "redis://:hunter2@h:port/0"}, ValueError, "url_or_client"),
        ({"url_or_client": "redis://:hunter2@/0"}, ValueError, "url_or_client"),
        ({"url_or_client": 6379}, TypeError, "url_or_client"),
    ],
)
def test_arguments_are_checked_at_creation(
    kwargs: dict[str, Any], error: type[Exception], words: str
) -> None:
    arguments: dict[str, Any] = {
        "url_or_client": "redis://127.0.0.1:6379/0",
        "key": "k",
        "limit": 1,
    } | kwargs
    url_or_client = arguments.pop("url_or_client")
    with pytest.raises(error, match=words) as caught:
        RedisCapacity(url_or_client, **arguments)
    assert "hunter2" not in str(caught.value)


def test_accepted_arguments_are_readable() -> None:
    capacity = RedisCapacity(
        "rediss://h:6380/1", key="k", limit=5, lease_ttl=2, when_unavailable="local"
    )
    assert (capacity.key, capacity.limit, capacity.when_unavailable) == ("k", 5, "local")
    assert capacity.lease_ttl == 2.0
    assert isinstance(capacity.lease_ttl, float)


def test_member_names_are_unique_per_pool_and_connection() -> None:
    one, other = new_pool_id(), new_pool_id()
    assert one != other
    assert member_name(one, 0) != member_name(one, 1) != member_name(other, 1)


def test_without_coredis_creating_a_capacity_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "coredis", None)
    with pytest.raises(ImportError, match=r"anyio-wspool\[redis\]"):
        RedisCapacity("redis://127.0.0.1:6379/0", key="k", limit=1)


def test_the_package_imports_without_coredis() -> None:
    code = (
        "import sys; sys.modules['coredis'] = None; "
        "import anyio_wspool, anyio_wspool._redis; print('ok')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
