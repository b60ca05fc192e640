"""The paper's tables from the grid's files: mean and spread over seeds, Markdown and CSV, and plots.

Rows as in the paper's Table 1: `{}`, `a photo of a {}.`, and both things
"hand-engineered" can mean, each named for what it is (CoOp's single prompt per
dataset, CoOp's zero-shot baseline; the CLIP authors' ensemble), then the LLM
optimizer with positive-only and with positive+negative feedback (test accuracy
of the best template by few-shot train accuracy). Columns are
the datasets and their average. Spread is the sample standard deviation over
seeds; the reference rows are zero-shot and the same for every seed.
"""

from __future__ import annotations

import csv
import json
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optimizer_service.baselines import A_PHOTO_OF, CLIP_ENSEMBLE, COOP_PROMPT, PLAIN, reference_candidates
from reproduce.grid import Grid
from reproduce.runner import SEARCHED_FEEDBACK, SUCCEEDED, cell_dir, read_result, references_path, transfers_path

METHODS = {
    PLAIN: f"`{PLAIN}`",
    A_PHOTO_OF: f"`{A_PHOTO_OF}`",
    COOP_PROMPT: "CoOp's single prompt per dataset",
    CLIP_ENSEMBLE: "CLIP authors' ensemble",
    "positive_only": "LLM optimizer, positive only",
    "positive_negative": "LLM optimizer, positive + negative",
}


@dataclass(frozen=True)
class Cell:
    values: tuple[float, ...]  # one test accuracy per seed (or one, for a reference row)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def spread(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0

    def text(self) -> str:
        return f"{100 * self.mean:.1f} ± {100 * self.spread:.1f}" if len(self.values) > 1 else f"{100 * self.mean:.1f}"


def collect(grid: Grid) -> dict[str, dict[str, dict[str, Cell]]]:
    """backbone -> method -> dataset -> Cell, for what the grid's files hold."""
    table: dict[str, dict[str, dict[str, Cell]]] = {}
    for backbone in grid.backbones:
        rows: dict[str, dict[str, Cell]] = defaultdict(dict)
        for dataset in grid.datasets:
            path = references_path(grid, backbone.name, dataset)
            if path.is_file():
                for row, value in _json(path).items():
                    if value["test_accuracy"] is not None:
                        rows[row][dataset] = Cell((value["test_accuracy"],))
            for feedback in grid.feedbacks:
                values = []
                for seed in grid.seeds:
                    result = read_result(cell_dir(grid, backbone.name, dataset, seed, feedback))
                    if result and result["state"] == SUCCEEDED and "test_accuracy" in result["best"][0]:
                        values.append(result["best"][0]["test_accuracy"])
                if values:
                    rows[feedback][dataset] = Cell(tuple(values))
        table[backbone.name] = {m: rows[m] for m in METHODS if m in rows}
    return table


def collect_transfers(grid: Grid, own: dict[str, dict[str, dict[str, Cell]]]) -> dict[tuple[str, str], dict[str, Cell]]:
    """(source, target) -> dataset -> Cell over seeds.

    (b, b) is b's own P+N result (from `own`, collect's) for comparison."""
    table: dict[tuple[str, str], dict[str, Cell]] = defaultdict(dict)
    for target in grid.backbones:
        for dataset in grid.datasets:
            if dataset in own[target.name].get(SEARCHED_FEEDBACK, {}):
                table[target.name, target.name][dataset] = own[target.name][SEARCHED_FEEDBACK][dataset]
            path = transfers_path(grid, target.name, dataset)
            for source, by_seed in (_json(path) if path.is_file() else {}).items():
                values = tuple(v["test_accuracy"] for v in by_seed.values() if v["test_accuracy"] is not None)
                if values:
                    table[source, target.name][dataset] = Cell(values)
    return dict(sorted(table.items()))


