"""From the workers' figures to ``results.json``, ``RESULTS.md`` and ``throughput.png``.

Every ratio here is taken within one repetition (two contenders measured in
the same process, seconds apart) and then summarised over the repetitions:
median, with the smallest and largest. A ratio is always *contender ÷
baseline* of the same metric; whether above or below 1 is better depends on
the metric (stated in each table's heading).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypedDict

import _peers as peers
import _scenarios as sc
from _common import ASYNCIO_ONLY, BACKENDS, Measurement, median

Better = Literal["lower", "higher", "none"]

#: typography of the report (escaped: ruff flags look-alike characters in the source)
X = "\u00d7"
EN = "\u2013"
Op = Literal["<=", ">=", "=="]
Role = Literal["target", "aim", "reported"]


class Run(TypedDict):
    """One worker process: its figures, or the error that stopped it."""

    scenario: str
    backend: str
    rep: int
    ok: bool
    seconds: float
    error: str | None
    measurements: list[Measurement]
    notes: dict[str, str]


class Spread(TypedDict):
    median: float
    min: float
    max: float
    n: int


@dataclass(frozen=True, slots=True)
class Metric:
    key: str
    label: str
    better: Better
    digits: int = 1
    ratio: bool = True
    #: the contender this metric's ratios are taken to, when not the scenario's baseline
    baseline: str | None = None


@dataclass(frozen=True, slots=True)
class Scenario:
    key: str
    number: str
    title: str
    text: str
    baseline: str | None
    metrics: tuple[Metric, ...]

    def baseline_of(self, metric: str) -> str | None:
        """The contender that ``metric``'s ratios are taken to (None: no ratio)."""
        for candidate in self.metrics:
            if candidate.key == metric:
                return (candidate.baseline or self.baseline) if candidate.ratio else None
        return None


@dataclass(frozen=True, slots=True)
class Target:
    """One target of the issue: a ratio to a baseline, or a plain value."""

    scenario: str
    label: str
    contender: str
    metric: str
    op: Op
    threshold: float
    baseline: str | None = None
    backends: tuple[str, ...] = BACKENDS
    #: "target": the issue's target; "aim": the issue's stated aim beyond it;
    #: "reported": a figure the issue asks to show, or a diagnostic, with no target
    role: Role = "target"


US = "µs per cycle"
RATE = "round trips/s"

