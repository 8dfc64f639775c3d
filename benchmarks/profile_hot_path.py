"""Profile the pool's hot paths with pyinstrument (``pip install pyinstrument``).

Two paths, each on the generic connector with a fake resource so that only the
pool is in the profile:

* ``idle``: one task takes and gives back an idle connection (scenario 1);
* ``handoff``: ten borrowers queue for one connection and take it in turn, so
  that every lease waits and every give-back hands the connection to a waiter
  (scenarios 2, 3 and 5: what a busy pool does on every round trip).

Usage::

    python benchmarks/profile_hot_path.py [idle|handoff] [--backend asyncio|uvloop|trio]
        [--cycles N] [--html FILE]

The text report goes to stdout; ``--html`` writes pyinstrument's HTML view too.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

from _scenarios import BACKENDS, pool_idle_cost, pool_wait_cost, run_on

#: each path takes the number of leases: one idle connection, or ten borrowers on one
PATHS: dict[str, Callable[[int], Awaitable[float]]] = {
    "idle": partial(pool_idle_cost, 1),
    "handoff": partial(pool_wait_cost, 10),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", choices=sorted(PATHS), nargs="?", default="handoff")
    parser.add_argument("--backend", choices=BACKENDS, default="asyncio")
    parser.add_argument("--cycles", type=int, default=200_000)
    parser.add_argument("--html", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        # Looked up at run time: pyinstrument is not a dependency of the project.
        pyinstrument: Any = importlib.import_module("pyinstrument")
    except ImportError:
        sys.exit("pyinstrument is not installed: pip install pyinstrument")

    profiler = pyinstrument.Profiler(interval=0.0001, async_mode="disabled")
    profiler.start()
    run_on(args.backend, PATHS[args.path], args.cycles)
    profiler.stop()
    sys.stdout.write(profiler.output_text(unicode=True, color=False, show_all=False))
    if args.html is not None:
        args.html.write_text(profiler.output_html())


if __name__ == "__main__":
    main()
