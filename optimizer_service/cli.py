"""`python -m optimizer_service serve|run`.

`run` optimizes once, in-process, through the same RunManager the service
uses (so it resumes too: rerun the same command after a crash). It shows a
progress bar and writes result.json and a plot of best and mean train accuracy
by iteration into --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import textwrap
from collections import defaultdict
from pathlib import Path

import structlog
from google.protobuf.duration_pb2 import Duration
from google.protobuf.json_format import MessageToDict
from tqdm import tqdm

from optimizer_service.choices import Conversation, Feedback, InitialPool, Preset, to_proto
from optimizer_service.config import (
    LlmSettings,
    ScorerSettings,
    add_connection_args,
    add_serve_args,
    connection_settings,
    serve_config,
)
from optimizer_service.llm import LlmClient
from optimizer_service.pool import Candidate, rank
from optimizer_service.runs import FAILED, LOCAL, PENDING, RUNNING, RunManager
from optimizer_service.scorer_client import ScorerClient, ScorerUnavailable
from optimizer_service.spec import KNOBS, PRESETS, RunSettings, SpecError
from optimizer_service.store import Store, StoreError
from optimizer_service.strategies import DEFAULT_STRATEGY, STRATEGIES
from promptclimb.optimizer.v1 import optimizer_pb2 as pb
from promptclimb_common.cli_help import ArgumentParser
from promptclimb_common.logging import configure_logging
from promptclimb_common.paths import UnwritablePathError, WritablePath, require_writable
from promptclimb_common.serving_args import EnvError, env_reader

log = structlog.get_logger(__name__)
_env = env_reader("OPTIMIZER")


def add_run_args(p: argparse.ArgumentParser) -> None:
    add_connection_args(p, state_dir_default=None)
    a = p.add_argument
    a("--task", default=_env("task", None), required=_env("task", None) is None, help="scorer task id to optimize for")
    a(
        "--out",
        type=Path,
        default=_env("out", None, Path),
        required=_env("out", None) is None,
        help="directory for result.json and accuracy.png (and the state, unless --state-dir)",
    )
    a(
        "--initial-pool",
        choices=[p.value for p in InitialPool],
        default=_env("initial_pool", InitialPool.BUILTIN, InitialPool),
    )
    a(
        "--initial-templates-file",
        type=Path,
        default=_env("initial_templates_file", None, Path),
        help="one template per line, for --initial-pool given",
    )
    a(
        "--hand-engineered-dataset",
        default=_env("hand_engineered_dataset", ""),
        help="CoOp dataset name whose CLIP-authors' templates seed --initial-pool hand_engineered (e.g. oxford_pets)",
    )
    # Unset knobs stay 0/None here, so the preset and the defaults of spec.py decide them (one place).
    authors = {**PRESETS[Preset.AUTHORS].fixed, **PRESETS[Preset.AUTHORS].defaults}
    a(
        "--preset",
        choices=[p.value for p in Preset],
        default=_env("preset", Preset.PROMPTCLIMB, Preset),
        help="authors: " + ", ".join(f"{k}={v}" for k, v in authors.items()),
    )
    for name, knob in KNOBS.items():
        a(
            f"--{name.replace('_', '-')}",
            type=int,
            default=_env(name, 0, int),
            help=f"{knob.low}..{knob.cap}, default {knob.default}",
        )
    a(
        "--feedback",
        choices=[f.value for f in Feedback],
        default=_env("feedback", None, Feedback),
        help="default positive_negative",
    )
    a(
        "--conversation",
        choices=[c.value for c in Conversation],
        default=_env("conversation", None, Conversation),
        help="default chat",
    )
    a(
        "--show-accuracies",
        action=argparse.BooleanOptionalAction,
        default=_env("show_accuracies", None, bool),
        help="show the LLM each template's accuracy (default: yes; preset authors: no)",
    )
    a("--temperature", type=float, default=_env("temperature", None, float), help="default 1.0")
    a(
        "--strategy",
        choices=sorted(STRATEGIES),
        default=_env("strategy", ""),
        help=f"search strategy (docs/strategies.md); default {DEFAULT_STRATEGY}",
    )
    a(
        "--task-description",
        default=_env("task_description", ""),
        help="what the task is, in your words; shown to the LLM in every ask beside the class names",
    )
    a(
        "--select-on-val",
        action=argparse.BooleanOptionalAction,
        default=_env("select_on_val", None, bool),
        help="select the answer on the scorer's val split (default: yes where the scorer offers one)",
    )
    a(
        "--replay-run",
        default=_env("replay_run", ""),
        help="answer identical LLM questions from this earlier run's stored replies",
    )
    for name in ("max_llm_calls", "max_llm_tokens", "max_scored_templates"):
        a(f"--{name.replace('_', '-')}", type=int, default=_env(name, 0, int), help="0: no limit")
    a(
        "--max-wall-seconds",
        type=float,
        default=_env("max_wall_seconds", 0.0, float),
        help="search time (the spec's max_wall_time) in seconds; 0: no limit",
    )
    a("--seed", type=int, default=_env("seed", 0, int))
    a("--label", default=_env("label", ""))


def run_spec(ns: argparse.Namespace) -> pb.RunSpec:
    templates = []
    if ns.initial_templates_file:
        templates = [line.strip() for line in ns.initial_templates_file.read_text().splitlines() if line.strip()]
    if not 0 <= ns.max_wall_seconds < math.inf:
        raise SpecError("--max-wall-seconds must be a finite number >= 0 (0 means no limit)")
    spec = pb.RunSpec(
        task_id=ns.task,
        llm_model=ns.llm_model,
        initial_pool=to_proto(InitialPool(ns.initial_pool)),
        initial_templates=templates,
        feedback=to_proto(Feedback(ns.feedback)) if ns.feedback else pb.FEEDBACK_UNSPECIFIED,
        conversation=to_proto(Conversation(ns.conversation)) if ns.conversation else pb.CONVERSATION_MODE_UNSPECIFIED,
        preset=to_proto(Preset(ns.preset)),
        replay_run_id=ns.replay_run,
        max_llm_calls=ns.max_llm_calls,
        max_llm_tokens=ns.max_llm_tokens,
        max_scored_templates=ns.max_scored_templates,
        seed=ns.seed,
        label=ns.label,
        hand_engineered_dataset=ns.hand_engineered_dataset,
        strategy=ns.strategy,
        task_description=ns.task_description,
        **{name: getattr(ns, name) for name in KNOBS},
    )
    spec.max_wall_time.FromNanoseconds(round(ns.max_wall_seconds * 1e9))
    if ns.temperature is not None:  # unset stays unset: the preset decides
        spec.temperature = ns.temperature
    if ns.show_accuracies is not None:
        spec.show_accuracies = ns.show_accuracies
    if ns.select_on_val is not None:
        spec.select_on_val = ns.select_on_val
    return spec


async def run_once(ns: argparse.Namespace, scorer_settings: ScorerSettings, llm_settings: LlmSettings) -> int:
    """Starts (or resumes, if --state-dir holds the same unfinished run) one run, follows it, writes the report."""
    out: Path = ns.out
    state = (
        WritablePath("--state-dir", "OPTIMIZER_STATE_DIR", ns.state_dir)
        if ns.state_dir
        else WritablePath("--out", "OPTIMIZER_OUT", out / "state")
    )
    require_writable([WritablePath("--out", "OPTIMIZER_OUT", out), state])
    store = Store.open(state.path)
    llm = LlmClient(llm_settings, store)
    scorer = ScorerClient(scorer_settings)
    manager = RunManager(store, llm, scorer, max_active_runs=1, default_model=llm_settings.model)
    try:
        spec = run_spec(ns)
        wanted = RunSettings.from_proto(spec, llm_settings.model).to_json()
        unfinished = [r for r in store.runs([PENDING, RUNNING, FAILED]) if r.settings == wanted]
        if unfinished:
            run_id = unfinished[-1].run_id
            await manager.resume(run_id, LOCAL)
            log.info("run_resumed", run_id=run_id)
        else:
            run_id = (await manager.start(spec, LOCAL)).run_id
        await follow(manager, run_id)
        run = manager.get(run_id, LOCAL)
        write_report(out, run, store.candidates(run_id))
    finally:
        await manager.shutdown()
        await llm.close()
        await scorer.close()
        store.close()
    log.info(
        "run_report_written",
        run_id=run_id,
        state=pb.RunState.Name(run.state),
        stop_reason=run.stop_reason,
        selected=run.selected.template if run.HasField("selected") else None,
        out=str(out),
    )
    return 0 if run.state == pb.RUN_STATE_SUCCEEDED else 1


async def follow(manager: RunManager, run_id: str) -> None:
    """A progress bar over the run's events: iterations, best accuracy, LLM calls and tokens."""
    run = manager.get(run_id, LOCAL)
    with tqdm(
        total=run.counters.iterations_total, initial=run.counters.iterations_done, unit="it", desc="climbing"
    ) as bar:
        async for event in manager.watch(run_id, LOCAL):
            if event.HasField("iteration_done"):
                done = event.iteration_done
                bar.n = done.counters.iterations_done
                bar.set_postfix(
                    best=f"{100 * done.best_train_accuracy:.1f}%",
                    llm_calls=done.counters.llm_calls,
                    tokens=done.counters.llm_prompt_tokens + done.counters.llm_completion_tokens,
                    refresh=True,
                )


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


