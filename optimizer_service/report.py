"""A run's report, in one place for every front end (`run`, `promptclimb optimize`, `make demo`).

- `RunProgress`: the progress bar over a run's events (iterations, best train accuracy, LLM calls, tokens, dollars).
- `write_report`: result.json, accuracy.png (best and mean train accuracy per step, and the test accuracy of the
  template train selection holds) and summary.md (the evaluation table and the cost), in one output directory.

Cost is `None` where the model has no price (prices.py): the report says "unknown", never $0.
"""

from __future__ import annotations

import json
import textwrap
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from google.protobuf.duration_pb2 import Duration
from google.protobuf.json_format import MessageToDict
from tqdm import tqdm

from optimizer_service.pool import Candidate, rank
from optimizer_service.prices import Price, format_usd
from optimizer_service.spec import RunSettings
from promptclimb.optimizer.v1 import optimizer_pb2 as pb

RESULT = "result.json"
CLASS_PROMPTS = "class_prompts.json"  # a per-class strategy's prompts, CuPL's format
PLOT = "accuracy.png"
SUMMARY = "summary.md"


def run_cost(counters: pb.Counters, price: Price | None) -> float | None:
    """The run's LLM cost in dollars; None (unknown) when its model has no price."""
    return counters.llm_cost_usd if price is not None else None


class RunProgress:
    """A tqdm bar fed one RunEvent at a time, by an async service call or a sync gRPC stream alike."""

    def __init__(self, run: pb.Run, price: Price | None, file: TextIO | None = None) -> None:
        self.price = price
        self.bar = tqdm(
            total=run.counters.iterations_total,
            initial=run.counters.iterations_done,
            unit="it",
            desc="climbing",
            file=file,
        )

    def __enter__(self) -> RunProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()

    def on_event(self, event: pb.RunEvent) -> None:
        kind = event.WhichOneof("event")
        if kind == "iteration_done":
            done = event.iteration_done
            self.bar.n = done.counters.iterations_done
            self.bar.set_postfix(
                best=f"{100 * done.best_train_accuracy:.1f}%",
                llm_calls=done.counters.llm_calls,
                tokens=done.counters.llm_prompt_tokens + done.counters.llm_completion_tokens,
                cost=format_usd(run_cost(done.counters, self.price)),
                refresh=True,
            )
        elif kind == "new_best":
            self.bar.write(f"  new best {100 * event.new_best.train_accuracy:5.1f}%  {event.new_best.template}")


def candidate_of(event: pb.CandidateScored) -> Candidate:
    """A CandidateScored event as the pool's Candidate (what the curve and the selection read)."""
    return Candidate(
        event.template,
        event.train_accuracy,
        event.restart,
        event.reset,
        event.iteration,
        event.candidate_sequence,
        event.llm_call,
        reused=event.reused,
        position=event.position,
    )


@dataclass(frozen=True)
class Evaluation:
    """One row of the report's table: a template (or an ensemble's members) and its accuracy per split."""

    label: str  # "baseline", "answer", "ensemble", "found"
    templates: tuple[str, ...]
    accuracy: dict[str, float] = field(default_factory=dict)  # split name ("train", "val", "test") -> accuracy

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "templates": list(self.templates), "accuracy": self.accuracy}


@dataclass(frozen=True)
class LlmUsed:
    """The LLM the run talked to, for the report: endpoint, model, where they came from, and its price."""

    base_url: str
    model: str
    source: str
    price: Price | None

    def to_json(self, counters: pb.Counters) -> dict[str, Any]:
        return {
            "base_url": self.base_url,
            "model": self.model,
            "source": self.source,
            "price_usd_per_mtok": None
            if self.price is None
            else {"prompt": self.price.prompt_per_mtok, "completion": self.price.completion_per_mtok},
            "cost_usd": run_cost(counters, self.price),
        }


def step_of(candidate: Candidate, iterations: int) -> int:
    """A candidate's place on the plot's x axis: 0 for the initial pool, else reset * T + iteration + 1."""
    return 0 if candidate.initial else candidate.reset * iterations + candidate.iteration + 1