def _json(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


def _average(cells: dict[str, Cell], datasets: tuple[str, ...]) -> str:
    present = [cells[d].mean for d in datasets if d in cells]
    if not present:
        return "n/a"
    note = "" if len(present) == len(datasets) else f" ({len(present)} of {len(datasets)})"
    return f"{100 * statistics.fmean(present):.1f}{note}"


def _markdown_table(first: str, rows: dict[str, dict[str, Cell]], datasets: tuple[str, ...]) -> list[str]:
    lines = [f"| {first} | " + " | ".join(datasets) + " | Avg |", "|---" * (len(datasets) + 2) + "|"]
    for label, cells in rows.items():
        values = [cells[d].text() if d in cells else "n/a" for d in datasets]
        lines.append(f"| {label} | " + " | ".join(values) + f" | {_average(cells, datasets)} |")
    return lines


def _baseline_notes(datasets: tuple[str, ...]) -> list[str]:
    """What the two hand-engineered rows score, per dataset."""
    rows = {d: reference_candidates(d) for d in datasets}
    prompts = ", ".join(f"{d} `{rows[d][COOP_PROMPT][0]}`" for d in datasets if COOP_PROMPT in rows[d])
    sizes = ", ".join(
        f"{d} {len(rows[d][CLIP_ENSEMBLE])}" if CLIP_ENSEMBLE in rows[d] else f"{d} none" for d in datasets
    )
    return [
        f"- {METHODS[COOP_PROMPT]}: CoOp's zero-shot CLIP prompt, one per dataset: {prompts}.",
        f"- {METHODS[CLIP_ENSEMBLE]}: the CLIP authors' templates for the dataset (from clip-benchmark), scored as "
        f"one prompt ensemble; templates per dataset: {sizes}.",
    ]


def write_tables(grid: Grid) -> list[Path]:
    """results.md, results.csv and transfer.csv under grid.out; returns their paths."""
    results = collect(grid)
    transfers = collect_transfers(grid, results)
    md = [
        f"# Reproduction: {grid.shots}-shot test accuracy (%), mean ± sample std over seeds {list(grid.seeds)}",
        "",
        "Optimizer rows: test accuracy of the best template by few-shot train accuracy. n/a: not available "
        "(not run yet, failed, or no CLIP authors' templates in clip-benchmark for the dataset).",
        "",
        *_baseline_notes(grid.datasets),
        "",
    ]
    for backbone in grid.backbones:
        md += [f"## {backbone.name} (`{backbone.model}`)", ""]
        md += [
            *_markdown_table(
                "method", {METHODS[m]: cells for m, cells in results[backbone.name].items()}, grid.datasets
            ),
            "",
        ]
    md += [
        "## Transfer: best positive + negative prompts found on A, scored on B",
        "",
        "A → A is the backbone's own result, for comparison.",
        "",
    ]
    md += [*_markdown_table("A → B", {f"{a} → {b}": cells for (a, b), cells in transfers.items()}, grid.datasets), ""]
    paths = [grid.out / "results.md", grid.out / "results.csv", grid.out / "transfer.csv"]
    paths[0].write_text("\n".join(md))
    with paths[1].open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["backbone", "method", "dataset", "mean", "std", "seeds"])
        for backbone_name, rows in results.items():
            for method, cells in rows.items():
                for dataset, cell in cells.items():
                    out.writerow(
                        [backbone_name, method, dataset, f"{cell.mean:.6f}", f"{cell.spread:.6f}", len(cell.values)]
                    )
    with paths[2].open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["source", "target", "dataset", "mean", "std", "seeds"])
        for (source, target), cells in transfers.items():
            for dataset, cell in cells.items():
                out.writerow([source, target, dataset, f"{cell.mean:.6f}", f"{cell.spread:.6f}", len(cell.values)])
    return paths


def write_plots(grid: Grid) -> list[Path]:
    """plots/<backbone>/<dataset>.png: best train accuracy by iteration, mean over seeds, per feedback variant."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    paths = []
    for backbone in grid.backbones:
        for dataset in grid.datasets:
            fig, ax = plt.subplots(figsize=(6, 4))
            for feedback in grid.feedbacks:
                by_step: dict[int, list[float]] = defaultdict(list)
                for seed in grid.seeds:
                    for point in (read_result(cell_dir(grid, backbone.name, dataset, seed, feedback)) or {}).get(
                        "curve", []
                    ):
                        by_step[point["step"]].append(point["best_train_accuracy"])
                steps = sorted(by_step)
                ax.plot(steps, [100 * statistics.fmean(by_step[s]) for s in steps], marker="o", label=METHODS[feedback])
            ax.set_xlabel("iteration (0: initial pool)")
            ax.set_ylabel(f"best train accuracy (%), mean of {len(grid.seeds)} seeds")
            ax.set_title(f"{dataset} on {backbone.name}")
            ax.grid(alpha=0.3)
            ax.legend()
            fig.tight_layout()
            path = grid.out / "plots" / backbone.name / f"{dataset}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(path, dpi=100)
            plt.close(fig)
            paths.append(path)
    return paths
