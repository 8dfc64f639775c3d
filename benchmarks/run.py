"""Run the anyio_wspool benchmarks (issue 6) and write their results.

Usage::

    python benchmarks/run.py [--quick] [--backends asyncio,uvloop,trio]
                             [--scenarios overhead,echo,...] [--out benchmarks]

What it does, in order:

1. starts the echo server (``_server.py``) as a separate process pinned to CPU 1,
   and waits (with a timeout) for the line in which it announces its port;
2. for scenario 7, makes sure a virtual environment with the peer pools exists
   (they pin ``websockets<16``): created once under the temporary directory with
   ``python -m venv`` and pip, then reused;
3. runs every scenario, repetition and backend in a fresh worker process pinned
   to CPU 0 (this file with ``--worker``; in the peers' environment for scenario
   7), so that repetitions are independent and no backend warms another's
   caches, and collects the result line it prints for each scenario;
4. writes ``results.json`` (every figure, the summary and the targets),
   ``RESULTS.md`` and ``throughput.png`` to ``--out`` (``_report.py``).

A scenario that fails is recorded as not measured, with its error, and the
run goes on. ``--quick`` uses smaller counts and 3 repetitions, runs the
scenarios of a repetition and backend in one process, and takes under two
minutes on a 2-core machine.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import selectors
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _report import SPECS, write_results
from _scenarios import BACKENDS, FULL, QUICK, Context, Run, run_on, run_scenario

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CLIENT_CPU, SERVER_CPU = 0, 1
#: the line a worker prints each result after, so that stray output cannot confuse the runner
RESULT_MARKER = "@@RESULT@@ "
SERVER_START_TIMEOUT = 30.0
PEERS = "peers"
PEER_REQUIREMENTS = ("websockets>=15,<16", "aio-websocket-pool", "async-websocket-pool")
PEER_INSTALL_TIMEOUT = 600.0
VERSIONED = (
    *("anyio", "httpx", "httpx-ws", "wsproto", "trio", "uvloop", "websockets", "picows"),
    *("matplotlib", "anyio-wspool"),
)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def pin(cpu: int) -> Callable[[], None] | None:
    """What pins a child process to ``cpu``, or None if this machine gives us one CPU only."""
    usable = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    if cpu not in usable or len(usable) < 2:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


def record(
    scenario: str, backend: str, rep: int, seconds: float, error: str | None, ctx: Context | None
) -> Run:
    """One scenario's result: its figures (from ``ctx``), or the error that stopped it."""
    return Run(
        scenario=scenario,
        backend=backend,
        rep=rep,
        ok=error is None,
        seconds=seconds,
        error=error,
        measurements=ctx.measurements if ctx is not None and error is None else [],
        notes=ctx.notes if ctx is not None else {},
    )


# -- the worker -------------------------------------------------------------------------------


def worker(names: Sequence[str], backend: str, port: int, rep: int, quick: bool) -> None:
    """Run each scenario on a fresh event loop and print its result line."""
    for name in names:
        ctx = Context(backend, port, rep, QUICK if quick else FULL)
        start = time.monotonic()
        error = None
        try:
            run_on(backend, run_scenario, name, ctx)
        except Exception:
            error = traceback.format_exc()
        result = record(name, backend, rep, time.monotonic() - start, error, ctx)
        print(RESULT_MARKER + json.dumps(result), flush=True)


def run_worker(
    python: str, names: list[str], backend: str, rep: int, port: int, quick: bool, timeout: float
) -> list[Run]:
    """One worker process, pinned to the client CPU; one record per scenario."""
    command = [python, __file__, "--worker", ",".join(names), backend, str(port), str(rep)]
    start = time.monotonic()
    try:
        done = subprocess.run(
            command + ["--quick"] * quick,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO,
            preexec_fn=pin(CLIENT_CPU),
        )
    except subprocess.TimeoutExpired:
        stdout, error = "", f"the worker did not finish within {timeout:.0f} s"
    else:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-8:])
        stdout, error = done.stdout, f"exit status {done.returncode}, no result: {tail}"
    found: dict[str, Run] = {}
    for line in stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            result: Run = json.loads(line.removeprefix(RESULT_MARKER))
            found[result["scenario"]] = result
    seconds = time.monotonic() - start
    return [found.get(name) or record(name, backend, rep, seconds, error, None) for name in names]


