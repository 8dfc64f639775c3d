"""Each program in examples/ runs against a real server and does what it says."""

from __future__ import annotations

import subprocess
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


@pytest.mark.parametrize("backend", ["asyncio", "uvloop", "trio"])
def test_demo_runs(backend: str) -> None:
    command = [sys.executable, "-m", "anyio_wspool", "--backend", backend]
    command += ["--tasks", "4", "--round-trips", "10", "--max-connections", "2"]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "pool                                2" in result.stdout  # two handshakes
    assert "connect per request                40" in result.stdout
