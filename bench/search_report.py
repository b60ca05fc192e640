"""The search benchmark's tables and plot, from its graded cells (bench/search_quality.py) and the world card.

Every table says what the model is (a small CLIP trained here, not CLIP) and prints the ceilings beside it.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import numpy as np

from bench.search_methods import CONTROL, METHODS
from bench.search_stats import gap_closed, paired_difference, regret, spread

PLANTED_PREFIX = "planted optimum"
MAIN_HEADER = (
    "| method | test acc. of the run's answer (%) | oracle-selected (%) | its train acc. (%) | "
    "Δ vs random search, 95% CI (pts) | regret to the planted optimum (pts) | gap closed | "
    "LLM calls | templates scored | wall s |"
)


def _planted_row(fixed: dict[str, dict[int, dict[str, float]]]) -> str:
    return next(name for name in fixed if name.startswith(PLANTED_PREFIX))


def _load() -> str:
    try:
        return "load average " + ", ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "load unknown"


def _fraction(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def build_tables(
    *,
    seeds: list[int],
    methods: list[str],
    graded: dict[str, dict[int, dict]],
    fixed: dict[str, dict[int, dict[str, float]]],
    white: dict[str, dict[int, float]],
    card: dict[str, Any],
    transfer: dict[str, dict[int, float]],
    target_card: dict[str, Any] | None,
    context: dict[str, Any],
) -> list[str]:
    budget = context["budget"]
    planted = _planted_row(fixed)
    optimum = float(np.mean([fixed[planted][s]["test"] for s in seeds]))
    control = [graded[CONTROL][s]["test"] for s in seeds]
    starts = [graded[CONTROL][s]["pool_test"] for s in seeds]

    def judged(tests: list[float]) -> str:
        closed = _fraction(gap_closed(tests, starts, optimum))
        return f"{paired_difference(tests, control)} | {regret(tests, optimum):.1f} | {closed}"

    lines = [
        f"Testbed: `{context['model']}` ({card['world']} world, model {card['model_digest']}), a small CLIP trained "
        "on Fashion-MNIST on this machine (testbed/train.py), **not CLIP**; its numbers say nothing about CLIP "
        "or the paper.",
        f"Task: {context['shots']}-shot train split (the search sees only this); test = the scorer's test split. "
        f"Few-shot seeds {', '.join(map(str, seeds))}, the same for every method; mean ± sd over seeds.",
        f"Budget per run: at most {budget.llm_calls} LLM calls; shared shape {budget.restarts} restarts, "
        f"{budget.templates_per_call} templates per call, a {budget.initial_pool_size}-template built-in pool "
        "(the authors' preset keeps its own shape). "
        f"LLM: `{context['llm']}`. Machine: {platform.machine()}, {os.cpu_count()} CPU cores, {_load()} at the end.",
        "Δ: paired difference to random search over seeds, 95% bootstrap CI (10,000 resamples, seed 0). "
        f"Regret: points below the planted optimum (`{card['planted_optimum']}`, {100 * optimum:.1f}% on test). "
        "Gap closed: (method - best of the initial pool) / (planted optimum - best of the initial pool), per seed.",
        "",
        MAIN_HEADER,
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, per_seed in fixed.items():
        if name == planted:
            continue
        tests = [per_seed[s]["test"] for s in seeds]
        train = [per_seed[s]["train"] for s in seeds]
        lines.append(f"| {name} | {spread(tests)} | - | {spread(train)} | {judged(tests)} | 0 | 1 | - |")
    pool = [graded[CONTROL][s] for s in seeds]
    lines.append(
        f"| best of the initial pool (train-selected) | {spread(starts)} | - | "
        f"{spread([r['pool_train'] for r in pool])} | {judged(starts)} | 0 | "
        f"{budget.initial_pool_size} | - |"
    )
    for method in methods:
        rows = [graded[method][s] for s in seeds]
        tests = [r["test"] for r in rows]
        lines.append(
            f"| {METHODS[method].label} | {spread(tests)} | {spread([r['oracle_test'] for r in rows])} | "
            f"{spread([r['train'] for r in rows])} | {judged(tests)} | "
            f"{np.mean([r['llm_calls'] for r in rows]):.0f} | {np.mean([r['templates_scored'] for r in rows]):.0f} | "
            f"{np.mean([r['wall_seconds'] for r in rows]):.0f} |"
        )
    for name, box in white.items():
        tests = [box[s] for s in seeds]
        lines.append(f"| {name} | {spread(tests)} | - | - | {judged(tests)} | 0 | - | - |")
    lines.append(
        f"| {planted} (scored here) | {spread([fixed[planted][s]['test'] for s in seeds])} | - | "
        f"{spread([fixed[planted][s]['train'] for s in seeds])} | "
        f"{judged([fixed[planted][s]['test'] for s in seeds])} | 0 | 1 | - |"
    )
    lines += ["", *ceiling_table(card)]
    lines += _val_table(seeds, methods, graded)
    lines += _per_class_table(seeds, methods, graded)
    lines += [
        "",
        "The run's found ensemble (greedy forward selection over its pool on train, one prompt ensemble) beside its "
        "single answer, test accuracy (%):",
        "",
        "| method | single template | ensemble | ensemble's train acc. (%) | members (mean) |",
        "|---|---|---|---|---|",
    ]
    for method in methods:
        rows = [graded[method][s] for s in seeds]
        lines.append(
            f"| {METHODS[method].label} | {spread([r['test'] for r in rows])} | "
            f"{spread([r['ensemble_test'] for r in rows])} | {spread([r['ensemble_train'] for r in rows])} | "
            f"{np.mean([len(r['ensemble']) for r in rows]):.1f} |"
        )
    lines += ["", f"The runs' answers and the best they scored on test (seed {seeds[0]}):", ""]
    lines += [
        f"- {METHODS[m].label}: `{graded[m][seeds[0]]['answer']}` (oracle: `{graded[m][seeds[0]]['oracle']}`)"
        for m in methods
    ]
    if target_card is not None:
        lines += _transfer_table(seeds, methods, graded, fixed, transfer, target_card)
    else:
        lines += ["", "Transfer: not measured (no second backbone of this world; see --transfer-to)."]
    return lines


def ceiling_table(card: dict[str, Any]) -> list[str]:
    """The world card's ceilings (testbed.train measured them on the full test split), in points."""
    ceilings = card["ceilings"]
    best = ceilings["generic_best"]
    return [
        f"Ceilings of this world (world_card.json, {card['world']} world, test split, %):",
        "",
        "| ceiling | test acc. (%) |",
        "|---|---|",
        *(f"| generic `{name.strip('`')}` | {value:.1f} |" for name, value in ceilings["generic"].items()),
        f"| best of {best['list_size']} generic templates (`{best['template']}`) | {best['accuracy']:.1f} |",
        *(
            f"| {len(step['cues'])} cue(s) {', '.join(step['cues']) or '-'}: `{step['template']}` | "
            f"{step['accuracy']:.1f} |"
            for step in ceilings["cue_ladder"]
        ),
        f"| planted optimum `{card['planted_optimum']}` | {ceilings['planted_optimum']:.1f} |",
        f"| per-class oracle | {ceilings['per_class_oracle']:.1f} |",
        f"| linear probe on the held-out train images (white box) | {ceilings['linear_probe_heldout']:.1f} |",
    ]


