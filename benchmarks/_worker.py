"""One measurement process: one scenario (or a few, in --quick), one backend, one repetition.

Started by ``run.py`` (a fresh process each time, so that repetitions are
independent and no backend warms another's caches), pinned to the client CPU.
Each scenario runs on a fresh event loop and prints one result line
(``@@RESULT@@ {json}``) on stdout; a scenario that fails prints its error
instead, and the next one still runs.

Usage: ``python benchmarks/_worker.py SCENARIO[,SCENARIO...] BACKEND PORT REP [--quick] [--cpu N]``
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import time
import traceback
from functools import partial

import anyio
from _common import BACKENDS, CLIENT_CPU, Backend, Recorder, pin_to_cpu, sizes_for
from _scenarios import SCENARIO_FUNCTIONS, Context


def run_on(backend: Backend, scenario: str, ctx: Context) -> None:
    """Run ``scenario`` on a fresh event loop of ``backend``."""
    main = partial(_run, scenario, ctx)
    if backend == "uvloop":
        anyio.run(main, backend="asyncio", backend_options={"use_uvloop": True})
    else:
        anyio.run(main, backend=backend)


async def _run(scenario: str, ctx: Context) -> None:
    try:
        loop = type(asyncio.get_running_loop())
    except RuntimeError:
        ctx.rec.note("loop", "trio")
    else:
        ctx.rec.note("loop", f"{loop.__module__}.{loop.__qualname__}")
    await SCENARIO_FUNCTIONS[scenario](ctx)


def _scenarios(value: str) -> list[str]:
    names = value.split(",")
    unknown = [name for name in names if name not in SCENARIO_FUNCTIONS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown scenario: {', '.join(unknown)}")
    return names


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenarios", type=_scenarios)
    parser.add_argument("backend", choices=BACKENDS)
    parser.add_argument("port", type=int)
    parser.add_argument("rep", type=int)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--cpu", type=int, default=CLIENT_CPU)
    args = parser.parse_args(argv)
    pinned = pin_to_cpu(args.cpu)
    for scenario in args.scenarios:
        recorder = Recorder(scenario)
        recorder.note("pinned", str(pinned))
        recorder.note("python", platform.python_version())
        ctx = Context(
            backend=args.backend,
            port=args.port,
            rep=args.rep,
            sizes=sizes_for(args.quick),
            rec=recorder,
        )
        start = time.monotonic()
        try:
            run_on(args.backend, scenario, ctx)
        except Exception:
            recorder.fail(traceback.format_exc())
        recorder.seconds = time.monotonic() - start
        recorder.emit()


if __name__ == "__main__":
    main()
