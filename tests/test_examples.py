"""Each program in examples/ runs against a real server and does what it says."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import pytest

from ._wsserver import WSServer

pytestmark = pytest.mark.anyio

EXAMPLES = Path(__file__).parent.parent / "examples"


@pytest.mark.parametrize(
    ("script", "expected", "capacity"),
    [
        ("echo_asyncio.py", "'hello 9'", 2),
        ("echo_trio.py", "'hello 9'", 2),
        ("websockets_connector.py", "'hello 19'", 4),
    ],
)
async def test_example_runs(ws_server: WSServer, script: str, expected: str, capacity: int) -> None:
    with anyio.fail_after(60):
        result = await anyio.run_process(
            [sys.executable, str(EXAMPLES / script), ws_server.url], check=False
        )
    output = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()
    assert expected in output
    assert 1 <= ws_server.handshakes <= capacity  # the pool reused its connections
    assert ws_server.messages_received > ws_server.handshakes
    await ws_server.wait_until(lambda: ws_server.open_connections == 0)
