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
   to CPU 0 (``_worker.py``, or ``_peers.py`` in the peers' environment), and
   collects the figure each one prints;
4. writes ``results.json`` (every figure, the summary and the targets),
   ``RESULTS.md`` and ``throughput.png`` to ``--out``.

A scenario that fails is recorded as not measured, with its error, and the
run goes on. ``--quick`` uses smaller counts and 3 repetitions and takes under
two minutes on a 2-core machine.
"""

from __future__ import annotations

import argparse
import contextlib
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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _common import (
    BACKENDS,
    CLIENT_CPU,
    RESULT_MARKER,
    SCENARIOS,
    SERVER_CPU,
    Measurement,
    sizes_dict,
    sizes_for,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SERVER_START_TIMEOUT = 30.0
PEER_REQUIREMENTS = ("websockets>=15,<16", "aio-websocket-pool", "async-websocket-pool")
PEER_INSTALL_TIMEOUT = 600.0
VERSIONED = (
    "anyio",
    "httpx",
    "httpx-ws",
    "wsproto",
    "trio",
    "uvloop",
    "websockets",
    "picows",
    "matplotlib",
    "anyio-wspool",
)


def log(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


# -- the echo server ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Server:
    port: int
    implementation: str


def _read_line(process: subprocess.Popen[str], timeout: float) -> str | None:
    """One line of the process's stdout, or None if none came within ``timeout``."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if selector.select(left):
                line = process.stdout.readline()
                return line if line else None
    return None


@contextlib.contextmanager
def echo_server(implementation: str) -> Iterator[Server]:
    """Start ``_server.py``, wait for its ``PORT`` line, and stop it at the end."""
    command = [
        sys.executable,
        str(HERE / "_server.py"),
        "--impl",
        implementation,
        "--cpu",
        str(SERVER_CPU),
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO
    )
    try:
        line = _read_line(process, SERVER_START_TIMEOUT)
        if line is None or not line.startswith("PORT "):
            process.kill()
            _, err = process.communicate(timeout=10)
            raise RuntimeError(
                f"the echo server did not announce its port within {SERVER_START_TIMEOUT} s "
                f"(got {line!r}); its stderr:\n{err}"
            )
        _, port, name = line.split()
        yield Server(int(port), name)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


# -- the peers' environment --------------------------------------------------------------------


def peer_venv_dir() -> Path:
    key = "|".join([*PEER_REQUIREMENTS, sys.version, str(REPO)])
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"anyio-wspool-bench-peers-{digest}"


def prepare_peers() -> tuple[str | None, str | None]:
    """The peers' Python (creating their venv if needed), or None and the reason."""
    venv = peer_venv_dir()
    python = venv / "bin" / "python"
    ready = venv / ".ready"
    if ready.exists() and python.exists():
        return str(python), None
    log(f"creating the peers' virtual environment in {venv} ...")
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(venv)],
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            *PEER_REQUIREMENTS,
            "-e",
            str(REPO),
        ],
    ]
    for step in steps:
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


# -- workers ------------------------------------------------------------------------------------


def _failed(scenario: str, backend: str, rep: int, seconds: float, error: str) -> dict[str, Any]:
    return {
        "scenario": scenario,
        "backend": backend,
        "rep": rep,
        "ok": False,
        "seconds": seconds,
        "error": error,
        "measurements": [],
        "notes": {},
    }


def run_worker(
    command: Sequence[str], scenarios: Sequence[str], backend: str, rep: int, timeout: float
) -> list[dict[str, Any]]:
    """Run one worker process; one record per scenario (its figures, or its error)."""
    start = time.monotonic()
    try:
        done = subprocess.run(
            list(command), capture_output=True, text=True, timeout=timeout, cwd=REPO
        )
    except subprocess.TimeoutExpired:
        seconds = time.monotonic() - start
        error = f"the worker did not finish within {timeout:.0f} s"
        return [_failed(name, backend, rep, seconds, error) for name in scenarios]
    seconds = (time.monotonic() - start) / len(scenarios)
    results: dict[str, dict[str, Any]] = {}
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            payload = json.loads(line[len(RESULT_MARKER) :])
            results[payload["scenario"]] = payload
    tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-8:])
    records = []
    for name in scenarios:
        payload = results.get(name)
        if payload is not None and len(scenarios) > 1:
            seconds = payload["seconds"]
        if payload is None:
            error = f"exit status {done.returncode}, no result: {tail}"
            records.append(_failed(name, backend, rep, seconds, error))
        elif payload["error"] is not None:
            records.append(_failed(name, backend, rep, seconds, payload["error"]))
        else:
            measurements: list[Measurement] = payload["measurements"]
            records.append(
                {
                    "scenario": name,
                    "backend": backend,
                    "rep": rep,
                    "ok": True,
                    "seconds": seconds,
                    "error": None,
                    "measurements": measurements,
                    "notes": payload["notes"],
                }
            )
    return records


# -- the machine ----------------------------------------------------------------------------------


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory() -> str:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    return "unknown"


def _git_revision() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=REPO,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "anyio_wspool"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=REPO,
        ).stdout.strip()
        if rev:
            return rev + (" (anyio_wspool/ modified)" if dirty else "")
    return "unknown"