def accuracy_curve(candidates: list[Candidate], iterations: int) -> list[tuple[int, float, float]]:
    """(step, best, mean) train accuracy of every candidate scored up to each step, over all restarts."""
    by_step: dict[int, list[float]] = defaultdict(list)
    for candidate in candidates:
        by_step[step_of(candidate, iterations)].append(candidate.accuracy)
    curve, best, total, count = [], 0.0, 0.0, 0
    for step in range(max(by_step, default=-1) + 1):
        scored = by_step.get(step, [])
        best, total, count = max([best, *scored]), total + sum(scored), count + len(scored)
        if count:
            curve.append((step, best, total / count))
    return curve


def selected_by_step(candidates: list[Candidate], iterations: int) -> list[tuple[int, Candidate]]:
    """(step, the candidate train selection holds after that step): the best train accuracy so far,
    ties broken as the pool's best() breaks them (pool.rank)."""
    held: Candidate | None = None
    out = []
    by_step: dict[int, list[Candidate]] = defaultdict(list)
    for candidate in candidates:
        by_step[step_of(candidate, iterations)].append(candidate)
    for step in range(max(by_step, default=-1) + 1):
        for candidate in by_step.get(step, []):
            if held is None or rank(candidate) < rank(held):
                held = candidate
        if held is not None:
            out.append((step, held))
    return out


def counter_values(counters: pb.Counters) -> dict:
    """The counters as plain JSON numbers; a duration as seconds, under its name with `_seconds`."""
    values = {}
    for field_ in counters.DESCRIPTOR.fields:
        value = getattr(counters, field_.name)
        if isinstance(value, Duration):
            values[f"{field_.name}_seconds"] = value.ToNanoseconds() / 1e9
        else:
            values[field_.name] = value
    return values


