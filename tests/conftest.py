from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from . import _stacks
from ._external_server import ExternalServer, run_external_server
from ._wsserver import WSServer, serve_ws


@pytest.fixture(
    scope="module",
    params=[
        pytest.param(("asyncio", {"use_uvloop": False}), id="asyncio"),
        pytest.param(("asyncio", {"use_uvloop": True}), id="asyncio+uvloop"),
        pytest.param(("trio", {}), id="trio"),
    ],
)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    """Every async test runs on asyncio, asyncio with uvloop, and trio."""
    backend: tuple[str, dict[str, Any]] = request.param
    return backend


@pytest.fixture
async def ws_server() -> AsyncIterator[WSServer]:
    """A fresh in-process WebSocket echo server (see ``tests/_wsserver.py``)."""
    async with serve_ws() as server:
        yield server


@pytest.fixture(scope="session")
def external_server() -> Iterator[ExternalServer]:
    """The ``websockets``-based server subprocess, shared by the session."""
    with run_external_server() as server:
        yield server


@pytest.fixture(params=_stacks.STACKS)
def stack(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test on httpx + httpx-ws, then on httpx2 (see ``tests/_stacks.py``)."""
    stack: str = request.param
    _stacks.use(stack)
    try:
        yield stack
    finally:
        _stacks.use("httpx")