def describe_machine(
    server: Server | None, peer_versions: dict[str, str], revision: str
) -> dict[str, str]:
    cores = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    machine = {
        "CPU": f"{_cpu_model()}, {cores} logical cores ({usable} usable)",
        "memory": _memory(),
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
    if server is not None:
        machine["echo server"] = (
            f"{server.implementation} (on uvloop), pinned to CPU {SERVER_CPU}; "
            f"clients pinned to CPU {CLIENT_CPU}"
            if usable > 1
            else f"{server.implementation}; not pinned (one CPU)"
        )
    for name, version in sorted(peer_versions.items()):
        machine[f"peers' venv: {name}"] = version
    return machine


# -- main ---------------------------------------------------------------------------------------


def _csv(value: str, allowed: Sequence[str], what: str) -> list[str]:
    items = [item.strip() for item in value.split(",") if item.strip()]
    unknown = [item for item in items if item not in allowed]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown {what}: {', '.join(unknown)} (choose from {', '.join(allowed)})"
        )
    return items


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Run the anyio_wspool benchmarks and write results.json, RESULTS.md "
        "and throughput.png."
    )
    parser.add_argument("--quick", action="store_true", help="small counts, 3 repetitions")
    parser.add_argument(
        "--backends",
        type=lambda v: _csv(v, BACKENDS, "backend"),
        default=list(BACKENDS),
        help="comma-separated: asyncio,uvloop,trio",
    )
    parser.add_argument(
        "--scenarios",
        type=lambda v: _csv(v, SCENARIOS, "scenario"),
        default=list(SCENARIOS),
        help="comma-separated: " + ",".join(SCENARIOS),
    )
    parser.add_argument("--out", type=Path, default=HERE, help="where to write the results")
    parser.add_argument("--repetitions", type=int, default=None, help="override the count")
    parser.add_argument("--server", choices=("auto", "picows", "websockets"), default="auto")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="measure nothing: summarise --out/results.json again and rewrite the report",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report_only:
        return report_only(args.out)
    started = time.monotonic()
    revision = _git_revision()
    sizes = sizes_for(args.quick)
    repetitions = args.repetitions or sizes.repetitions
    backends: list[str] = args.backends
    scenarios: list[str] = args.scenarios
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    peer_python: str | None = None
    peer_problem: str | None = None
    if "peers" in scenarios and "asyncio" in backends:
        peer_python, peer_problem = prepare_peers()
        if peer_problem:
            log(f"the peers cannot be measured: {peer_problem}")

    # One process per scenario, repetition and backend; --quick groups the
    # scenarios of a repetition and backend in one process to save start-ups.
    local = [name for name in scenarios if name != "peers"]
    groups: list[list[str]] = [local] if args.quick and local else [[n] for n in local]
    jobs: list[tuple[list[str], str, int]] = [
        (group, backend, rep)
        for group in groups
        for rep in range(repetitions)
        for backend in backends
    ]
    if "peers" in scenarios and "asyncio" in backends:
        jobs += [(["peers"], "asyncio", rep) for rep in range(repetitions)]
    runs: list[dict[str, Any]] = []
    flags = ["--quick"] if args.quick else []
    with echo_server(args.server) as server:
        log(f"echo server: {server.implementation} on port {server.port}")
        for index, (group, backend, rep) in enumerate(jobs, 1):
            if group == ["peers"]:
                if peer_python is None:
                    error = f"the peers' environment could not be made: {peer_problem}"
                    runs.append(_failed("peers", backend, rep, 0.0, error))
                    continue
                command = [peer_python, str(HERE / "_peers.py"), str(server.port), str(rep)]
            else:
                command = [
                    sys.executable,
                    str(HERE / "_worker.py"),
                    ",".join(group),
                    backend,
                    str(server.port),
                    str(rep),
                ]
            timeout = sizes.worker_timeout * len(group)
            records = run_worker([*command, *flags], group, backend, rep, timeout)
            runs += records
            for record in records:
                status = (
                    "ok" if record["ok"] else "FAILED: " + str(record["error"]).splitlines()[-1]
                )
                log(
                    f"[{index:3d}/{len(jobs)}] {record['scenario']:<10} {backend:<7} "
                    f"rep {rep}: {record['seconds']:5.1f} s {status}"
                )

    peer_versions = {
        key.removeprefix("version "): value
        for run in runs
        if run["scenario"] == "peers"
        for key, value in run["notes"].items()
        if key.startswith("version ")
    }
    meta: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "quick": args.quick,
        "repetitions": repetitions,
        "backends": backends,
        "scenarios": scenarios,
        "server": server.implementation,
        "server_cpu": SERVER_CPU,
        "client_cpu": CLIENT_CPU,
        "duration_s": time.monotonic() - started,
        "machine": describe_machine(server, peer_versions, revision),
        "sizes": sizes_dict(sizes),
    }
    write_results(out, meta, runs)
    return 0 if all(run["ok"] for run in runs) else 1


def write_results(out: Path, meta: dict[str, Any], runs: list[dict[str, Any]]) -> None:
    """Summarise ``runs`` and write results.json, RESULTS.md and throughput.png to ``out``."""
    from _report import evaluate_targets, plot_throughput, render_markdown, summarize

    typed_runs: Any = runs
    backends: list[str] = meta["backends"]
    summary = summarize(typed_runs)
    targets = evaluate_targets(typed_runs, backends, meta["sizes"])
    (out / "results.json").write_text(
        json.dumps({"meta": meta, "runs": runs, "summary": summary, "targets": targets}, indent=1)
        + "\n"
    )
    markdown = render_markdown(meta, typed_runs, summary, targets, backends, meta["scenarios"])
    (out / "RESULTS.md").write_text(markdown + "\n")
    plotted = plot_throughput(summary, backends, out / "throughput.png")
    log(
        f"wrote {out / 'results.json'}, {out / 'RESULTS.md'}"
        + (f", {out / 'throughput.png'}" if plotted else "")
    )


def report_only(out: Path) -> int:
    """Write the summary, RESULTS.md and the plot again from the figures in results.json."""
    data = json.loads((out / "results.json").read_text())
    write_results(out, data["meta"], data["runs"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