def write_report(
    out: Path,
    run: pb.Run,
    candidates: list[Candidate],
    *,
    llm: LlmUsed | None = None,
    evaluations: Sequence[Evaluation] = (),
    class_names: Sequence[str] = (),
    note: str = "",
    test_accuracy: dict[str, float] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Writes result.json, accuracy.png and summary.md into `out`; returns the result's JSON.

    `test_accuracy` (template -> test accuracy, for callers allowed to see test) adds the test accuracy of the
    template train selection holds at each step, to the JSON and the plot. `evaluations` is the table of the
    baselines and the answer on every split measured; `class_names` lets `promptclimb export` fill templates in;
    `note` (e.g. a warning about the model) goes under the plot's title and atop the summary.
    """
    iterations = run.spec.iterations
    curve = accuracy_curve(candidates, iterations)
    selected = [
        (step, c.template, c.accuracy, (test_accuracy or {}).get(c.template))
        for step, c in selected_by_step(candidates, iterations)
    ]
    result: dict[str, Any] = {
        "run_id": run.run_id,
        "state": pb.RunState.Name(run.state),
        "stop_reason": run.stop_reason,
        "answer": MessageToDict(run.selected, preserving_proto_field_name=True) if run.HasField("selected") else None,
        "best": [MessageToDict(b, preserving_proto_field_name=True) for b in run.best],
        "ensemble": MessageToDict(run.ensemble, preserving_proto_field_name=True) if run.HasField("ensemble") else None,
        "class_prompts": MessageToDict(run.class_prompts, preserving_proto_field_name=True)
        if run.HasField("class_prompts")
        else None,
        "model_digest": run.model_digest,
        "class_names": list(class_names),
        "note": note or None,
        "llm": llm.to_json(run.counters) if llm else None,
        "counters": counter_values(run.counters),
        "spec": RunSettings.from_proto(run.spec, run.spec.llm_model).to_json(),
        "evaluation": [e.to_json() for e in evaluations],
        "curve": [{"step": s, "best_train_accuracy": b, "mean_train_accuracy": m} for s, b, m in curve],
        "selected": [
            {"step": s, "template": t, "train_accuracy": a, **({"test_accuracy": x} if x is not None else {})}
            for s, t, a, x in selected
        ],
        "trajectory": [
            {
                "sequence": c.sequence,
                "template": c.template,
                "train_accuracy": c.accuracy,
                "restart": c.restart,
                "reset": c.reset,
                "iteration": c.iteration,
                "position": c.position,
                "llm_call": c.llm_call,
                "reused": c.reused,
            }
            for c in candidates
        ],
        **(extra or {}),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULT).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    if run.HasField("class_prompts"):  # as CuPL-style users load them: class name -> its prompts
        cupl = {c.class_name: list(c.prompts) for c in run.class_prompts.classes}
        (out / CLASS_PROMPTS).write_text(json.dumps(cupl, indent=2, ensure_ascii=False) + "\n")
    test_curve = [(s, x) for s, _, _, x in selected if x is not None]
    plot_curve(out / PLOT, curve, run.spec.task_id, iterations, note, test_curve)
    (out / SUMMARY).write_text(summary_markdown(result))
    return result


def answer_templates(result: dict[str, Any]) -> list[str]:
    """The run's answer as templates: the "answer" row of the evaluation, else the run's own selection (reports
    written before runs had one: the best template)."""
    for row in result.get("evaluation", []):
        if row["label"] == "answer":
            return list(row["templates"])
    if result.get("answer"):
        return [result["answer"]["template"]]
    return [result["best"][0]["template"]] if result.get("best") else []


def summary_markdown(result: dict[str, Any]) -> str:
    """A short summary for people: the table of baselines and answer per split, the cost, the run's end."""
    counters = result["counters"]
    lines = [f"# promptclimb run {result['run_id']}", ""]
    if result.get("note"):
        lines += [f"> **{result['note']}**", ""]
    model = f"`{result['model']}`, digest" if result.get("model") else "model digest"
    lines += [
        f"Task `{result['spec']['task_id']}`, {model} `{result['model_digest'][:12]}`; "
        f"{result['state'].removeprefix('RUN_STATE_').lower()} ({result['stop_reason']}).",
        "",
    ]
    answer = [result["answer"]] if result.get("answer") else result["best"][:1]
    rows = result.get("evaluation") or [
        {"label": "answer", "templates": [b["template"]], "accuracy": _best_accuracy(b)} for b in answer
    ]
    splits = [s for s in ("train", "val", "test") if any(s in r["accuracy"] for r in rows)]
    lines += ["| " + " | ".join(["row", *splits, "template"]) + " |", "|" + "---|" * (len(splits) + 2)]
    for row in rows:
        cells = [f"{100 * row['accuracy'][s]:.1f}%" if s in row["accuracy"] else "-" for s in splits]
        template = " + ".join(f"`{t}`" for t in row["templates"])
        lines.append("| " + " | ".join([row["label"], *cells, template]) + " |")
    if "test" not in splits:
        lines += ["", "No test accuracy: the scorer token has no `test` right."]
    llm = result.get("llm")
    tokens = counters["llm_prompt_tokens"] + counters["llm_completion_tokens"]
    cost = format_usd(llm["cost_usd"]) if llm else "unknown"
    if llm and llm["cost_usd"] is None:
        cost += f" (no price for {llm['model'] or 'the model'} at {llm['base_url']}; pass --llm-price)"
    lines += [
        "",
        f"LLM: {llm['model'] or '(server default)'} at {llm['base_url']} ({llm['source']})." if llm else "",
        f"{counters['llm_calls']} LLM calls, {tokens} tokens, cost {cost}; "
        f"{counters['templates_scored']} templates scored in {counters['active_time_seconds']:.0f} s.",
        "",
        f"Files: {RESULT}, {PLOT}.",
        "",
    ]
    return "\n".join(line for i, line in enumerate(lines) if line or (i and lines[i - 1])) + "\n"


def _best_accuracy(best: dict[str, Any]) -> dict[str, float]:
    values = {"train": best["train_accuracy"]}
    if "val_accuracy" in best:
        values["val"] = best["val_accuracy"]
    if "test_accuracy" in best:
        values["test"] = best["test_accuracy"]
    return values


def plot_curve(
    path: Path,
    curve: list[tuple[int, float, float]],
    task_id: str,
    iterations: int,
    note: str = "",
    test_curve: list[tuple[int, float]] | None = None,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4.5))
    steps = [s for s, _, _ in curve]
    ax.plot(steps, [100 * b for _, b, _ in curve], marker="o", label="train: best so far")
    ax.plot(steps, [100 * m for _, _, m in curve], marker=".", label="train: mean of scored")
    if test_curve:
        ax.plot(
            [s for s, _ in test_curve],
            [100 * x for _, x in test_curve],
            marker="s",
            label="test: template selected on train",
        )
    ax.set_xlabel(f"iteration (0: initial pool; resets continue at multiples of {iterations})")
    ax.set_ylabel("accuracy (%)")
    title = f"prompt search on {task_id}" + ("\n" + "\n".join(textwrap.wrap(note, 70)) if note else "")
    ax.set_title(title, color="darkred" if note else "black", fontsize=10)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
