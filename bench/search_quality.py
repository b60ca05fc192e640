"""Search quality on the testbed: does the climb find better prompts, and does feedback help?

The yardstick of every change to the optimizer. Each method runs through the
optimizer's own `run` command against a real scorer that serves the testbed
CLIP (testbed/train.py: a small model trained on Fashion-MNIST on this machine,
not CLIP), for several few-shot seeds, at the same budget of LLM calls. The
template a run selects on train is then scored on the full test split (10,000
images). Every accuracy in the tables is a Score answer of that scorer.

    python -m bench.search_quality [--seeds 1 2 3] [--llm-calls 20] [--methods ...]
        [--llm-base-url URL --llm-model NAME [--llm-api-key-env VAR]] [--out bench/results/search_quality]

Without --llm-base-url it starts the embedded LLM (demo/embedded_llm.py). Rerun
to resume: finished cells are kept in `<out>/cells`, an interrupted run resumes
from its own state.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import structlog

from bench.report import write_table
from optimizer_service.baselines import hand_engineered
from optimizer_service.pool import Candidate, rank
from promptclimb.scorer.v1 import scorer_pb2 as sc_pb
from promptclimb.scorer.v1 import scorer_pb2_grpc as sc_grpc
from promptclimb_common.logging import configure_logging
from promptclimb_common.processes import start_module, start_service, stop_process
from testbed.fashion_mnist import prepare_testbed_task
from testbed.train import DEFAULT_RECIPE, RECIPES, ensure_model

log = structlog.get_logger("bench.search_quality")

TASK = "fmnist"
SHOTS = 16  # 160 train images: 1 shot would be 10, and accuracy steps of 10 points select on noise
BASELINES = {
    "`{}`": ["{}"],
    "`a photo of a {}.`": ["a photo of a {}."],
    "CLIP authors' ImageNet ensemble (80)": list(hand_engineered("imagenet")),
}


@dataclass(frozen=True)
class Method:
    name: str
    feedback: str
    conversation: str
    strategy: str = "hill_climb"


METHODS = {
    "random": Method("random search (no feedback)", "none", "stateless"),
    "p-chat": Method("positive only, chat", "positive_only", "chat"),
    "p-stateless": Method("positive only, stateless", "positive_only", "stateless"),
    "pn-chat": Method("positive + negative, chat", "positive_negative", "chat"),
    "pn-stateless": Method("positive + negative, stateless", "positive_negative", "stateless"),
    "opro": Method("OPRO: ascending trajectory, 4 samples per step", "positive_negative", "stateless", "opro"),
    "edit": Method("edit and crossover of good templates", "positive_negative", "stateless", "edit"),
}


@dataclass(frozen=True)
class Budget:
    llm_calls: int
    restarts: int = 2
    templates_per_call: int = 4
    initial_pool_size: int = 20

    @property
    def iterations(self) -> int:
        return max(1, self.llm_calls // self.restarts)


class Scorer(contextlib.AbstractContextManager):
    """A scorer process for one backbone and few-shot seed, on loopback; test split open (the benchmark grades)."""

    def __init__(self, model: Path, data: Path, seed: int, work: Path, val_shots: int = 0) -> None:
        work.mkdir(parents=True, exist_ok=True)
        service = start_service(
            [
                "scorer_service",
                "--model",
                str(model),
                "--task",
                f"{TASK}={data}",
                "--shots",
                str(SHOTS),
                "--seed",
                str(seed),
                "--val-shots",
                str(val_shots),
                "--anonymous-rights",
                "score,test",
                "--cache-dir",
                str(work / "scorer-cache"),
                "--state-dir",
                str(work / f"scorer-state-{model.name}-{seed}"),
            ],
            work / f"scorer-{model.name}-seed{seed}.log",
            timeout=600,
        )
        self.process, self.address = service.process, service.address
        self.channel = grpc.insecure_channel(self.address)
        self.stub = sc_grpc.ScorerStub(self.channel)

    def accuracies(self, ensembles: list[list[str]], split: str) -> list[float]:
        """Accuracy of each ensemble (a one-template ensemble is that template) on a split."""
        request = sc_pb.ScoreRequest(
            task_id=TASK,
            split=sc_pb.SPLIT_TEST if split == "test" else sc_pb.SPLIT_TRAIN,
            ensembles=[sc_pb.TemplateEnsemble(templates=e) for e in ensembles],
        )
        reply = self.stub.Score(request, timeout=600)
        for result in reply.ensemble_results:
            if result.error:
                raise RuntimeError(f"scorer refused {list(result.templates)}: {result.error}")
        return [r.accuracy for r in reply.ensemble_results]

    def __exit__(self, *exc: object) -> None:
        self.channel.close()
        stop_process(self.process, signal.SIGTERM, 60)


@contextlib.contextmanager
def llm_endpoint(args: argparse.Namespace, work: Path) -> Iterator[tuple[str, str, bool]]:
    """(base URL, model, grammar): the given endpoint, or the embedded llama-server."""
    if args.llm_base_url:
        yield args.llm_base_url, args.llm_model, args.llm_grammar
        return
    from demo.embedded_llm import DEFAULT_MODEL, LlamaServer

    with LlamaServer.for_model(DEFAULT_MODEL, parallel=2, log_path=work / "llama-server.log") as server:
        yield server.base_url, server.alias, True


def run_cell(
    cell: Path, method: Method, budget: Budget, seed: int, scorer: Scorer, llm: tuple[str, str, bool], api_key_env: str
) -> dict:
    """One optimizer run (resumed if its state holds it unfinished); returns its result.json plus wall time."""
    base_url, model, grammar = llm
    started = time.monotonic()
    command = [
        "optimizer_service",
        "run",
        "--scorer",
        scorer.address,
        "--task",
        TASK,
        "--out",
        str(cell),
        "--llm-base-url",
        base_url,
        "--llm-model",
        model,
        "--llm-grammar",
        str(grammar).lower(),
        "--feedback",
        method.feedback,
        "--conversation",
        method.conversation,
        "--strategy",
        method.strategy,
        "--seed",
        str(seed),
        "--restarts",
        str(budget.restarts),
        "--resets",
        "1",
        "--iterations",
        str(budget.iterations),
        "--templates-per-call",
        str(budget.templates_per_call),
        "--initial-pool-size",
        str(budget.initial_pool_size),
        "--max-llm-calls",
        str(budget.llm_calls),
        "--report-top",
        "5",
        "--label",
        f"bench {method.name} seed {seed}",
    ]
    env = {**os.environ, "OPENAI_API_KEY": os.environ.get(api_key_env, "not-needed"), "PYTHONUNBUFFERED": "1"}
    process = start_module(command, cell / "optimizer.log", env)
    code = process.wait()
    if code != 0:
        tail = "\n".join((cell / "optimizer.log").read_text(errors="replace").splitlines()[-10:])
        raise RuntimeError(f"optimizer run for {cell} exited with {code}:\n{tail}")
    result: dict[str, Any] = json.loads((cell / "result.json").read_text())
    result["wall_seconds"] = time.monotonic() - started
    return result


def held_by_llm_call(trajectory: list[dict]) -> list[tuple[int, str, float]]:
    """(LLM calls made, template train selection holds, its train accuracy), after the pool and after each call.

    Selection is the optimizer's own: the best train accuracy, ties broken by pool.rank."""
    calls: dict[str, list[Candidate]] = {}
    for row in sorted(trajectory, key=lambda r: r["sequence"]):
        calls.setdefault(row["llm_call"], []).append(
            Candidate(
                template=row["template"],
                accuracy=row["train_accuracy"],
                restart=row["restart"],
                reset=row["reset"],
                iteration=row["iteration"],
                sequence=row["sequence"],
                llm_call=row["llm_call"],
                position=row["position"],
            )
        )
    held: Candidate | None = None
    out = []
    for count, candidates in enumerate([calls.pop("", []), *calls.values()]):
        for candidate in candidates:
            if held is None or rank(candidate) < rank(held):
                held = candidate
        if held is not None:
            out.append((count, held.template, held.accuracy))
    return out


