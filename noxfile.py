"""Sessions: ``tests`` (the full suite), ``lint``, ``typecheck``, ``demo``, ``bench``, ``soak``."""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "typecheck", "tests"]


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite, every async test on asyncio, asyncio+uvloop and trio."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def soak(session: nox.Session) -> None:
    """The soak under injected faults, not in the default run (``SOAK_SECONDS`` per backend)."""
    session.install("-e", ".[test]")
    session.run("pytest", "-m", "soak", "-s", "tests/test_soak.py", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint rules and formatting."""
    session.install("ruff>=0.8")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package, the tests, the examples and the benchmarks."""
    session.install("-e", ".[test]", "mypy>=1.13", "nox>=2024.10.9")
    session.run("mypy", "--strict", "anyio_wspool")
    session.run("mypy")


@nox.session
def demo(session: nox.Session) -> None:
    """The demo on each backend: the pool against a local echo server."""
    session.install("-e", ".[trio]", "uvloop")
    for backend in ("asyncio", "uvloop", "trio"):
        session.run("python", "-m", "anyio_wspool", "--backend", backend, *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """The benchmarks (benchmarks/run.py); ``nox -s bench -- --quick`` takes under 2 minutes.

    Writes benchmarks/results.json, RESULTS.md and throughput.png. The peer pools
    of scenario 7 pin ``websockets<16``: run.py installs them in a virtual
    environment of their own, under the temporary directory.
    """
    # picows: the echo server (the websockets server is the fallback).
    session.install("-e", ".[bench]", "picows")
    session.run("python", "benchmarks/run.py", *session.posargs)