SCENARIO_SPECS: tuple[Scenario, ...] = (
    Scenario(
        "overhead",
        "1",
        "Overhead: acquire + release of an idle connection",
        "One task takes and gives back an idle connection N times (20,000 in a full "
        "run), nothing sent. The floor is a bare `anyio.CapacityLimiter` acquire/release "
        "around a deque pop/append; the unbounded deque is livekit-agents' technique "
        "(no capacity bound), bare and behind an `@asynccontextmanager` like livekit's "
        "`connection()`.",
        sc.OVERHEAD_FLOOR,
        (Metric("us_per_cycle", US, "lower", 2),),
    ),
    Scenario(
        "echo",
        "2",
        "Pooled echo through httpx-ws",
        "64 tasks share 16 connections; each task makes 500 round trips of 64 bytes, "
        "one lease per round trip. Pool and queues are warmed (16 connections open) "
        "before the clock starts. Baselines: (b) 16 persistent httpx-ws sessions handed "
        "out by a FIFO queue (anyio memory object stream), the ceiling for httpx-ws; "
        "(a) `aconnect_ws` per request (fewer requests, same rate). The diagnostic row "
        "'queue of 16 hardened sessions' uses the pool's own session class without the "
        "pool: it separates the cost of lending from the cost of the session. "
        "`server_handshakes` is counted by the echo server.",
        sc.ECHO_QUEUE,
        (
            Metric("round_trips_per_s", RATE, "higher", 0),
            Metric("server_handshakes", "handshakes seen by the server", "none", 0, False),
        ),
    ),
    Scenario(
        "connector",
        "3",
        "Pooled echo through the generic connector (websockets client)",
        "The workload of scenario 2 with `open_pool(connect=...)` around the "
        "`websockets` library's client (its asyncio client on asyncio and uvloop, its "
        "trio client on trio), against the same FIFO queue of 16 `websockets` "
        "connections.",
        sc.CONNECTOR_QUEUE,
        (Metric("round_trips_per_s", RATE, "higher", 0),),
    ),
    Scenario(
        "fairness",
        "4",
        "Fairness under contention",
        "2,000 tasks, 10 connections (warmed), one round trip each; each timed segment "
        "is one such burst, so *total seconds* is per burst, waits are pooled over all "
        "timed bursts, and failures and 'out of FIFO order' are counted over all of "
        f"them (5 {X} 2,000 borrowers in a full run). 'Out of FIFO order' counts borrowers "
        "that got a connection at another position than the one they arrived at "
        "(trio's scheduler reorders tasks woken together, so only asyncio is held to "
        "zero).",
        sc.FAIRNESS_QUEUE,
        (
            Metric("total_s", "total seconds", "lower", 3),
            Metric("wait_p50_ms", "wait p50, ms", "lower", 1),
            Metric("wait_p99_ms", "wait p99, ms", "lower", 1),
            Metric("wait_max_ms", "wait max, ms", "lower", 1),
            Metric("failures", "failures", "lower", 0, False),
            Metric("out_of_fifo_order", "out of FIFO order", "lower", 0, False),
        ),
    ),
    Scenario(
        "scale",
        "5",
        "Scale: cost per acquire + release against pool size and queue length",
        "The generic connector with a fake resource. *idle N*: one task takes and "
        "gives back a connection while N are idle. *waiting N*: N borrowers queue for "
        "a single connection and take it in turn (one scheduling point inside each "
        "lease, so every lease is a hand-off to a waiter); the clock starts with all N "
        "queued. *growth* is the cost at the largest size ÷ the cost at the smallest "
        "(target ≤ 1.2: nothing on the hot path loops over connections or waiters); its "
        "ratio to the floor's growth separates what the pool adds from what 10,000 live "
        "tasks cost the runtime itself (cache misses, garbage collection), which the "
        "floor, an `anyio.CapacityLimiter` with its O(1) queue, pays as well.",
        sc.SCALE_FLOOR,
        (
            Metric("idle_small_us", "idle {idle_small}: µs per cycle", "lower", 2),
            Metric("idle_medium_us", "idle {idle_medium}: µs per cycle", "lower", 2),
            Metric("idle_large_us", "idle {idle_large}: µs per cycle", "lower", 2),
            Metric("waiting_small_us", "waiting {waiting_small}: µs per lease", "lower", 2),
            Metric("waiting_large_us", "waiting {waiting_large}: µs per lease", "lower", 2),
            Metric("idle_growth", "growth, idle {idle_small} → {idle_large}", "lower", 2),
            Metric(
                "waiting_growth", "growth, waiting {waiting_small} → {waiting_large}", "lower", 2
            ),
        ),
    ),
    Scenario(
        "memory",
        "6",
        "Memory per idle connection",
        "Bytes traced by `tracemalloc` per connection while N connections (64 in a "
        "full run) are open: bare httpx-ws sessions, idle pooled ones (the pool's "
        "hardened session, its host task, its bookkeeping), and idle pooled fake "
        "resources (the pool's own cost per connection, nothing else). Python "
        "allocations only: kernel socket buffers are not counted.",
        sc.MEMORY_BARE,
        (Metric("bytes_per_connection", "bytes per connection", "lower", 0),),
    ),
    Scenario(
        "peers",
        "7",
        "Peers from the package index (asyncio only, websockets 15, own venv)",
        "`aio-websocket-pool` and `async-websocket-pool` pin `websockets<16`: they run "
        "in a virtual environment of their own with websockets 15, and every contender "
        "of this scenario uses that same client. `aio-websocket-pool` fails at once "
        "when all its connections are busy (`ConnectionPoolExhaustedError`): with 64 "
        "tasks its failed acquisitions are counted and its rate counts successful "
        "round trips only. `async-websocket-pool` is not a lending pool (reconnecting "
        "listeners with callbacks, no acquire/release): it is measured on the only "
        "shape it supports, one conversation per connection (16 tasks).",
        peers.QUEUE,
        (
            Metric("overhead_us_per_cycle", "overhead, " + US, "lower", 2, baseline=peers.FLOOR),
            Metric(
                "tasks_16_round_trips_per_s", "16 tasks on 16 connections, " + RATE, "higher", 0
            ),
            Metric(
                "tasks_64_round_trips_per_s", "64 tasks on 16 connections, " + RATE, "higher", 0
            ),
            Metric("tasks_64_failed_acquires", "64 tasks: failed acquisitions", "lower", 0, False),
        ),
    ),
    Scenario(
        "throughput",
        "—",
        "Throughput against concurrency (the plot)",
        "Round trips/s with 1, 4, 16 and 64 tasks: the pool (16 connections, httpx-ws) "
        "against a new `aconnect_ws` connection per request. Plotted in "
        "[throughput.png](throughput.png).",
        sc.THROUGHPUT_PER_REQUEST,
        tuple(
            Metric(f"tasks_{n}_round_trips_per_s", f"{n} tasks, {RATE}", "higher", 0)
            for n in (1, 4, 16, 64)
        ),
    ),
)

