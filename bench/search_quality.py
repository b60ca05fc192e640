"""Search quality on the testbed: does a search find better prompts than random search, and how close to the ceilings?

The yardstick of every change to the optimizer (docs/search-quality.md). Each method of
bench/search_methods.py runs through the optimizer's own `run` command against a real scorer that
serves a testbed CLIP (testbed/train.py: a small model trained on Fashion-MNIST on this machine,
not CLIP), for the same few-shot seeds, at the same cap of LLM calls. The run's own answer, and
every template it scored, are then scored on the test split. Every accuracy in the tables is a
Score answer of that scorer, except the white-box rows (testbed/whitebox.py, on the same shots)
and the ceilings, which come from the model's world_card.json.

    python -m bench.search_quality [--recipe NAME | --model-dir DIR] [--seeds 1 2 3 4 5] [--llm-calls 10]
        [--methods ...] [--transfer-to RECIPE|auto|none] [--llm-base-url URL --llm-model NAME] [--out DIR]

Rerun to resume: each (method, seed) cell is kept under a key of the model, the code, the budget and
the method's run fields, so a changed one starts fresh cells instead of mixing with old ones, and an
interrupted optimizer run resumes from its own state.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import structlog

from bench.report import write_table
from bench.search_methods import CONTROL, METHODS, Budget, run_fields, run_flags
from optimizer_service.baselines import hand_engineered
from optimizer_service.pool import Candidate, rank
from promptclimb.scorer.v1 import scorer_pb2 as sc_pb
from promptclimb.scorer.v1 import scorer_pb2_grpc as sc_grpc
from promptclimb_common.cli_help import ArgumentParser
from promptclimb_common.logging import configure_logging
from promptclimb_common.processes import start_module, start_service, stop_process
from testbed.fashion_mnist import prepare_testbed_task

log = structlog.get_logger("bench.search_quality")

TASK = "fmnist"
DEFAULT_SEEDS = [1, 2, 3, 4, 5]
DEFAULT_LLM_CALLS = 10  # the authors' preset asks 10 times; see docs/search-quality.md for the time this buys
SHOTS = 16  # 160 train images: 1 shot would be 10, and accuracy steps of 10 points select on noise
WORLD_CARD = "world_card.json"
BASELINES = {
    "`{}`": ["{}"],
    "`a photo of a {}.`": ["a photo of a {}."],
    "CLIP authors' ImageNet ensemble (80)": list(hand_engineered("imagenet")),
}
SCORE_CHUNK = 128  # templates per Score call, under the scorer's max_templates_per_request
# What a cell's numbers depend on besides the model, budget and method: the optimizer and the grading code.
CODE = [Path("optimizer_service"), Path("bench/search_quality.py"), Path("bench/search_methods.py")]
WHITE_BOX_CODE = [Path("testbed/whitebox.py"), Path("scorer_service/datasets.py")]  # what the white-box rows run


ROOT = Path(__file__).resolve().parent.parent


def code_digest(entries: list[Path] = CODE, root: Path = ROOT) -> str:
    """A hash of the sources some numbers depend on (a missing one hashes as its name)."""
    h = hashlib.sha256()
    for entry in entries:
        for path in sorted((root / entry).rglob("*.py")) if (root / entry).is_dir() else [root / entry]:
            h.update(str(path.relative_to(root)).encode() + b"\0" + (path.read_bytes() if path.is_file() else b""))
    return h.hexdigest()[:12]


def load_world_card(model_dir: Path) -> dict[str, Any]:
    """The model's world card (written by testbed.train beside the weights): cues, planted optimum, ceilings."""
    path = model_dir / WORLD_CARD
    if not path.is_file():
        raise SystemExit(f"{path} is missing: the benchmark needs a testbed model trained with its world card")
    card: dict[str, Any] = json.loads(path.read_text())
    missing = {"world", "model_digest", "class_names", "planted_optimum", "ceilings"} - set(card)
    if missing:
        raise SystemExit(f"{path} lacks {sorted(missing)}")
    return card


def model_path(recipe: str) -> Path:
    """The recipe's model directory, trained first if needed (testbed.train's own command)."""
    command = [sys.executable, "-m", "testbed.train", "--recipe", recipe, "--print-path"]
    printed = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return Path(printed.strip().splitlines()[-1])