def _per_class_table(seeds: list[int], methods: list[str], graded: dict[str, dict[int, dict]]) -> list[str]:
    """Stage 2's per-class prompts beside the template they start from, for the methods that wrote some."""
    staged = [m for m in methods if all(graded[m][s].get("per_class") for s in seeds)]
    if not staged:
        return []
    lines = [
        "",
        "Per-class prompts (stage 2) beside the run's selected template, test accuracy (%); the answer is the "
        "per-class prompts only where they beat the template on val:",
        "",
        "| method | selected template | per-class prompts | Δ, 95% CI (pts) | chosen as the answer |",
        "|---|---|---|---|---|",
    ]
    for m in staged:
        template = [graded[m][s]["template_test"] for s in seeds]
        per_class = [graded[m][s]["per_class"]["test"] for s in seeds]
        chosen = sum(graded[m][s]["per_class"]["chosen"] for s in seeds)
        lines.append(
            f"| {METHODS[m].label} | {spread(template)} | {spread(per_class)} | "
            f"{paired_difference(per_class, template)} | {chosen} of {len(seeds)} seeds |"
        )
    return lines


def _val_table(seeds: list[int], methods: list[str], graded: dict[str, dict[int, dict]]) -> list[str]:
    """Val-selected beside train-selected, for the methods whose runs selected on val."""
    with_val = [m for m in methods if all("val" in graded[m][s]["selections"] for s in seeds)]
    if not with_val:
        return []
    lines = [
        "",
        "Selection on val (a split the climb did not see) beside selection on train, test accuracy (%):",
        "",
        "| method | val-selected | train-selected | oracle-selected | Δ val - train, 95% CI (pts) |",
        "|---|---|---|---|---|",
    ]
    for m in with_val:
        val = [graded[m][s]["selections"]["val"]["test"] for s in seeds]
        train = [graded[m][s]["selections"]["train"]["test"] for s in seeds]
        lines.append(
            f"| {METHODS[m].label} | {spread(val)} | {spread(train)} | "
            f"{spread([graded[m][s]['oracle_test'] for s in seeds])} | {paired_difference(val, train)} |"
        )
    return lines