TARGETS: tuple[Target, ...] = (
    # 1. overhead
    Target(
        "overhead",
        f"pool.connection() (httpx-ws) ≤ 1.0{X} the floor",
        sc.OVERHEAD_POOL,
        "us_per_cycle",
        "<=",
        1.0,
        sc.OVERHEAD_FLOOR,
    ),
    Target(
        "overhead",
        f"acquire()/release() (httpx-ws) ≤ 1.0{X} the floor",
        sc.OVERHEAD_POOL_ACQUIRE,
        "us_per_cycle",
        "<=",
        1.0,
        sc.OVERHEAD_FLOOR,
    ),
    Target(
        "overhead",
        "aim: pool.connection() as cheap as the unbounded deque behind a context manager",
        sc.OVERHEAD_POOL,
        "us_per_cycle",
        "<=",
        1.0,
        sc.OVERHEAD_UNBOUNDED_CM,
        role="aim",
    ),
    Target(
        "overhead",
        "pool.connection() against the bare unbounded deque get/put",
        sc.OVERHEAD_POOL,
        "us_per_cycle",
        "<=",
        1.0,
        sc.OVERHEAD_UNBOUNDED,
        role="reported",
    ),
    # 2. pooled echo
    Target(
        "echo",
        f"pooled echo ≥ 0.95{X} queue of 16 httpx-ws sessions (b)",
        sc.ECHO_POOL,
        "round_trips_per_s",
        ">=",
        0.95,
        sc.ECHO_QUEUE,
    ),
    Target(
        "echo",
        "lending alone: pool against a queue of the same hardened sessions",
        sc.ECHO_POOL,
        "round_trips_per_s",
        ">=",
        0.95,
        sc.ECHO_HARDENED,
        role="reported",
    ),
    Target(
        "echo",
        "multiple over aconnect_ws per request (a)",
        sc.ECHO_POOL,
        "round_trips_per_s",
        ">=",
        1.0,
        sc.ECHO_PER_REQUEST,
        role="reported",
    ),
    Target(
        "echo",
        "server-counted handshakes of the pool = 16",
        sc.ECHO_POOL,
        "server_handshakes",
        "==",
        16,
    ),
    # 3. generic connector
    Target(
        "connector",
        f"connect=websockets ≥ 0.95{X} queue of websockets connections",
        sc.CONNECTOR_POOL,
        "round_trips_per_s",
        ">=",
        0.95,
        sc.CONNECTOR_QUEUE,
    ),
    # 4. fairness
    Target(
        "fairness",
        f"total time ≤ 1.05{X} the queue of the same stack",
        sc.FAIRNESS_POOL,
        "total_s",
        "<=",
        1.05,
        sc.FAIRNESS_QUEUE,
    ),
    Target("fairness", "zero failures", sc.FAIRNESS_POOL, "failures", "==", 0),
    Target(
        "fairness",
        "FIFO order kept (asyncio)",
        sc.FAIRNESS_POOL,
        "out_of_fifo_order",
        "==",
        0,
        backends=("asyncio", "uvloop"),
    ),
    # 5. scale
    Target(
        "scale",
        f"idle {{idle_small}} → {{idle_large}}: cost growth ≤ 1.2{X}",
        sc.SCALE_POOL,
        "idle_growth",
        "<=",
        1.2,
    ),
    Target(
        "scale",
        f"waiting {{waiting_small}} → {{waiting_large}}: cost growth ≤ 1.2{X}",
        sc.SCALE_POOL,
        "waiting_growth",
        "<=",
        1.2,
    ),
    Target(
        "scale",
        "diagnostic: waiting growth against the floor's own growth",
        sc.SCALE_POOL,
        "waiting_growth",
        "<=",
        1.0,
        sc.SCALE_FLOOR,
        role="reported",
    ),
    Target(
        "scale",
        "diagnostic: hand-off to a waiter against the floor's (waiting {waiting_small})",
        sc.SCALE_POOL,
        "waiting_small_us",
        "<=",
        1.0,
        sc.SCALE_FLOOR,
        role="reported",
    ),
    # 6. memory
    Target(
        "memory",
        "pool's own bytes per idle connection (pooled - bare)",
        sc.MEMORY_OVERHEAD,
        "bytes_per_connection",
        ">=",
        0,
        role="reported",
    ),
    # 7. peers
    Target(
        "peers",
        "peers, 64 tasks: anyio_wspool against the queue (websockets 15)",
        peers.ANYIO_WSPOOL,
        "tasks_64_round_trips_per_s",
        ">=",
        0.95,
        peers.QUEUE,
        backends=("asyncio",),
        role="reported",
    ),
    Target(
        "peers",
        "peers, 64 tasks: aio-websocket-pool against the queue",
        peers.AIO_POOL,
        "tasks_64_round_trips_per_s",
        ">=",
        0.95,
        peers.QUEUE,
        backends=("asyncio",),
        role="reported",
    ),
    Target(
        "peers",
        "peers, 16 tasks: async-websocket-pool against the queue",
        peers.ASYNC_POOL,
        "tasks_16_round_trips_per_s",
        ">=",
        0.95,
        peers.QUEUE,
        backends=("asyncio",),
        role="reported",
    ),
    Target(
        "peers",
        "peers, overhead: anyio_wspool against aio-websocket-pool",
        peers.ANYIO_WSPOOL,
        "overhead_us_per_cycle",
        "<=",
        1.0,
        peers.AIO_POOL,
        backends=("asyncio",),
        role="reported",
    ),
)


