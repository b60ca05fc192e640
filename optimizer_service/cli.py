"""`python -m optimizer_service serve|run`.

`run` optimizes once, in-process, through the same RunManager the service
uses (so it resumes too: rerun the same command after a crash). It shows a
progress bar and writes the report (report.py: result.json, accuracy.png,
summary.md) into --out; `--dry-run` prints the expected spend instead.
"""

from __future__ import annotations

import argparse
import asyncio
import math
from pathlib import Path

import structlog

from optimizer_service.choices import Conversation, Feedback, InitialPool, Preset, to_proto
from optimizer_service.config import (
    LlmSettings,
    ScorerSettings,
    add_connection_args,
    add_serve_args,
    connection_settings,
    serve_config,
)
from optimizer_service.estimate import estimate_run
from optimizer_service.llm import LlmClient
from optimizer_service.prices import format_usd
from optimizer_service.report import LlmUsed, RunProgress, run_cost, write_report
from optimizer_service.runs import FAILED, LOCAL, PENDING, RUNNING, RunManager
from optimizer_service.scorer_client import ScorerClient, ScorerUnavailable
from optimizer_service.spec import KNOBS, PRESETS, RunLimits, RunSettings, SpecError
from optimizer_service.store import Store, StoreError
from optimizer_service.strategies import DEFAULT_STRATEGY, PAPER_STRATEGY, STRATEGIES
from optimizer_service.tracking import TrackingUnavailable, log_to_mlflow, require_mlflow
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
        help="directory for result.json, accuracy.png and summary.md (and the state, unless --state-dir)",
    )
    add_spec_args(p)
    add_report_args(p)


def add_report_args(p: argparse.ArgumentParser) -> None:
    """What `run` and `promptclimb optimize` share besides the spec: the dry run and MLflow tracking."""
    a = p.add_argument
    a(
        "--dry-run",
        action="store_true",
        help="print the run's expected LLM calls, tokens and dollars, and stop: nothing is scored, no LLM is asked",
    )
    a(
        "--mlflow",
        nargs="?",
        const="./mlruns",
        default=_env("mlflow", None),
        metavar="URI",
        help="log the run to MLflow (the `mlflow` extra): a tracking URI, or ./mlruns when given without one",
    )


def add_spec_args(p: argparse.ArgumentParser) -> None:
    """The run spec's flags (OPTIMIZER_<FLAG> in the environment sets a default); unset knobs take the preset's."""
    a = p.add_argument
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
        help="hill-climb strategies only; default positive_negative (none: random search, the control). "
        f"Without --strategy it selects {PAPER_STRATEGY}",
    )
    a(
        "--conversation",
        choices=[c.value for c in Conversation],
        default=_env("conversation", None, Conversation),
        help=f"hill-climb strategies only; default chat. Without --strategy it selects {PAPER_STRATEGY}",
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
        help=f"search strategy (docs/strategies.md); default {DEFAULT_STRATEGY} (it beat random search on the "
        f"search benchmark: docs/search-quality.md), but {PAPER_STRATEGY} with --preset authors, --feedback or "
        "--conversation",
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
        "--max-llm-cost-usd",
        type=float,
        default=_env("max_llm_cost_usd", 0.0, float),
        help="stop the run once its LLM cost reaches this many US dollars (needs a price: the model's in "
        "genai-prices, or --llm-price); 0: no limit",
    )
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
        max_llm_cost_usd=ns.max_llm_cost_usd,
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


def dry_run(ns: argparse.Namespace, llm_settings: LlmSettings) -> int:
    """Prints what the run would spend, from its spec alone (estimate.py)."""
    settings = RunSettings.from_proto(run_spec(ns), llm_settings.model)
    estimate = estimate_run(
        settings,
        llm_settings.price_of(settings.llm_model),
        prompt_budget_tokens=llm_settings.prompt_budget_tokens,
        max_completion_tokens=llm_settings.max_completion_tokens,
    )
    print(f"dry run: {settings.iterations_total} iterations with {settings.llm_model or 'the server default model'}")
    print("\n".join(estimate.lines()))
    return 0


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
    price = llm_settings.price_of(llm_settings.model)
    limits = RunLimits(priced=price is not None)
    manager = RunManager(store, llm, scorer, max_active_runs=1, default_model=llm_settings.model, limits=limits)
    try:
        spec = run_spec(ns)
        wanted = RunSettings.from_proto(spec, llm_settings.model, limits).to_json()
        unfinished = [r for r in store.runs([PENDING, RUNNING, FAILED]) if r.settings == wanted]
        if unfinished:
            run_id = unfinished[-1].run_id
            await manager.resume(run_id, LOCAL)
            log.info("run_resumed", run_id=run_id)
        else:
            run_id = (await manager.start(spec, LOCAL)).run_id
        with RunProgress(manager.get(run_id, LOCAL), price) as progress:
            async for event in manager.watch(run_id, LOCAL):
                progress.on_event(event)
        run = manager.get(run_id, LOCAL)
        llm_used = LlmUsed(llm_settings.base_url, run.spec.llm_model, llm_settings.source, price)
        if run.best and not run.best[0].HasField("test_accuracy"):
            log.warning(
                "report_without_test_accuracy",
                reason="the scorer token (--scorer-token-env) lacks the scorer's `test` right",
            )
        task = await scorer.task(run.spec.task_id)
        write_report(out, run, store.candidates(run_id), llm=llm_used, class_names=list(task.class_names))
        if ns.mlflow:
            log_to_mlflow(ns.mlflow, out)
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
        cost=format_usd(run_cost(run.counters, price)),
        out=str(out),
    )
    return 0 if run.state == pb.RUN_STATE_SUCCEEDED else 1


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
        if ns.dry_run:
            return dry_run(ns, llm_settings)
        if ns.mlflow:
            require_mlflow()
        return asyncio.run(run_once(ns, scorer_settings, llm_settings))
    except (UnwritablePathError, StoreError, SpecError, ScorerUnavailable, TrackingUnavailable, OSError) as err:
        log.error("optimizer_cannot_start", error=str(err))
        return 2
