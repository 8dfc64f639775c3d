"""Sessions: ``tests`` (the full suite), ``lint``, ``typecheck``, ``docs``, ``build``,
``demo``, ``bench``, ``soak``."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

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


@nox.session
def docs(session: nox.Session) -> None:
    """The documentation site (mkdocs, Material, mkdocstrings), built with --strict into site/."""
    session.install("-e", ".[docs]")
    session.run(
        "mkdocs", "build", "--strict", "--site-dir", "site", env={"NO_MKDOCS_2_WARNING": "1"}
    )


@nox.session
def build(session: nox.Session) -> None:
    """Build the sdist and the wheel, check them, and run the wheel from a clean venv.

    The wheel is installed alone into a new virtual environment (with its
    runtime dependencies from the index, and trio for the demo): every public
    name must import, and the demo must run against its embedded echo server.
    """
    session.install("build>=1.2", "twine>=5")
    dist = Path("dist")
    shutil.rmtree(dist, ignore_errors=True)
    session.run("python", "-m", "build", "--outdir", str(dist))
    session.run("twine", "check", "--strict", *(str(path) for path in sorted(dist.iterdir())))
    wheel = next(dist.glob("*.whl"))
    with tempfile.TemporaryDirectory() as tmp:
        venv = Path(tmp) / "venv"
        session.run("python", "-m", "venv", str(venv))
        python = str(venv / "bin" / "python")
        session.run(python, "-m", "pip", "install", "--quiet", f"{wheel}[trio]", external=True)
        check = (
            "import anyio_wspool; "
            "missing = [name for name in anyio_wspool.__all__ if not hasattr(anyio_wspool, name)]; "
            "assert not missing, missing; "
            "print('anyio_wspool', anyio_wspool.__version__, len(anyio_wspool.__all__), 'names')"
        )
        # From the temporary directory: the checkout's own package must not be the one imported.
        session.chdir(tmp)
        session.run(python, "-c", check, external=True)
        for backend in ("asyncio", "trio"):
            session.run(
                python, "-m", "anyio_wspool", "--backend", backend,
                "--tasks", "4", "--round-trips", "10", "--max-connections", "2",
                external=True,
            )  # fmt: skip