# -- summarising --------------------------------------------------------------------------------


def size_words(sizes: dict[str, Any]) -> dict[str, str]:
    """What the labels' ``{idle_small}``-style placeholders stand for in this run."""
    words: dict[str, str] = {}
    for kind, ranks in (("idle", sc.SCALE_IDLE_RANKS), ("waiting", sc.SCALE_WAITING_RANKS)):
        for rank, count in zip(ranks, sizes[f"scale_{kind}"], strict=True):
            words[f"{kind}_{rank}"] = f"{count:,}"
    return words


def spread(values: Sequence[float]) -> Spread | None:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return None
    return Spread(median=median(finite), min=min(finite), max=max(finite), n=len(finite))


Key = tuple[str, str, str, str]  # scenario, metric, contender, backend


def by_rep(runs: Iterable[Run]) -> dict[Key, dict[int, float]]:
    """Every figure, keyed by what it measures, then by repetition."""
    table: dict[Key, dict[int, float]] = defaultdict(dict)
    for run in runs:
        if not run["ok"]:
            continue
        for m in run["measurements"]:
            key = (run["scenario"], m["metric"], m["contender"], run["backend"])
            table[key][run["rep"]] = float(m["value"])
    return table


def ratio_spread(table: dict[Key, dict[int, float]], key: Key, baseline: str) -> Spread | None:
    scenario, metric, _, backend = key
    mine = table.get(key, {})
    base = table.get((scenario, metric, baseline, backend), {})
    ratios = [mine[rep] / base[rep] for rep in mine if rep in base and base[rep] != 0]
    return spread(ratios)


