"""From the workers' figures to ``results.json``, ``RESULTS.md`` and ``throughput.png``.

Every ratio here is taken within one repetition (two contenders measured in
the same process, seconds apart) and then summarised over the repetitions:
median, with the smallest and largest. A ratio is always *contender ÷
baseline* of the same metric; whether above or below 1 is better depends on
the metric (stated in each table's heading). Each scenario's title and text
come from its docstring, its metrics and targets from its ``@scenario``.
"""

from __future__ import annotations

import json
import math
import operator
import statistics
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypedDict

import _scenarios as sc
from _scenarios import SCENARIOS, Run, Scenario

#: every scenario, in the order of the report
SPECS: list[Scenario] = sorted(
    SCENARIOS.values(),
    key=lambda spec: (not spec.number.isdigit(), int(spec.number) if spec.number.isdigit() else 0),
)
EN = "\u2013"  # the en dash of ranges (escaped: ruff flags look-alike characters)
OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "==": operator.eq,
}


class Spread(TypedDict):
    median: float
    min: float
    max: float
    n: int


Key = tuple[str, str, str, str]  # scenario, metric, contender, backend


def spread(values: Iterable[float]) -> Spread | None:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return None
    return Spread(median=statistics.median(finite), min=min(finite), max=max(finite), n=len(finite))


def by_rep(runs: Iterable[Run]) -> dict[Key, dict[int, float]]:
    """Every figure, keyed by what it measures, then by repetition."""
    table: dict[Key, dict[int, float]] = defaultdict(dict)
    for run in runs:
        for m in run["measurements"] if run["ok"] else ():
            key = (run["scenario"], m["metric"], m["contender"], run["backend"])
            table[key][run["rep"]] = float(m["value"])
    return table


def ratio_spread(table: dict[Key, dict[int, float]], key: Key, baseline: str) -> Spread | None:
    scenario, metric, _, backend = key
    mine = table.get(key, {})
    base = table.get((scenario, metric, baseline, backend), {})
    return spread(mine[rep] / base[rep] for rep in mine if base.get(rep))