def _transfer_table(
    seeds: list[int],
    methods: list[str],
    graded: dict[str, dict[int, dict]],
    fixed: dict[str, dict[int, dict[str, float]]],
    transfer: dict[str, dict[int, float]],
    target_card: dict[str, Any],
) -> list[str]:
    planted = _planted_row(fixed)
    lines = [
        "",
        f"Transfer: each run's answer scored on a second backbone of the same world (model "
        f"{target_card['model_digest']}, a different vision tower), test accuracy (%):",
        "",
        "| method | on the backbone searched | on the second backbone | Δ vs random search there, 95% CI (pts) |",
        "|---|---|---|---|",
    ]
    for m in methods:
        lines.append(
            f"| {METHODS[m].label} | {spread([graded[m][s]['test'] for s in seeds])} | "
            f"{spread([transfer[m][s] for s in seeds])} | "
            f"{paired_difference([transfer[m][s] for s in seeds], [transfer[CONTROL][s] for s in seeds])} |"
        )
    lines += [
        f"| {planted} | {spread([fixed[planted][s]['test'] for s in seeds])} | "
        f"{spread([transfer['planted'][s] for s in seeds])} | - |",
        f"| `a photo of a {{}}.` | {spread([fixed['`a photo of a {}.`'][s]['test'] for s in seeds])} | "
        f"{spread([transfer['photo'][s] for s in seeds])} | - |",
    ]
    return lines


def plot(
    path: Path,
    seeds: list[int],
    methods: list[str],
    graded: dict[str, dict[int, dict]],
    fixed: dict[str, dict[int, dict[str, float]]],
    card: dict[str, Any],
) -> None:
    """Test accuracy of the template each run holds against its LLM calls; random search's band; the ceilings."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for method in methods:
        length = min(len(graded[method][s]["curve"]) for s in seeds)
        calls = [graded[method][seeds[0]]["curve"][i][0] for i in range(length)]
        values = 100 * np.array([[graded[method][s]["curve"][i][1] for i in range(length)] for s in seeds])
        (line,) = ax.plot(calls, values.mean(axis=0), marker=".", label=METHODS[method].label)
        if method == CONTROL:
            sd = values.std(axis=0, ddof=1) if len(seeds) > 1 else np.zeros(length)
            mean = values.mean(axis=0)
            ax.fill_between(calls, mean - sd, mean + sd, color=line.get_color(), alpha=0.2, label="random search ± sd")
    planted = _planted_row(fixed)
    ceilings = card["ceilings"]
    for label, value, style in [
        ("planted optimum", 100 * float(np.mean([fixed[planted][s]["test"] for s in seeds])), "-"),
        ("per-class oracle", ceilings["per_class_oracle"], "--"),
        ("linear probe, held-out train", ceilings["linear_probe_heldout"], ":"),
        (f"best of {ceilings['generic_best']['list_size']} generic", ceilings["generic_best"]["accuracy"], "-."),
    ]:
        ax.axhline(value, color="grey", linestyle=style, linewidth=1)
        ax.annotate(f"{label} {value:.1f}", (0, value), fontsize=7, color="dimgrey", va="bottom")
    ax.set_xlabel("LLM calls")
    ax.set_ylabel("test accuracy of the run's held template (%)")
    ax.set_title(
        f"search quality, {card['world']} world (small CLIP trained here, not CLIP; mean over {len(seeds)} seeds)",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