class Scorer(contextlib.AbstractContextManager):
    """A scorer process for one model and few-shot seed, on loopback; test split open (the benchmark grades)."""

    def __init__(self, model: Path, data: Path, seed: int, shots: int, work: Path, val_shots: int = 0) -> None:
        work.mkdir(parents=True, exist_ok=True)
        service = start_service(
            [
                "scorer_service",
                "--model",
                str(model),
                "--task",
                f"{TASK}={data}",
                "--shots",
                str(shots),
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
        out: list[float] = []
        for start in range(0, len(ensembles), SCORE_CHUNK):
            request = sc_pb.ScoreRequest(
                task_id=TASK,
                split=sc_pb.SPLIT_TEST if split == "test" else sc_pb.SPLIT_TRAIN,
                ensembles=[sc_pb.TemplateEnsemble(templates=e) for e in ensembles[start : start + SCORE_CHUNK]],
            )
            reply = self.stub.Score(request, timeout=600)
            for result in reply.ensemble_results:
                if result.error:
                    raise RuntimeError(f"scorer refused {list(result.templates)}: {result.error}")
            out += [r.accuracy for r in reply.ensemble_results]
        return out

    def templates(self, templates: list[str], split: str) -> dict[str, float]:
        return dict(zip(templates, self.accuracies([[t] for t in templates], split), strict=True))

    def class_prompts(self, prompts: list[list[str]], split: str) -> float:
        """Accuracy of one set of per-class prompts (one list per class, label order) on a split."""
        request = sc_pb.ScoreRequest(
            task_id=TASK,
            split=sc_pb.SPLIT_TEST if split == "test" else sc_pb.SPLIT_TRAIN,
            class_prompt_sets=[sc_pb.ClassPromptSet(classes=[sc_pb.ClassPrompts(prompts=p) for p in prompts])],
        )
        (result,) = self.stub.Score(request, timeout=600).class_prompt_set_results
        if result.error:
            raise RuntimeError(f"scorer refused the per-class prompts: {result.error}")
        return result.accuracy

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


@dataclass(frozen=True)
class Cell:
    """One (method, seed) run: where it lives, and the key its numbers depend on."""

    method: str
    seed: int
    path: Path
    key: dict[str, Any]


def cell_for(out: Path, method: str, seed: int, common: dict[str, Any], budget: Budget) -> Cell:
    """The cell's directory is named by its key, so a changed model, code, budget or method never reuses it."""
    fields = run_fields(METHODS[method], budget)
    key = {**common, "method": method, "seed": seed, "run_fields": fields}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    path = out / "cells" / f"{common['world']}-{common['model_digest']}" / f"seed{seed}" / f"{method}-{digest}"
    return Cell(method, seed, path, key)


def run_cell(cell: Cell, scorer: Scorer, llm: tuple[str, str, bool], api_key_env: str, budget: Budget) -> dict:
    """One optimizer run (resumed if its state holds it unfinished); returns its result.json plus wall time."""
    base_url, model, grammar = llm
    cell.path.mkdir(parents=True, exist_ok=True)
    (cell.path / "key.json").write_text(json.dumps(cell.key, indent=2) + "\n")
    started = time.monotonic()
    command = [
        "optimizer_service",
        "run",
        "--scorer",
        scorer.address,
        "--task",
        TASK,
        "--out",
        str(cell.path),
        "--llm-base-url",
        base_url,
        "--llm-model",
        model,
        "--llm-grammar",
        str(grammar).lower(),
        "--seed",
        str(cell.seed),
        "--report-top",
        "5",
        "--label",
        f"bench {cell.method} seed {cell.seed}",
        *run_flags(run_fields(METHODS[cell.method], budget)),
    ]
    env = {**os.environ, "OPENAI_API_KEY": os.environ.get(api_key_env, "not-needed"), "PYTHONUNBUFFERED": "1"}
    process = start_module(command, cell.path / "optimizer.log", env)
    code = process.wait()
    if code != 0:
        tail = "\n".join((cell.path / "optimizer.log").read_text(errors="replace").splitlines()[-10:])
        raise RuntimeError(f"optimizer run for {cell.path} exited with {code}:\n{tail}")
    result: dict[str, Any] = json.loads((cell.path / "result.json").read_text())
    result["wall_seconds"] = time.monotonic() - started
    return result


def held_by_llm_call(trajectory: list[dict]) -> list[tuple[int, str, float]]:
    """(LLM calls made, template train selection holds, its train accuracy), after the pool and after each call.

    Selection is the optimizer's own rule (pool.rank), replayed call by call for the plot; the final one is
    checked against the run's answer."""
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


def run_answers(result: dict, train_ranked_first: str) -> dict[str, str]:
    """The run's selections by the split they were made on, read from its result, never re-chosen here.

    The run's answer is `result["answer"]` (the Run's `selected`, where result.json reports it) else `best[0]`.
    An answer carrying a `val_accuracy` was selected on val; the train selection beside it is then the pool's
    first by train rank (`train_ranked_first`, the optimizer's own rule replayed). Without val the two must agree.
    """
    answer = result.get("answer") or result["best"][0]
    if "val_accuracy" in answer:
        return {"val": answer["template"], "train": train_ranked_first}
    if answer["template"] != train_ranked_first:
        raise RuntimeError(
            f"the optimizer's rule replayed gives {train_ranked_first!r}, the run answered {answer['template']!r}"
        )
    return {"train": answer["template"]}


def grade(result: dict, scorer: Scorer) -> dict:
    """The cell's numbers: the run's answer, the best it scored (oracle) and its pool's best on test; its curve."""
    trajectory = result["trajectory"]
    curve = held_by_llm_call(trajectory)
    pool = held_by_llm_call([r for r in trajectory if not r["llm_call"]])
    answers = run_answers(result, curve[-1][1])
    scored = list(dict.fromkeys(r["template"] for r in trajectory))
    train = {r["template"]: r["train_accuracy"] for r in trajectory}
    test = scorer.templates(scored, "test")
    oracle = max(scored, key=lambda t: (test[t], -scored.index(t)))
    answer = answers.get("val", answers["train"])
    ensemble = result["ensemble"]["templates"]
    counters = result["counters"]
    stage2 = result.get("class_prompts")  # a per-class strategy's stage 2; the answer where `chosen`
    per_class = None
    if stage2:
        prompts = [list(c.get("prompts", [])) for c in stage2["classes"]]
        per_class = {
            "chosen": bool(stage2.get("chosen")),
            "prompts": prompts,
            "train": stage2["train_accuracy"],
            "test": scorer.class_prompts(prompts, "test"),
        }
    chosen = per_class is not None and per_class["chosen"]
    return {
        "answer": answer,
        "answer_on": "val" if "val" in answers else "train",
        "test": per_class["test"] if per_class and chosen else test[answer],
        "train": per_class["train"] if per_class and chosen else train[answer],
        "template_test": test[answer],
        "per_class": per_class,
        "selections": {split: {"template": t, "test": test[t]} for split, t in answers.items()},
        "oracle": oracle,
        "oracle_test": test[oracle],
        "pool_best": pool[-1][1],
        "pool_train": pool[-1][2],
        "pool_test": test[pool[-1][1]],
        "ensemble": ensemble,
        "ensemble_train": result["ensemble"]["train_accuracy"],
        "ensemble_test": scorer.accuracies([ensemble], "test")[0],
        "curve": [(calls, test[t]) for calls, t, _ in curve],
        "llm_calls": counters["llm_calls"],
        "tokens": counters["llm_prompt_tokens"] + counters["llm_completion_tokens"],
        "templates_scored": counters["templates_scored"],
        "wall_seconds": result["wall_seconds"],
    }


def white_box(model_dir: Path, data: Path, shots: int, seed: int, class_names: list[str]) -> dict[str, float]:
    """The white-box comparators' test accuracy, trained on the very shots the scorer draws for this seed."""
    from scorer_service.datasets import build_task, load_image_folder

    whitebox = importlib.import_module("testbed.whitebox")  # the testbed's, imported only when asked for

    sample = build_task(TASK, load_image_folder(data), shots, seed).splits["train"]
    # testbed.whitebox answers in percent; the benchmark keeps fractions, as the scorer answers.
    return {
        "linear probe (white box, same shots)": whitebox.linear_probe_accuracy(model_dir, sample) / 100,
        "CoOp (white box, same shots)": whitebox.coop_accuracy(model_dir, sample, class_names) / 100,
    }


def fixed_scores(scorer: Scorer, planted: str) -> dict[str, dict[str, float]]:
    """Train and test accuracy of the baselines and the planted optimum: the rows no search produces."""
    rows = {**BASELINES, f"planted optimum `{planted}`": [planted]}
    return {
        name: {split: scorer.accuracies([members], split)[0] for split in ("train", "test")}
        for name, members in rows.items()
    }


def cached(path: Path, compute: Any) -> Any:
    """compute()'s JSON, kept at path: the resume of everything that is not an optimizer run."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(compute(), indent=2) + "\n")
    return json.loads(path.read_text())


class Progress:
    """Cells done / total and an ETA from the cells this invocation ran (cached ones cost nothing)."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.ran, self.started = total, 0, 0, time.monotonic()

    def step(self, cell: Cell, fresh: bool) -> None:
        self.done += 1
        self.ran += fresh
        elapsed = time.monotonic() - self.started
        eta = elapsed / self.ran * (self.total - self.done) if self.ran else 0.0
        print(
            f"[bench-search] cell {self.done}/{self.total} {cell.method} seed {cell.seed}"
            f" ({'ran' if fresh else 'cached'}); elapsed {elapsed / 60:.1f} min, ETA {eta / 60:.1f} min",
            flush=True,
        )


def transfer_recipe(requested: str, searched: str | None, card: dict[str, Any]) -> str | None:
    """The second backbone: the one asked for, or (auto) the first other recipe of the same world."""
    if requested == "none":
        return None
    if requested != "auto":
        return requested
    from testbed.train import RECIPES

    same_world = [
        name for name, r in RECIPES.items() if name != searched and getattr(r, "world", None) == card["world"]
    ]
    return same_world[0] if same_world else None


def main(argv: list[str] | None = None) -> int:
    from bench.search_report import build_tables, plot

    parser = ArgumentParser(prog="python -m bench.search_quality", description=__doc__)
    parser.add_argument("--recipe", help="testbed recipe searched on (default: testbed.train's default recipe)")
    parser.add_argument(
        "--model-dir", type=Path, help="a model directory with its world_card.json, instead of --recipe"
    )
    parser.add_argument("--data", type=Path, help="the task's image folder (default: the testbed's Fashion-MNIST)")
    parser.add_argument("--seeds", type=int, nargs="+", default=DEFAULT_SEEDS, help="few-shot seeds (one scorer each)")
    parser.add_argument("--shots", type=int, default=SHOTS, help="train images per class the search sees")
    parser.add_argument(
        "--val-shots",
        type=int,
        default=SHOTS,
        help="the scorer's val split per class (disjoint from train); >0: each run's answer is selected on val, and "
        "its train selection is shown beside it; 0: no val split, train selection only",
    )
    parser.add_argument("--llm-calls", type=int, default=DEFAULT_LLM_CALLS, help="LLM-call cap per run, all alike")
    parser.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=list(METHODS))
    parser.add_argument("--white-box", action=argparse.BooleanOptionalAction, default=True, help="linear probe, CoOp")
    parser.add_argument("--transfer-to", default="auto", help="recipe of the second backbone: a name, auto or none")
    parser.add_argument("--transfer-model-dir", type=Path, help="the second backbone's model directory")
    parser.add_argument("--llm-base-url", help="an OpenAI-compatible endpoint (default: the embedded llama-server)")
    parser.add_argument("--llm-model", default="gpt-4o-mini", help="model name at --llm-base-url")
    parser.add_argument("--llm-api-key-env", default="OPENAI_API_KEY", help="variable holding the endpoint's key")
    parser.add_argument("--llm-grammar", action="store_true", help="send llama.cpp's GBNF grammar to --llm-base-url")
    parser.add_argument("--out", type=Path, default=Path("bench/results/search_quality"))
    args = parser.parse_args(argv)
    configure_logging()
    methods = [CONTROL, *(m for m in args.methods if m != CONTROL)]  # the control always runs, first
    budget = Budget(args.llm_calls)
    work = args.out / "work"
    data = args.data or prepare_testbed_task()
    if args.model_dir is None:
        from testbed.train import DEFAULT_RECIPE

        args.recipe = args.recipe or DEFAULT_RECIPE
    model = args.model_dir or model_path(args.recipe)
    card = load_world_card(model)
    target_dir = args.transfer_model_dir
    if target_dir is None and (target := transfer_recipe(args.transfer_to, args.recipe, card)):
        target_dir = model_path(target)
    models_key = f"{card['world']}-{card['model_digest']}"
    common = {
        "world": card["world"],
        "model_digest": card["model_digest"],
        "code": code_digest(),
        "budget": asdict(budget),
        "shots": args.shots,
        "val_shots": args.val_shots,
        "llm": args.llm_model if args.llm_base_url else "embedded",
    }
    cells = {(m, s): cell_for(args.out, m, s, common, budget) for m in methods for s in args.seeds}
    progress = Progress(len(cells))
    graded: dict[str, dict[int, dict]] = {m: {} for m in methods}
    fixed_rows: dict[str, dict[int, dict[str, float]]] = {}
    white: dict[str, dict[int, float]] = {}
    planted = card["planted_optimum"]
    with llm_endpoint(args, work) as llm:
        args.llm_label = f"{llm[1]} at {llm[0]}" if args.llm_base_url else f"{llm[1]} (embedded llama-server)"
        for seed in args.seeds:
            with Scorer(model, data, seed, args.shots, work, args.val_shots) as scorer:
                scores = cached(
                    work / models_key / common["code"] / f"shots{args.shots}-seed{seed}" / "fixed.json",
                    partial(fixed_scores, scorer, planted),
                )
                for name, values in scores.items():
                    fixed_rows.setdefault(name, {})[seed] = values
                for method in methods:
                    cell = cells[(method, seed)]
                    done = cell.path / "graded.json"
                    fresh = not done.is_file()
                    if fresh:
                        log.info("search_quality_cell", method=method, seed=seed, cell=str(cell.path))
                        result = run_cell(cell, scorer, llm, args.llm_api_key_env, budget)
                        done.write_text(json.dumps(grade(result, scorer), indent=2) + "\n")
                    graded[method][seed] = json.loads(done.read_text())
                    progress.step(cell, fresh)
            if args.white_box:
                box = cached(
                    work
                    / models_key
                    / f"white-box-{code_digest(WHITE_BOX_CODE)}"
                    / f"shots{args.shots}-seed{seed}.json",
                    partial(white_box, model, data, args.shots, seed, card["class_names"]),
                )
                for name, accuracy in box.items():
                    white.setdefault(name, {})[seed] = accuracy
    transfer: dict[str, dict[int, float]] = {}
    target_card = None
    if target_dir is not None:
        target_card = load_world_card(target_dir)
        with Scorer(target_dir, data, args.seeds[0], args.shots, work, args.val_shots) as scorer:
            templates = [graded[m][s]["answer"] for m in methods for s in args.seeds]
            on_target = scorer.templates(list(dict.fromkeys([*templates, planted, "a photo of a {}."])), "test")
        for m in methods:
            transfer[m] = {s: on_target[graded[m][s]["answer"]] for s in args.seeds}
        transfer["planted"] = dict.fromkeys(args.seeds, on_target[planted])
        transfer["photo"] = dict.fromkeys(args.seeds, on_target["a photo of a {}."])
    lines = build_tables(
        seeds=args.seeds,
        methods=methods,
        graded=graded,
        fixed=fixed_rows,
        white=white,
        card=card,
        transfer=transfer,
        target_card=target_card,
        context={
            "model": str(model),
            "llm": args.llm_label,
            "budget": budget,
            "shots": args.shots,
        },
    )
    write_table(args.out / "search_quality.md", lines)
    (args.out / "search_quality.json").write_text(
        json.dumps({"graded": graded, "fixed": fixed_rows, "white_box": white, "transfer": transfer}, indent=2) + "\n"
    )
    plot(args.out / "search_quality.png", args.seeds, methods, graded, fixed_rows, card)
    return 0


if __name__ == "__main__":
    sys.exit(main())