# -- the echo server and the peers' environment --------------------------------------------------


@contextlib.contextmanager
def echo_server(implementation: str) -> Iterator[int]:
    """Start ``_server.py``, wait for its ``PORT`` line, yield the port, stop it at the end."""
    command = [sys.executable, str(HERE / "_server.py"), implementation]
    with subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=pin(SERVER_CPU),
    ) as process:
        try:
            assert process.stdout is not None
            line = ""
            with selectors.DefaultSelector() as selector:
                selector.register(process.stdout, selectors.EVENT_READ)
                if selector.select(SERVER_START_TIMEOUT):
                    line = process.stdout.readline()
            if not line.startswith("PORT "):
                process.kill()
                raise RuntimeError(
                    f"the echo server did not announce its port within {SERVER_START_TIMEOUT} s "
                    f"(got {line!r}); its stderr:\n{process.communicate(timeout=10)[1]}"
                )
            yield int(line.split()[1])
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


def prepare_peers() -> tuple[str | None, str | None]:
    """The peers' Python (creating their venv if needed), or None and the reason."""
    key = "|".join([*PEER_REQUIREMENTS, sys.version, str(REPO)])
    venv = Path(tempfile.gettempdir()) / (
        "anyio-wspool-bench-peers-" + hashlib.sha256(key.encode()).hexdigest()[:12]
    )
    python, ready = venv / "bin" / "python", venv / ".ready"
    if ready.exists() and python.exists():
        return str(python), None
    log(f"creating the peers' virtual environment in {venv} ...")
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    for step in (
        [sys.executable, "-m", "venv", "--clear", str(venv)],
        [*pip, *PEER_REQUIREMENTS, "-e", str(REPO)],
    ):
        try:
            done = subprocess.run(
                step, capture_output=True, text=True, timeout=PEER_INSTALL_TIMEOUT
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, f"`{' '.join(step[:4])} …` failed: {exc}"
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
            return None, f"`{' '.join(step[:4])} …` failed: " + " / ".join(tail)
    ready.write_text("\n".join(PEER_REQUIREMENTS) + "\n")
    return str(python), None


# -- the machine ----------------------------------------------------------------------------------


def _first(path: str, prefix: str) -> str | None:
    """The first line of ``path`` that starts with ``prefix``, without it."""
    with contextlib.suppress(OSError):
        for line in Path(path).read_text().splitlines():
            if line.startswith(prefix):
                return line.removeprefix(prefix).strip(" \t:")
    return None


def _git(*args: str) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        command = ["git", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=10, cwd=REPO).stdout
    return ""


def git_revision() -> str:
    revision = _git("rev-parse", "--short", "HEAD").strip()
    if not revision:
        return "unknown"
    dirty = _git("status", "--porcelain", "--", "anyio_wspool").strip()
    return revision + (" (anyio_wspool/ modified)" if dirty else "")


def describe_machine(server: str, peer_versions: dict[str, str], revision: str) -> dict[str, str]:
    cores = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    memory = _first("/proc/meminfo", "MemTotal")
    machine = {
        "CPU": f"{_first('/proc/cpuinfo', 'model name') or platform.processor() or 'unknown'}, "
        f"{cores} logical cores ({usable} usable)",
        "memory": f"{int(memory.split()[0]) / 1024 / 1024:.1f} GiB" if memory else "unknown",
        "OS": platform.platform(),
        "Python": f"{platform.python_implementation()} {platform.python_version()}",
        "anyio_wspool revision": revision,
    }
    spec = importlib.util.find_spec("anyio_wspool")
    origin = Path(spec.origin).parent if spec is not None and spec.origin else None
    if origin is not None and REPO not in origin.parents:
        machine["anyio_wspool revision"] += f"; measured from {origin}, not this checkout"
    for name in VERSIONED:
        try:
            machine[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            machine[name] = "not installed"
    machine["echo server"] = (
        f"{server} (on uvloop), pinned to CPU {SERVER_CPU}; clients pinned to CPU {CLIENT_CPU}"
        if usable > 1
        else f"{server}; not pinned (one CPU)"
    )
    for name, version in sorted(peer_versions.items()):
        machine[f"peers' venv: {name}"] = version
    return machine


# -- main ---------------------------------------------------------------------------------------


def _csv(allowed: Sequence[str], what: str) -> Callable[[str], list[str]]:
    def parse(value: str) -> list[str]:
        items = [item.strip() for item in value.split(",") if item.strip()]
        unknown = [item for item in items if item not in allowed]
        if unknown:
            raise argparse.ArgumentTypeError(
                f"unknown {what}: {', '.join(unknown)} (choose from {', '.join(allowed)})"
            )
        return items

    return parse


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    scenarios = [spec.key for spec in SPECS]
    parser = argparse.ArgumentParser(
        description="Run the anyio_wspool benchmarks and write results.json, RESULTS.md "
        "and throughput.png."
    )
    parser.add_argument("--quick", action="store_true", help="small counts, 3 repetitions")
    parser.add_argument(
        "--backends",
        type=_csv(BACKENDS, "backend"),
        default=list(BACKENDS),
        help="comma-separated: " + ",".join(BACKENDS),
    )
    parser.add_argument(
        "--scenarios",
        type=_csv(scenarios, "scenario"),
        default=scenarios,
        help="comma-separated: " + ",".join(scenarios),
    )
    parser.add_argument("--out", type=Path, default=HERE, help="where to write the results")
    parser.add_argument("--repetitions", type=int, default=None, help="override the count")
    parser.add_argument("--server", choices=("auto", "picows", "websockets"), default="auto")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="measure nothing: summarise --out/results.json again and rewrite the report",
    )
    parser.add_argument(
        "--worker",
        nargs=4,
        metavar=("SCENARIOS", "BACKEND", "PORT", "REP"),
        help="internal: run as one worker process",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out: Path = args.out
    if args.worker:
        names, backend, port, rep = args.worker
        worker(names.split(","), backend, int(port), int(rep), args.quick)
        return 0
    if args.report_only:
        data = json.loads((out / "results.json").read_text())
        write_results(out, data["meta"], data["runs"])
        return 0
    started = time.monotonic()
    revision = git_revision()
    sizes = QUICK if args.quick else FULL
    repetitions = args.repetitions or sizes.repetitions
    backends: list[str] = args.backends
    scenarios: list[str] = args.scenarios
    out.mkdir(parents=True, exist_ok=True)
    server = args.server
    if server == "auto":
        server = "picows" if importlib.util.find_spec("picows") else "websockets"

    # One process per scenario, repetition and backend; --quick groups the
    # scenarios of a repetition and backend in one process to save start-ups.
    local = [name for name in scenarios if name != PEERS]
    groups = [local] if args.quick and local else [[name] for name in local]
    jobs = [(group, b, rep) for group in groups for rep in range(repetitions) for b in backends]
    peer_python, peer_problem = None, None
    if PEERS in scenarios and "asyncio" in backends:
        jobs += [([PEERS], "asyncio", rep) for rep in range(repetitions)]
        peer_python, peer_problem = prepare_peers()
        if peer_problem:
            log(f"the peers cannot be measured: {peer_problem}")
    runs: list[Run] = []
    with echo_server(server) as port:
        log(f"echo server: {server} on port {port}")
        for index, (group, backend, rep) in enumerate(jobs, 1):
            python = peer_python if group == [PEERS] else sys.executable
            if python is None:
                error = f"the peers' environment could not be made: {peer_problem}"
                records = [record(PEERS, backend, rep, 0.0, error, None)]
            else:
                timeout = sizes.worker_timeout * len(group)
                records = run_worker(python, group, backend, rep, port, args.quick, timeout)
            runs += records
            for run in records:
                status = "ok" if run["ok"] else "FAILED: " + str(run["error"]).splitlines()[-1]
                log(
                    f"[{index:3d}/{len(jobs)}] {run['scenario']:<10} {backend:<7} "
                    f"rep {rep}: {run['seconds']:5.1f} s {status}"
                )

    peer_versions = {
        key.removeprefix("version "): value
        for run in runs
        if run["scenario"] == PEERS
        for key, value in run["notes"].items()
        if key.startswith("version ")
    }
    meta: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "quick": args.quick,
        "repetitions": repetitions,
        "backends": backends,
        "scenarios": scenarios,
        "server": server,
        "server_cpu": SERVER_CPU,
        "client_cpu": CLIENT_CPU,
        "duration_s": time.monotonic() - started,
        "machine": describe_machine(server, peer_versions, revision),
        "sizes": dataclasses.asdict(sizes),
    }
    write_results(out, meta, runs)
    return 0 if all(run["ok"] for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
