"""A real ``redis-server`` for the tests of the shared capacity, and its fixtures.

:class:`RedisServer` runs ``redis-server`` on 127.0.0.1 at a free port, with
no persistence (``--save '' --appendonly no``) and its working directory in a
temporary directory. It can be stopped and started again on the same port, as
a Redis restart looks to a client (a later test stops it mid-run).

The fixtures are defined here and imported by the test modules that need
them (``from ._redis import redis_server``): a session-wide server, and a
fresh key per test. Without ``redis-server`` on the PATH the tests that use
them are skipped, saying so.
"""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import coredis
import pytest

__all__ = (
    "RedisServer",
    "collect_failed_connections",
    "keys_of",
    "redis_key",
    "redis_server",
    "run_redis_server",
    "until_zcard",
    "zcard",
)

START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
PORT_ATTEMPTS = 5


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers_ping(port: int) -> bool:
    """Whether a Redis answers on ``port`` (a password-protected one answers NOAUTH)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            reply = sock.recv(64)
    except OSError:
        return False
    return reply.startswith((b"+PONG", b"-NOAUTH"))


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1 (see the module's docstring).

    Args:
        password: When given, the server requires it (``requirepass``) and
            :attr:`url` carries it.
    """

    def __init__(self, *, password: str | None = None) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            reason = "redis-server is not installed (the shared-capacity tests need it)"
            if os.environ.get("ANYIO_WSPOOL_REQUIRE_REDIS"):
                pytest.fail(reason + "; ANYIO_WSPOOL_REQUIRE_REDIS is set (as in CI)")
            pytest.skip(reason)
        self._executable = executable
        self.password = password
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._dir = Path(tempfile.mkdtemp(prefix="anyio-wspool-redis-"))

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password is not None else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server (on a free port the first time, on the same port after)."""
        if self.running:
            return
        if self.port:
            self._launch(self.port)
            return
        # A free port can be taken by someone else before the server binds it.
        for _ in range(PORT_ATTEMPTS):
            try:
                self._launch(_free_port())
            except RuntimeError:
                continue
            return
        raise RuntimeError(f"redis-server did not start in {PORT_ATTEMPTS} attempts")

    def _launch(self, port: int) -> None:
        args = [
            self._executable,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self._dir),
            "--logfile", str(self._dir / "redis.log"),
        ]  # fmt: skip
        if self.password is not None:
            args += ["--requirepass", self.password]
        process = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers_ping(port):
            if process.poll() is not None or time.monotonic() > deadline:
                _terminate(process)
                raise RuntimeError(f"redis-server did not answer PING on port {port}")
            time.sleep(0.01)
        self._process = process
        self.port = port

    def stop(self) -> None:
        """Stop the server and wait until it is gone (its port refuses connections)."""
        process, self._process = self._process, None
        if process is not None:
            _terminate(process)

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): it accepts connections but answers nothing."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused server run again (SIGCONT)."""
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        """Stop the server and start a new one on the same port (an empty Redis)."""
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)


def _terminate(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGCONT)  # a paused server cannot handle SIGTERM
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)


@contextlib.contextmanager
def run_redis_server(*, password: str | None = None) -> Iterator[RedisServer]:
    """A started :class:`RedisServer`, stopped and cleaned up at exit."""
    server = RedisServer(password=password)
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A ``redis-server`` shared by the session (skips the test if none is installed).

    A test that stops it must start it again before it ends.
    """
    with run_redis_server() as server:
        yield server


@pytest.fixture
def redis_key() -> str:
    """A key of its own for each test, so that tests never see each other's slots."""
    return f"anyio-wspool-test:{uuid.uuid4().hex}"


@pytest.fixture
def collect_failed_connections() -> Iterator[None]:
    """Ignore, and collect at the end of the test, what coredis leaves of failed connections.

    coredis 6.9 creates three pairs of memory streams with each connection and
    closes them only once the connection was established: a connection that
    Redis refused is dropped with unclosed streams, whose ``ResourceWarning``
    would fail the test (the suite turns warnings into errors), or whichever
    later test the garbage collector happens to run in. For the tests that
    stop Redis on purpose; nothing else is ignored.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message=r"Unclosed <MemoryObject(Send|Receive)Stream",
            category=ResourceWarning,
        )
        yield
        gc.collect()


async def zcard(server: RedisServer, name: str) -> int:
    """How many members the sorted set ``name`` holds now (expired leases included)."""
    async with coredis.Redis.from_url(server.url) as client:
        return int(await client.zcard(name))


async def until_zcard(server: RedisServer, name: str, count: int, limit: float = 5.0) -> None:
    """Poll Redis (bounded) until the sorted set ``name`` holds ``count`` members."""
    with anyio.fail_after(limit):
        while await zcard(server, name) != count:  # noqa: ASYNC110 (Redis signals nothing)
            await anyio.sleep(0.02)


async def keys_of(server: RedisServer, key: str) -> list[Any]:
    """The Redis keys that begin with ``key``."""
    async with coredis.Redis.from_url(server.url) as client:
        return list(await client.keys(f"{key}*"))
