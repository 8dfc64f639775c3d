"""Each program in examples/ runs against a real server and does what it says."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import anyio
import httpx
import pytest

from ._redis import RedisServer, redis_server
from ._wsserver import WSServer

__all__ = ("redis_server",)

pytestmark = pytest.mark.anyio

EXAMPLES = Path(__file__).parent.parent / "examples"


@pytest.mark.parametrize(
    ("script", "expected", "capacity"),
    [
        ("echo_asyncio.py", ["'hello 9'"], 2),
        ("echo_trio.py", ["'hello 9'"], 2),
        ("websockets_connector.py", ["'hello 19'"], 4),
        ("trio_many_tasks.py", ["600 replies over "], 4),
        ("subscribe_on_connect.py", ["30 requests, "], 3),
        (
            "stale_data.py",
            [
                "first borrower read: first question",
                "next borrower read: third question",
                "drained: ['second question']",
                "connections opened: 1",
            ],
            1,
        ),
        ("timeouts.py", ["answer: ping", "timed out;", "opened=1 discarded=1"], 2),
    ],
)
async def test_example_runs(
    ws_server: WSServer, script: str, expected: list[str], capacity: int
) -> None:
    with anyio.fail_after(60):
        result = await anyio.run_process(
            [sys.executable, str(EXAMPLES / script), ws_server.url], check=False
        )
    output = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()
    for line in expected:
        assert line in output, output
    if script == "subscribe_on_connect.py":
        # One subscription per connection, not one per request.
        assert f"{ws_server.handshakes} subscriptions, {ws_server.handshakes} connections" in output
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


async def _run_example(script: str, url: str) -> str:
    with anyio.fail_after(60):
        result = await anyio.run_process([sys.executable, str(EXAMPLES / script), url], check=False)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


async def test_events_jsonl_example_logs_each_event(ws_server: WSServer) -> None:
    # A password in the URL: the events name the target with it masked.
    url = ws_server.url.replace("ws://", "ws://user:hunter2@")
    output = await _run_example("events_jsonl.py", url)
    assert "hunter2" not in output
    records = [json.loads(line) for line in output.splitlines()]
    kinds = [record["event"] for record in records]
    opened = ws_server.handshakes
    assert 1 <= opened <= 2
    assert kinds.count("ConnectedEvent") == opened
    assert kinds.count("AcquiredEvent") == 6
    assert kinds.count("ReleasedEvent") == 6
    retired = [record for record in records if record["event"] == "RetiredEvent"]
    assert [record["reason"] for record in retired] == ["pool_closed"] * opened
    # In order: a connection opens before it is lent, each lease is acquired
    # before it is released, and the pool closes its connections last.
    assert kinds[0] == "ConnectedEvent"
    assert kinds[-opened:] == ["RetiredEvent"] * opened
    lent = 0
    for kind in kinds:
        lent += {"AcquiredEvent": 1, "ReleasedEvent": -1}.get(kind, 0)
        assert 0 <= lent <= 2
    assert {record["target"] for record in records} == {records[0]["target"]}


def _sample(metrics: str, name: str, **labels: str) -> float:
    """The value of one sample of Prometheus' text format (0.0 when absent)."""
    for line in metrics.splitlines():
        if not line.startswith(name + "{"):
            continue
        selector, value = line.rsplit(" ", 1)
        if all(f'{key}="{wanted}"' in selector for key, wanted in labels.items()):
            return float(value)
    return 0.0


async def test_prometheus_example_counts_what_the_pool_did(ws_server: WSServer) -> None:
    metrics = await _run_example("metrics_prometheus.py", ws_server.url)
    opened = ws_server.handshakes
    assert 1 <= opened <= 3
    assert _sample(metrics, "wspool_handshake_seconds_count") == opened
    assert _sample(metrics, "wspool_acquire_wait_seconds_count") == 12
    assert _sample(metrics, "wspool_lease_seconds_count") == 12
    assert _sample(metrics, "wspool_retired_total", reason="pool_closed") == opened
    assert _sample(metrics, "wspool_connect_failures_total") == 0
    await ws_server.wait_until(lambda: ws_server.open_connections == 0)


async def test_starlette_example_serves_requests_through_the_pool(ws_server: WSServer) -> None:
    # The app is served by uvicorn on 127.0.0.1 in a process of its own and
    # called over HTTP: 40 requests, a handful of WebSocket handshakes; when
    # uvicorn stops, the lifespan closes the pool and its connections.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, str(EXAMPLES / "starlette_app.py"), ws_server.url, str(port)]
    with anyio.fail_after(60):
        async with await anyio.open_process(command) as process:
            try:
                assert process.stderr is not None
                log = b""
                async for chunk in process.stderr:
                    log += chunk
                    if b"Application startup complete" in log:
                        break
                else:
                    raise AssertionError(log.decode())
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:

                    async def ask(n: int) -> None:
                        response = await client.get("/ask", params={"text": f"hello {n}"})
                        response.raise_for_status()
                        assert response.json()["reply"] == f"hello {n}"

                    async with anyio.create_task_group() as tg:
                        for n in range(40):
                            tg.start_soon(ask, n)
                assert 1 <= ws_server.handshakes <= 8
                assert ws_server.messages_received >= 40
            finally:
                process.terminate()
            async for chunk in process.stderr:
                log += chunk
            # uvicorn re-raises the SIGTERM it handled, once shut down.
            assert await process.wait() in (0, -15), log.decode()
    assert b"Application shutdown complete" in log, log.decode()
    # The lifespan closed the pool: each connection got a closing handshake.
    await ws_server.wait_until(lambda: ws_server.open_connections == 0)
    assert ws_server.closes_received == ws_server.handshakes


async def test_the_echo_server_command_serves_the_examples() -> None:
    # What the docs tell a new user: start the demo's echo server, run an example.
    command = [sys.executable, "-m", "anyio_wspool", "--echo-server", "--port", "0"]
    with anyio.fail_after(60):
        async with await anyio.open_process(command) as process:
            try:
                assert process.stdout is not None
                line = b""
                async for chunk in process.stdout:
                    line += chunk
                    if b"\n" in line:
                        break
                url = line.decode().split()[3]
                assert url.startswith("ws://127.0.0.1:")
                output = await _run_example("echo_asyncio.py", url)
                assert "'hello 9'" in output
            finally:
                process.terminate()


async def test_shared_capacity_example_holds_its_limit_across_processes(
    ws_server: WSServer, redis_server: RedisServer
) -> None:
    # Three processes of the example at once: the server never sees more than
    # the shared limit of 3 connections, and each process serves its 40.
    command = [sys.executable, str(EXAMPLES / "shared_capacity.py"), ws_server.url]
    outputs: list[str] = []

    async def one() -> None:
        result = await anyio.run_process([*command, redis_server.url], check=False)
        assert result.returncode == 0, result.stderr.decode()
        outputs.append(result.stdout.decode())

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(one)
    for output in outputs:
        assert "40 requests over " in output, output
        assert "shared limit 3, " in output, output
    assert 1 <= ws_server.max_open <= 3
    await ws_server.wait_until(lambda: ws_server.open_connections == 0)