def summarize(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """One entry per scenario, metric, contender and backend, with its ratio to the baseline."""
    table = by_rep(runs)
    rows: list[dict[str, Any]] = []
    for key, reps in sorted(table.items()):
        spec = SCENARIOS.get(key[0])
        baseline = spec.baseline_of(key[1]) if spec is not None else None
        ratio = ratio_spread(table, key, baseline) if baseline is not None else None
        rows.append(
            dict(zip(("scenario", "metric", "contender", "backend"), key, strict=True))
            | dict(spread(reps.values()) or {})
            | {"ratio": ratio, "ratio_to": baseline}
        )
    return rows


def size_words(sizes: dict[str, Any]) -> dict[str, str]:
    """What the labels' ``{idle_small}``-style placeholders stand for in this run."""
    words: dict[str, str] = {}
    for kind, ranks in (("idle", sc.SCALE_IDLE_RANKS), ("waiting", sc.SCALE_WAITING_RANKS)):
        for rank, count in zip(ranks, sizes[f"scale_{kind}"], strict=True):
            words[f"{kind}_{rank}"] = f"{count:,}"
    return words


def evaluate_targets(
    runs: Sequence[Run], backends: Sequence[str], sizes: dict[str, Any]
) -> list[dict[str, Any]]:
    table = by_rep(runs)
    words = size_words(sizes)
    out: list[dict[str, Any]] = []
    for spec in SPECS:
        for target in spec.targets:
            metric, op, threshold = target.check.split()
            for backend in target.backends or spec.backends:
                if backend not in backends:
                    continue
                key = (spec.key, metric, target.contender, backend)
                measured = (
                    ratio_spread(table, key, target.baseline)
                    if target.baseline is not None
                    else spread(table.get(key, {}).values())
                )
                out.append(
                    {
                        "scenario": spec.key,
                        "target": target.label.format_map(words),
                        "backend": backend,
                        "kind": "ratio" if target.baseline is not None else "value",
                        "contender": target.contender,
                        "baseline": target.baseline,
                        "metric": metric,
                        "op": op,
                        "threshold": float(threshold),
                        "role": target.role,
                        "measured": measured,
                        "met": None
                        if measured is None
                        else OPS[op](measured["median"], float(threshold)),
                    }
                )
    return out


# -- RESULTS.md ---------------------------------------------------------------------------------


def _number(value: float, digits: int) -> str:
    return "—" if math.isnan(value) else f"{value:,.{digits}f}"


def _cell(s: Spread | None, digits: int, suffix: str = "") -> str:
    if s is None:
        return "—"
    text = f"{_number(s['median'], digits)}{suffix}"
    if s["min"] == s["max"]:
        return text
    return f"{text} ({_number(s['min'], digits)}{EN}{_number(s['max'], digits)})"


def _ratio_cell(s: Spread | None) -> str:
    if s is None:
        return "—"
    return _cell(s, 2 if s["median"] < 10 else 1 if s["median"] < 100 else 0, sc.X)


def _verdict(entry: dict[str, Any]) -> str:
    if entry["measured"] is None:
        return "not measured"
    return {
        "reported": "",
        "aim": "(aim met)" if entry["met"] else "(aim not met)",
        "target": "✅ met" if entry["met"] else "❌ missed",
    }[entry["role"]]


def _headline(targets: Sequence[dict[str, Any]], backends: Sequence[str]) -> list[str]:
    lines = [f"| # | target | {' | '.join(backends)} |", "|---|---|" + "---|" * len(backends)]
    rows: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for entry in targets:
        rows.setdefault((entry["scenario"], entry["target"]), {})[entry["backend"]] = entry
    for (scenario, label), per_backend in rows.items():
        cells = []
        for backend in backends:
            found = per_backend.get(backend)
            if found is None:
                cells.append("n/a")
                continue
            if found["kind"] == "ratio":
                text = _ratio_cell(found["measured"])
            else:
                text = _cell(found["measured"], 2 if found["metric"].endswith("growth") else 0)
            cells.append(f"{text} {_verdict(found)}".rstrip())
        lines.append(f"| {SCENARIOS[scenario].number} | {label} | {' | '.join(cells)} |")
    return lines


def _scenario_section(
    spec: Scenario,
    summary: Sequence[dict[str, Any]],
    runs: Sequence[Run],
    backends: Sequence[str],
    words: dict[str, str],
) -> list[str]:
    shown = [backend for backend in backends if backend in spec.backends]
    lines = [f"## {spec.number}. {spec.title}", "", spec.text, ""]
    failed = [run for run in runs if run["scenario"] == spec.key and not run["ok"]]
    for run in failed:
        error = (run["error"] or "").strip().splitlines()
        lines.append(
            f"> **Not measured** on {run['backend']}, repetition {run['rep']}: "
            f"{error[-1] if error else 'no output'}"
        )
    lines += [""] if failed else []
    rows = [row for row in summary if row["scenario"] == spec.key]
    if not rows:
        return [*lines, "No figures (the scenario did not run).", ""]
    contenders = list(dict.fromkeys(row["contender"] for row in rows))
    for metric in spec.metrics:
        by_cell = {(r["contender"], r["backend"]): r for r in rows if r["metric"] == metric.key}
        if not by_cell:
            continue
        baseline = spec.baseline_of(metric.key)
        better = {"lower": " (lower is better)", "higher": " (higher is better)", "none": ""}
        heading = f"**{metric.label.format_map(words)}**{better[metric.better]}"
        if baseline is not None:
            heading += f"; ratio = contender ÷ *{baseline}*"
        columns = [f" {b} |" + (" ratio |" if baseline else "") for b in shown]
        rule = "|---|" + ("---|---|" if baseline else "---|") * len(shown)
        lines += [heading, "", "| contender |" + "".join(columns), rule]
        for contender in contenders:
            if not any((contender, b) in by_cell for b in shown):
                continue
            cells = []
            for backend in shown:
                row = by_cell.get((contender, backend), {})
                value = None
                if "n" in row:
                    value = Spread(median=row["median"], min=row["min"], max=row["max"], n=row["n"])
                cells.append(_cell(value, metric.digits))
                if baseline is not None:
                    cells.append(_ratio_cell(row.get("ratio")))
            name = contender + (" *(baseline)*" if contender == baseline else "")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    notes: dict[str, set[str]] = defaultdict(set)
    for run in runs:
        if run["scenario"] == spec.key and run["ok"]:
            for key, note in run["notes"].items():
                per_backend = key in {"loop", "client"}
                notes[key].add(f"{run['backend']}: {note}" if per_backend else note)
    if notes:
        text = "; ".join(f"{key}: {', '.join(sorted(v))}" for key, v in sorted(notes.items()))
        lines += [f"Notes: {text}.", ""]
    return lines


def render_markdown(
    meta: dict[str, Any],
    runs: Sequence[Run],
    summary: Sequence[dict[str, Any]],
    targets: Sequence[dict[str, Any]],
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
    lines += [f"| {key} | {value} |" for key, value in meta["machine"].items()]
    lines += [
        "",
        "## Headline: the issue's targets",
        "",
        f"Ratios are contender ÷ baseline (median over repetitions, min{EN}max). "
        "A verdict is taken on the median. Rows without one are figures the issue asks "
        "to show, or diagnostics; '(aim …)' rows are the issue's stated aim beyond its "
        "target.",
        "",
        *_headline(targets, meta["backends"]),
        "",
    ]
    words = size_words(meta["sizes"])
    for spec in SPECS:
        if spec.key in meta["scenarios"]:
            lines += _scenario_section(spec, summary, runs, meta["backends"], words)
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
    styles = {sc.THROUGHPUT_POOL: ("-", "pool"), sc.THROUGHPUT_PER_REQUEST: ("--", "per request")}
    figure, axes = plt.subplots(figsize=(8, 5), dpi=120)
    for contender, (style, short) in styles.items():
        for backend in backends:
            points = sorted(
                (int(r["metric"].split("_")[1]), r["median"], r["min"], r["max"])
                for r in rows
                if r["contender"] == contender and r["backend"] == backend
            )
            if not points:
                continue
            xs, ys, lows, highs = zip(*points, strict=True)
            axes.errorbar(
                xs,
                ys,
                yerr=[
                    [y - low for y, low in zip(ys, lows, strict=True)],
                    [high - y for y, high in zip(ys, highs, strict=True)],
                ],
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


def write_results(out: Path, meta: dict[str, Any], runs: list[Run]) -> None:
    """Summarise ``runs`` and write results.json, RESULTS.md and throughput.png to ``out``."""
    summary = summarize(runs)
    targets = evaluate_targets(runs, meta["backends"], meta["sizes"])
    results = {"meta": meta, "runs": runs, "summary": summary, "targets": targets}
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    report = render_markdown(meta, runs, summary, targets) + "\n"
    history = Path(__file__).with_name("HISTORY.md")
    if history.exists():
        # The figures of earlier revisions, written by hand (before / after a change).
        report += "\n" + history.read_text()
    (out / "RESULTS.md").write_text(report)
    written = [out / "results.json", out / "RESULTS.md"]
    if plot_throughput(summary, meta["backends"], out / "throughput.png"):
        written.append(out / "throughput.png")
    print("wrote " + ", ".join(map(str, written)), file=sys.stderr)