def grade(result: dict, scorer: Scorer) -> dict:
    """The cell's numbers: its selected template and found ensemble on train and test, its curve on test, its costs."""
    curve = held_by_llm_call(result["trajectory"])
    initial = held_by_llm_call([r for r in result["trajectory"] if not r["llm_call"]])
    selected, selected_train = result["answer"]["template"], result["answer"]["train_accuracy"]  # the run's own
    templates = list(dict.fromkeys([*(t for _, t, _ in curve), selected]))
    ensemble = result["ensemble"]["templates"]
    *single, ensemble_test = scorer.accuracies([[t] for t in templates] + [ensemble], "test")
    test = dict(zip(templates, single, strict=True))
    counters = result["counters"]
    _, pool_best, pool_train = initial[-1]
    return {
        "selected": selected,
        "train": selected_train,
        "test": test[selected],
        "pool_best": pool_best,
        "pool_train": pool_train,
        "pool_test": test[pool_best],
        "ensemble": ensemble,
        "ensemble_train": result["ensemble"]["train_accuracy"],
        "ensemble_test": ensemble_test,
        "curve": [(calls, test[t]) for calls, t, _ in curve],
        "llm_calls": counters["llm_calls"],
        "tokens": counters["llm_prompt_tokens"] + counters["llm_completion_tokens"],
        "templates_scored": counters["templates_scored"],
        "wall_seconds": result["wall_seconds"],
    }


def spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * mean:.1f} ± {100 * sd:.1f}"


def build_tables(
    graded: dict[str, dict[int, dict]],
    baselines: dict[str, dict[int, tuple[float, float]]],
    transfer: dict[str, dict[int, float]],
    args: argparse.Namespace,
    budget: Budget,
    target: str | None,
) -> list[str]:
    seeds = args.seeds
    lines = [
        f"Testbed: `{args.backbone}`, a small CLIP trained on Fashion-MNIST on this machine (testbed/train.py), "
        "**not CLIP**; its numbers say nothing about CLIP or the paper.",
        f"Task: {SHOTS}-shot train split (the search sees only this), test = the full Fashion-MNIST test split "
        f"(10,000 images). Few-shot seeds {', '.join(map(str, seeds))}; mean ± standard deviation over seeds.",
        f"Budget per run: {budget.llm_calls} LLM calls ({budget.restarts} restarts x {budget.iterations} iterations, "
        f"{budget.templates_per_call} templates asked per call), a {budget.initial_pool_size}-template built-in pool. "
        f"LLM: `{args.llm_label}`. Machine: {platform.machine()}, {os.cpu_count()} CPU cores.",
        "",
        "| method | test acc. of the train-selected template (%) | its train acc. (%) | LLM calls | tokens | "
        "templates scored | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, train_test in baselines.items():
        lines.append(
            f"| {name} | {spread([train_test[s][1] for s in seeds])} | {spread([train_test[s][0] for s in seeds])} "
            "| 0 | 0 | - | - |"
        )
    first = next(iter(graded.values()))
    lines.append(
        f"| best of the initial pool | {spread([first[s]['pool_test'] for s in seeds])} | "
        f"{spread([first[s]['pool_train'] for s in seeds])} | 0 | 0 | {budget.initial_pool_size} | - |"
    )
    for key, per_seed in graded.items():
        rows = [per_seed[s] for s in seeds]
        lines.append(
            f"| {METHODS[key].name} | {spread([r['test'] for r in rows])} | {spread([r['train'] for r in rows])} | "
            f"{statistics.fmean(r['llm_calls'] for r in rows):.0f} | "
            f"{statistics.fmean(r['tokens'] for r in rows):.0f} | "
            f"{statistics.fmean(r['templates_scored'] for r in rows):.0f} | "
            f"{statistics.fmean(r['wall_seconds'] for r in rows):.0f} |"
        )
    lines += [
        "",
        "The run's answer as an ensemble (greedy forward selection over the run's pool on train, "
        "scored as one prompt ensemble), beside its single best template, test accuracy (%):",
        "",
        "| method | single template | ensemble | ensemble's train acc. (%) | members (mean) |",
        "|---|---|---|---|---|",
    ]
    for key, per_seed in graded.items():
        rows = [per_seed[s] for s in seeds]
        lines.append(
            f"| {METHODS[key].name} | {spread([r['test'] for r in rows])} | "
            f"{spread([r['ensemble_test'] for r in rows])} | {spread([r['ensemble_train'] for r in rows])} | "
            f"{statistics.fmean(len(r['ensemble']) for r in rows):.1f} |"
        )
    lines += ["", "Templates selected (seed " + str(seeds[0]) + "):", ""]
    lines += [f"- {METHODS[key].name}: `{per_seed[seeds[0]]['selected']}`" for key, per_seed in graded.items()]
    if target:
        lines += [
            "",
            f"Transfer: the same selected templates scored on `{target}` (another testbed backbone, "
            "a different vision tower), test accuracy (%):",
            "",
            "| method | on the backbone searched | on the other |",
            "|---|---|---|",
        ]
        for key, per_seed in graded.items():
            lines.append(
                f"| {METHODS[key].name} | {spread([per_seed[s]['test'] for s in seeds])} | "
                f"{spread([transfer[key][s] for s in seeds])} |"
            )
        lines.append(f"| `a photo of a {{}}.` | | {spread([transfer['photo'][s] for s in seeds])} |")
    return lines


def plot(path: Path, graded: dict[str, dict[int, dict]], seeds: list[int], backbone: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, per_seed in graded.items():
        length = min(len(per_seed[s]["curve"]) for s in seeds)
        calls = [per_seed[seeds[0]]["curve"][i][0] for i in range(length)]
        mean = [100 * statistics.fmean(per_seed[s]["curve"][i][1] for s in seeds) for i in range(length)]
        ax.plot(calls, mean, marker=".", label=METHODS[key].name)
    ax.set_xlabel("LLM calls")
    ax.set_ylabel("test accuracy of the train-selected template (%)")
    ax.set_title(f"search quality on {backbone}\n(small CLIP trained here, not CLIP; mean over seeds)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.search_quality", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="few-shot seeds (one scorer each)")
    parser.add_argument("--llm-calls", type=int, default=20, help="LLM calls per run, every method alike")
    parser.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=list(METHODS))
    parser.add_argument("--backbone", choices=sorted(RECIPES), default=DEFAULT_RECIPE, help="testbed model searched on")
    parser.add_argument(
        "--transfer-to", default="fmnist-vit-p4", help="testbed model for the transfer table ('none': skip)"
    )
    parser.add_argument("--llm-base-url", help="an OpenAI-compatible endpoint (default: the embedded llama-server)")
    parser.add_argument("--llm-model", default="gpt-4o-mini", help="model name at --llm-base-url")
    parser.add_argument("--llm-api-key-env", default="OPENAI_API_KEY", help="variable holding the endpoint's key")
    parser.add_argument("--llm-grammar", action="store_true", help="send llama.cpp's GBNF grammar to --llm-base-url")
    parser.add_argument("--out", type=Path, default=Path("bench/results/search_quality"))
    parser.add_argument(
        "--val-shots",
        type=int,
        default=0,
        help="the scorer's val split (images per class); >0: every run selects its answer on val (0: on train)",
    )
    args = parser.parse_args(argv)
    configure_logging()
    budget = Budget(args.llm_calls)
    work = args.out / "work"
    data = prepare_testbed_task()
    model = ensure_model(args.backbone)
    target = None if args.transfer_to == "none" else args.transfer_to
    graded: dict[str, dict[int, dict]] = {key: {} for key in args.methods}
    baselines: dict[str, dict[int, tuple[float, float]]] = {name: {} for name in BASELINES}
    with llm_endpoint(args, work) as llm:
        args.llm_label = f"{llm[1]} at {llm[0]}" if args.llm_base_url else f"{llm[1]} (embedded llama-server)"
        for seed in args.seeds:
            with Scorer(model, data, seed, work, args.val_shots) as scorer:
                train = scorer.accuracies(list(BASELINES.values()), "train")
                test = scorer.accuracies(list(BASELINES.values()), "test")
                for name, a, b in zip(BASELINES, train, test, strict=True):
                    baselines[name][seed] = (a, b)
                for key in args.methods:
                    cell = args.out / "cells" / args.backbone / f"seed{seed}" / key
                    done = cell / "graded.json"
                    if not done.is_file():
                        log.info("search_quality_cell", method=key, seed=seed, backbone=args.backbone)
                        result = run_cell(cell, METHODS[key], budget, seed, scorer, llm, args.llm_api_key_env)
                        done.write_text(json.dumps(grade(result, scorer), indent=2) + "\n")
                    graded[key][seed] = json.loads(done.read_text())
    transfer: dict[str, dict[int, float]] = {key: {} for key in [*args.methods, "photo"]}
    if target:
        for seed in args.seeds:
            with Scorer(ensure_model(target), data, seed, work) as scorer:
                chosen = [[graded[key][seed]["selected"]] for key in args.methods] + [["a photo of a {}."]]
                for key, accuracy in zip([*args.methods, "photo"], scorer.accuracies(chosen, "test"), strict=True):
                    transfer[key][seed] = accuracy
    lines = build_tables(graded, baselines, transfer, args, budget, target)
    write_table(args.out / "search_quality.md", lines)
    plot(args.out / "search_quality.png", graded, args.seeds, args.backbone)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