def summarize(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """One entry per scenario, metric, contender and backend, with its ratio to the baseline."""
    table = by_rep(runs)
    specs = {spec.key: spec for spec in SCENARIO_SPECS}
    rows: list[dict[str, Any]] = []
    for key, reps in sorted(table.items()):
        scenario, metric, contender, backend = key
        spec = specs.get(scenario)
        baseline = spec.baseline_of(metric) if spec is not None else None
        ratio = ratio_spread(table, key, baseline) if baseline is not None else None
        rows.append(
            {
                "scenario": scenario,
                "metric": metric,
                "contender": contender,
                "backend": backend,
                **(spread(list(reps.values())) or {}),
                "ratio": ratio,
                "ratio_to": baseline,
            }
        )
    return rows


def evaluate_targets(
    runs: Sequence[Run], backends: Sequence[str], sizes: dict[str, Any]
) -> list[dict[str, Any]]:
    table = by_rep(runs)
    words = size_words(sizes)
    out: list[dict[str, Any]] = []
    for target in TARGETS:
        for backend in target.backends:
            if backend not in backends:
                continue
            key = (target.scenario, target.metric, target.contender, backend)
            measured = (
                ratio_spread(table, key, target.baseline)
                if target.baseline is not None
                else spread(list(table.get(key, {}).values()))
            )
            met: bool | None = None
            if measured is not None:
                value = measured["median"]
                met = (
                    value <= target.threshold
                    if target.op == "<="
                    else value >= target.threshold
                    if target.op == ">="
                    else value == target.threshold
                )
            out.append(
                {
                    "scenario": target.scenario,
                    "target": target.label.format_map(words),
                    "backend": backend,
                    "kind": "ratio" if target.baseline is not None else "value",
                    "contender": target.contender,
                    "baseline": target.baseline,
                    "metric": target.metric,
                    "op": target.op,
                    "threshold": target.threshold,
                    "role": target.role,
                    "measured": measured,
                    "met": met,
                }
            )
    return out


# -- RESULTS.md ---------------------------------------------------------------------------------


def _number(value: float, digits: int) -> str:
    if math.isnan(value):
        return "—"
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def _cell(s: Spread | None, digits: int, suffix: str = "") -> str:
    if s is None:
        return "—"
    if s["n"] == 1 or s["min"] == s["max"]:
        return f"{_number(s['median'], digits)}{suffix}"
    return (
        f"{_number(s['median'], digits)}{suffix} "
        f"({_number(s['min'], digits)}{EN}{_number(s['max'], digits)})"
    )


def _ratio_digits(s: Spread) -> int:
    return 2 if s["median"] < 10 else 1 if s["median"] < 100 else 0


def _ratio_cell(s: Spread | None) -> str:
    if s is None:
        return "—"
    return _cell(s, _ratio_digits(s), X)


def _verdict(entry: dict[str, Any]) -> str:
    if entry["measured"] is None:
        return "not measured"
    if entry["role"] == "reported":
        return ""
    if entry["role"] == "aim":
        return "(aim met)" if entry["met"] else "(aim not met)"
    return "✅ met" if entry["met"] else "❌ missed"


def _headline(targets: Sequence[dict[str, Any]], backends: Sequence[str]) -> list[str]:
    lines = [
        "| # | target | " + " | ".join(backends) + " |",
        "|---|---|" + "---|" * len(backends),
    ]
    number = {spec.key: spec.number for spec in SCENARIO_SPECS}
    seen: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for entry in targets:
        seen.setdefault((entry["scenario"], entry["target"]), {})[entry["backend"]] = entry
    for (scenario, label), per_backend in seen.items():
        cells = []
        for backend in backends:
            found = per_backend.get(backend)
            if found is None:
                cells.append("n/a")
                continue
            measured = found["measured"]
            if found["kind"] == "ratio":
                text = _ratio_cell(measured)
            else:
                digits = 2 if found["metric"].endswith("growth") else 0
                text = _cell(measured, digits)
            cells.append(f"{text} {_verdict(found)}".rstrip())
        lines.append(f"| {number.get(scenario, '')} | {label} | " + " | ".join(cells) + " |")
    return lines


def _scenario_section(
    spec: Scenario,
    summary: Sequence[dict[str, Any]],
    runs: Sequence[Run],
    backends: Sequence[str],
    words: dict[str, str],
) -> list[str]:
    shown = [b for b in backends if spec.key not in ASYNCIO_ONLY or b == "asyncio"]
    lines = [f"## {spec.number}. {spec.title}", "", spec.text, ""]
    failed = [r for r in runs if r["scenario"] == spec.key and not r["ok"]]
    for run in failed:
        error = (run["error"] or "").strip().splitlines()
        lines.append(
            f"> **Not measured** on {run['backend']}, repetition {run['rep']}: "
            f"{error[-1] if error else 'no output'}"
        )
    if failed:
        lines.append("")
    rows = [r for r in summary if r["scenario"] == spec.key]
    if not rows:
        lines += ["No figures (the scenario did not run).", ""]
        return lines
    contenders = list(dict.fromkeys(r["contender"] for r in rows))
    for metric in spec.metrics:
        metric_rows = {(r["contender"], r["backend"]): r for r in rows if r["metric"] == metric.key}
        if not metric_rows:
            continue
        baseline = spec.baseline_of(metric.key)
        with_ratio = baseline is not None
        better = {"lower": "lower is better", "higher": "higher is better", "none": ""}[
            metric.better
        ]
        label = metric.label.format_map(words)
        heading = f"**{label}**" + (f" ({better})" if better else "")
        if with_ratio:
            heading += f"; ratio = contender ÷ *{baseline}*"
        lines += [heading, ""]
        header = "| contender |"
        rule = "|---|"
        for backend in shown:
            header += f" {backend} |" + (" ratio |" if with_ratio else "")
            rule += "---|" + ("---|" if with_ratio else "")
        lines += [header, rule]
        for contender in contenders:
            if not any((contender, b) in metric_rows for b in shown):
                continue
            name = contender + (" *(baseline)*" if contender == baseline else "")
            cells = []
            for backend in shown:
                row = metric_rows.get((contender, backend))
                value: Spread | None = None
                if row is not None and "median" in row:
                    value = Spread(median=row["median"], min=row["min"], max=row["max"], n=row["n"])
                cells.append(_cell(value, metric.digits))
                if with_ratio:
                    cells.append(_ratio_cell(row["ratio"] if row is not None else None))
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    notes = _scenario_notes(spec.key, runs)
    if notes:
        lines += ["Notes: " + "; ".join(notes) + ".", ""]
    return lines


def _scenario_notes(scenario: str, runs: Sequence[Run]) -> list[str]:
    found: dict[str, set[str]] = defaultdict(set)
    for run in runs:
        if run["scenario"] != scenario or not run["ok"]:
            continue
        for key, value in run["notes"].items():
            if key in {"python", "pinned"}:
                continue
            found[key].add(f"{run['backend']}: {value}" if key in {"loop", "client"} else value)
    return [f"{key}: {', '.join(sorted(values))}" for key, values in sorted(found.items())]


def render_markdown(
    meta: dict[str, Any],
    runs: Sequence[Run],
    summary: Sequence[dict[str, Any]],
    targets: Sequence[dict[str, Any]],
    backends: Sequence[str],
    scenarios: Sequence[str],
) -> str:
    lines = [
        "# anyio_wspool benchmarks",
        "",
        f"Generated by `python benchmarks/run.py{' --quick' if meta['quick'] else ''}` "
        f"on {meta['date']} ({meta['duration_s']:.0f} s); reproduce with `nox -s bench` "
        "(`nox -s bench -- --quick` for a short run). Every figure is the **median** of "
        f"{meta['repetitions']} repetitions, with the smallest and largest in parentheses. "
        "Each repetition of each scenario on each backend runs in a fresh process; in it, "
        "every contender of the scenario is set up, then their timed segments run in "
        f"alternation ({meta['sizes']['segments']} each, after an untimed warm-up), so that "
        "a **ratio** (contender ÷ baseline, taken per repetition) compares figures sampled "
        "over the same stretch of time. The machine is shared and noisy: compare ratios "
        "within this file, never absolute figures across runs.",
        "",
    ]
    if meta["quick"]:
        lines += [
            "> **Quick run**: smaller counts, 3 repetitions, and the scenarios of a "
            "repetition share one process per backend; figures are indicative only.",
            "",
        ]
    lines += ["## Machine", "", "| | |", "|---|---|"]
    for key, value in meta["machine"].items():
        lines.append(f"| {key} | {value} |")
    lines += ["", "## Headline: the issue's targets", ""]
    lines += [
        f"Ratios are contender ÷ baseline (median over repetitions, min{EN}max). "
        "A verdict is taken on the median. Rows without one are figures the issue asks "
        "to show, or diagnostics; '(aim …)' rows are the issue's stated aim beyond its "
        "target.",
        "",
    ]
    lines += _headline(targets, backends)
    lines.append("")
    for spec in SCENARIO_SPECS:
        if spec.key in scenarios:
            lines += _scenario_section(spec, summary, runs, backends, size_words(meta["sizes"]))
    lines += [
        "## How the figures are taken",
        "",
        "- The echo server is a separate process (`benchmarks/_server.py`, "
        f"{meta['server']}) pinned to CPU {meta['server_cpu']}; every client process is "
        f"pinned to CPU {meta['client_cpu']} (when the machine has two CPUs or more).",
        "- The baselines are hand-written equivalents of a technique, named for what "
        "they are (`benchmarks/_scenarios.py`); no other project's code is copied.",
        "- Wall-clock time with `time.perf_counter()`; garbage collected before each "
        "timed section; no timing is ever asserted.",
        "- Profile the hot paths with `python benchmarks/profile_hot_path.py` (pyinstrument).",
        "",
    ]
    return "\n".join(lines)


# -- throughput.png -----------------------------------------------------------------------------


def plot_throughput(summary: Sequence[dict[str, Any]], backends: Sequence[str], path: Path) -> bool:
    """Round trips/s against concurrency, pool against connect-per-request; False if no data."""
    rows = [r for r in summary if r["scenario"] == "throughput" and "median" in r]
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"asyncio": "tab:blue", "uvloop": "tab:green", "trio": "tab:purple"}
    styles = {sc.THROUGHPUT_POOL: "-", sc.THROUGHPUT_PER_REQUEST: "--"}
    figure, axes = plt.subplots(figsize=(8, 5), dpi=120)
    for contender, style in styles.items():
        for backend in backends:
            points = []
            for row in rows:
                if row["contender"] != contender or row["backend"] != backend:
                    continue
                tasks = int(row["metric"].split("_")[1])
                points.append((tasks, row["median"], row["min"], row["max"]))
            if not points:
                continue
            points.sort()
            xs = [p[0] for p in points]
            ys = [p[1] for p in points]
            low = [p[1] - p[2] for p in points]
            high = [p[3] - p[1] for p in points]
            short = "pool" if contender == sc.THROUGHPUT_POOL else "per request"
            axes.errorbar(
                xs,
                ys,
                yerr=[low, high],
                linestyle=style,
                marker="o",
                capsize=3,
                color=colours.get(backend, "black"),
                label=f"{short}, {backend}",
            )
    axes.set_xscale("log", base=2)
    ticks = sorted({int(row["metric"].split("_")[1]) for row in rows})
    axes.set_xticks(ticks, [str(tick) for tick in ticks])
    axes.tick_params(axis="x", which="minor", bottom=False)
    axes.set_yscale("log")
    axes.set_xlabel("concurrent tasks")
    axes.set_ylabel("round trips / s (64-byte echo)")
    axes.set_title(
        "anyio_wspool (16 connections, httpx-ws) vs aconnect_ws per request\n"
        f"median of repetitions, bars: min{EN}max"
    )
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8, ncols=2)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return True
