"""A fake resource and its connector, for the pool's generic core (no sockets)."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio
import anyio.lowlevel
import pytest


class Resource:
    """A fake resource that records what was done to it."""

    _ids = itertools.count()

    def __init__(self) -> None:
        self.id = next(self._ids)
        self.closed = False
        self.owner_task: object = None

    def __repr__(self) -> str:
        return f"<Resource {self.id}{' closed' if self.closed else ''}>"


class Connector:
    """Counts openings and closings, and checks that one task opens and closes."""

    def __init__(self, *, fail: int = 0) -> None:
        self.opened: list[Resource] = []
        self.closed: list[Resource] = []
        self.fail = fail

    @asynccontextmanager
    async def __call__(self) -> AsyncIterator[Resource]:
        await anyio.lowlevel.checkpoint()
        if self.fail:
            self.fail -= 1
            raise ConnectionRefusedError("the fake server refused")
        resource = Resource()
        resource.owner_task = anyio.get_current_task().id
        self.opened.append(resource)
        try:
            yield resource
        finally:
            assert anyio.get_current_task().id == resource.owner_task
            resource.closed = True
            self.closed.append(resource)


async def enter_in(lease: AbstractAsyncContextManager[Any], scope: anyio.CancelScope) -> None:
    """Enter ``lease`` in ``scope``, which the test cancels: it must lend nothing."""
    with scope:
        async with lease:
            pytest.fail("lent a connection to a cancelled borrower")