def write_report(
    out: Path, run: pb.Run, candidates: list[Candidate], note: str = "", test_accuracy: dict[str, float] | None = None
) -> None:
    """result.json, accuracy.png and, for a per-class strategy, class_prompts.json; `note` (e.g. a warning about the
    model) goes under the plot's title.

    `test_accuracy` (template -> test accuracy, for callers allowed to see test) adds the test
    accuracy of the template train selection holds at each step, to the JSON and the plot.
    """
    iterations = run.spec.iterations
    curve = accuracy_curve(candidates, iterations)
    selected = [
        (step, c.template, c.accuracy, (test_accuracy or {}).get(c.template))
        for step, c in selected_by_step(candidates, iterations)
    ]
    result = {
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
        "counters": counter_values(run.counters),
        "spec": RunSettings.from_proto(run.spec, run.spec.llm_model).to_json(),
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
    }
    (out / "result.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    if run.HasField("class_prompts"):  # as CuPL-style users load them: class name -> its prompts
        cupl = {c.class_name: list(c.prompts) for c in run.class_prompts.classes}
        (out / "class_prompts.json").write_text(json.dumps(cupl, indent=2, ensure_ascii=False) + "\n")
    test_curve = [(s, x) for s, _, _, x in selected if x is not None]
    plot_curve(out / "accuracy.png", curve, run.spec.task_id, iterations, note, test_curve)


def counter_values(counters: pb.Counters) -> dict:
    """The counters as plain JSON numbers; a duration as seconds, under its name with `_seconds`."""
    values = {}
    for field in counters.DESCRIPTOR.fields:
        value = getattr(counters, field.name)
        if isinstance(value, Duration):
            values[f"{field.name}_seconds"] = value.ToNanoseconds() / 1e9
        else:
            values[field.name] = value
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


def main(argv: list[str] | None = None, prog: str = "python -m optimizer_service") -> int:
    """The optimizer's command line; `prog` is the name its help shows (promptclimb-optimizer when installed)."""
    parser = ArgumentParser(
        prog=prog, description="Hill-climb CLIP prompt templates with a chat LLM against a promptclimb scorer."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="run the Optimizer gRPC service")
    run_parser = commands.add_parser("run", help="optimize once in-process and write a report")
    try:
        add_serve_args(serve_parser)
        add_run_args(run_parser)
    except EnvError as err:
        parser.error(str(err))
    ns = parser.parse_args(argv)
    configure_logging(ns.log_level)
    try:
        if ns.command == "serve":
            from optimizer_service.server import serve

            asyncio.run(serve(serve_config(serve_parser, ns)))
            return 0
        scorer_settings, llm_settings = connection_settings(run_parser, ns)
        return asyncio.run(run_once(ns, scorer_settings, llm_settings))
    except (UnwritablePathError, StoreError, SpecError, ScorerUnavailable, OSError) as err:
        log.error("optimizer_cannot_start", error=str(err))
        return 2
