"""The search benchmark's paired seeds pooled over several of its runs (worlds, backbones): the evidence the default
strategy is chosen on (optimizer_service/strategies/__init__.py, docs/strategies.md).

    python -m bench.search_pooled bench/results/search_quality/search_quality.json \\
        bench/results/search_quality_planted_v3/search_quality.json

For each method: its test accuracy minus random search's, per few-shot seed of each run (a pair never crosses
runs), averaged over all pairs with a 95% bootstrap CI over the pairs (bench/search_stats.py); beside it each run's
own paired difference. A method a run lacks is pooled over the runs that have it. The last lines name the largest
pooled difference, and the largest whose interval excludes 0 (none, where no method separates from random search).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.search_methods import CONTROL, METHODS
from bench.search_stats import Paired, paired_difference
from promptclimb_common.cli_help import ArgumentParser


def pairs(run: dict[str, Any], method: str) -> tuple[list[float], list[float]]:
    """(method's test accuracies, the control's) over the seeds the run graded both on."""
    graded = run["graded"]
    seeds = sorted(set(graded.get(method, {})) & set(graded[CONTROL]), key=int)
    return [graded[method][s]["test"] for s in seeds], [graded[CONTROL][s]["test"] for s in seeds]


def pooled(runs: list[dict[str, Any]], method: str) -> tuple[Paired, list[Paired | None], int]:
    """The pooled paired difference, each run's own (None where the run lacks the method), and the pair count."""
    ours: list[float] = []
    theirs: list[float] = []
    each: list[Paired | None] = []
    for run in runs:
        method_tests, control_tests = pairs(run, method)
        each.append(paired_difference(method_tests, control_tests) if method_tests else None)
        ours += method_tests
        theirs += control_tests
    return paired_difference(ours, theirs), each, len(ours)


def table(runs: list[dict[str, Any]], names: list[str]) -> str:
    methods = [m for m in METHODS if m != CONTROL and any(m in run["graded"] for run in runs)]
    rows = {m: pooled(runs, m) for m in methods}
    lines = [
        "Test accuracy minus random search's (points), paired by few-shot seed within each run; 95% bootstrap CI.",
        "",
        "| method | pairs | pooled Δ, 95% CI | " + " | ".join(f"Δ on {n}" for n in names) + " |",
        "|---|---|---|" + "---|" * len(names),
    ]
    for method in sorted(methods, key=lambda m: -rows[m][0].mean):
        total, each, count = rows[method]
        cells = " | ".join(str(p) if p else "-" for p in each)
        lines.append(f"| {METHODS[method].label} | {count} | {total} | {cells} |")
    winners = [m for m in methods if rows[m][0].low > 0]
    best = max(winners, key=lambda m: rows[m][0].mean, default=None)
    top = max(methods, key=lambda m: rows[m][0].mean)
    lines += [
        "",
        f"Largest pooled Δ: {METHODS[top].label}, {rows[top][0]}.",
        f"Largest pooled Δ with its interval above 0: {METHODS[best].label if best else 'none'}.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m bench.search_pooled", description=__doc__)
    parser.add_argument("results", type=Path, nargs="+", help="search_quality.json files of bench.search_quality")
    args = parser.parse_args(argv)
    runs = [json.loads(path.read_text()) for path in args.results]
    print(table(runs, [path.parent.name for path in args.results]))


if __name__ == "__main__":
    main()
