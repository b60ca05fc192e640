"""`promptclimb optimize MODEL DATA`: one command from a CLIP checkpoint, a dataset and an LLM to a report.

It starts the services as they run anywhere, as local processes on loopback ports: the scorer (MODEL, DATA), the
optimizer service (`serve`), and, when no LLM is configured, the embedded llama-server. It starts one run through
the optimizer's gRPC API as a local user who holds the `test` right, follows it with the shared progress bar
(optimizer_service/report.py: iterations, best train accuracy, tokens, dollars), then scores the baselines, the
run's answer and its ensemble on every split the scorer has (train, val where the task has one, test) and writes
the report: result.json, accuracy.png and summary.md. Every process stops on exit, Ctrl-C included.

The LLM: --llm-base-url/--llm-model, else OPENAI_API_KEY with OpenAI's default model (optimizer_service.config's
resolve_llm_endpoint), else the embedded llama-server, which it says. A MODEL that cannot load stops it with the
scorer's reason: nothing falls back to random weights. `make demo` runs this same path (demo/__main__.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import grpc
import structlog

from optimizer_service.cli import add_report_args, add_spec_args, run_spec
from optimizer_service.config import OPENAI_BASE_URL, LlmEndpoint, LlmSettings, parse_price, resolve_llm_endpoint
from optimizer_service.estimate import estimate_run
from optimizer_service.pool import Candidate
from optimizer_service.prices import Price, price_of
from optimizer_service.report import (
    SUMMARY,
    Evaluation,
    LlmUsed,
    RunProgress,
    candidate_of,
    selected_by_step,
    write_report,
)
from optimizer_service.spec import RunSettings, SpecError
from optimizer_service.tracking import TrackingUnavailable, log_to_mlflow, require_mlflow
from promptclimb.optimizer.v1 import optimizer_pb2 as opt_pb
from promptclimb.optimizer.v1 import optimizer_pb2_grpc as opt_grpc
from promptclimb.scorer.v1 import scorer_pb2 as sc_pb
from promptclimb.scorer.v1 import scorer_pb2_grpc as sc_grpc
from promptclimb_common.cli_help import ArgumentParser
from promptclimb_common.logging import configure_logging
from promptclimb_common.processes import start_service, stop_process

log = structlog.get_logger("promptclimb.optimize")

BASELINES = {"baseline_plain": "{}", "baseline_photo": "a photo of a {}."}
EMBEDDED_NOTICE = (
    "no LLM configured (--llm-base-url/--llm-model, or OPENAI_API_KEY): using the embedded llama-server "
    "(a small local model; costs $0, writes weaker templates than a large model)"
)


class OptimizeError(RuntimeError):
    """Something the user must fix before a run can happen (a model that does not load, no LLM); says what."""


@dataclass(frozen=True)
class OptimizeSettings:
    model: str  # hub id or directory, served as it is
    data: str  # an image-folder directory, or coop:NAME:DIR
    out: Path
    spec: opt_pb.RunSpec  # task_id is set here
    work: Path = Path(".cache/promptclimb/optimize")  # state, logs and the tokens file of the services
    shots: int = 16
    seed: int = 1
    llm_base_url: str | None = None
    llm_model: str | None = None
    llm_price: Price | None = None
    llm_grammar: bool | None = None  # None: on for the embedded llama-server, off for other endpoints
    embedded_llm: str = ""  # "": demo.embedded_llm's default model
    dry_run: bool = False
    mlflow: str | None = None
    note: str = ""  # shown atop the report (the demo's warning about an untrained model)


class Services(contextlib.ExitStack):
    """The children of one `optimize`, stopped in reverse order on exit, Ctrl-C included."""

    def __init__(self, work: Path) -> None:
        super().__init__()
        self.work = work

    def start(self, name: str, args: list[str], env: dict | None = None) -> str:
        log_path = self.work / f"{name}.log"
        log_path.unlink(missing_ok=True)
        log.info("service_starting", service=name, log=str(log_path))
        try:
            service = start_service(args, log_path, env, timeout=900)
        except (RuntimeError, TimeoutError) as err:  # it exited, or never served
            lines = log_path.read_text(errors="replace").splitlines()
            reason = next((line for line in reversed(lines) if line.startswith(f"{name}: ")), None)
            if reason:  # the service's own one-line reason (scorer/__main__.py's startup_failed)
                raise OptimizeError(f"{reason} (log: {log_path})") from None
            tail = "\n".join(lines[-15:])
            raise OptimizeError(f"{name} did not start ({err}); the end of {log_path}:\n{tail}") from None
        self.callback(stop_process, service.process, signal.SIGTERM, 60)
        log.info("service_ready", service=name, address=service.address)
        return service.address


def write_tokens(path: Path) -> dict[str, str]:
    """One tokens file for both services: the optimizer's scorer token, and the local user's, who may read test."""
    tokens = {name: secrets.token_urlsafe(24) for name in ("optimizer", "local")}
    entries = [
        {"name": "optimizer", "token": tokens["optimizer"], "rights": ["score", "test"]},
        {"name": "local", "token": tokens["local"], "rights": ["score", "test", "run"]},
    ]
    path.write_text(json.dumps({"tokens": entries}))
    path.chmod(0o600)
    return tokens


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


def task_name(data: str) -> str:
    """The task's id, which the LLM reads as the task's name: the CoOp dataset's, or the image folder's."""
    if data.startswith("coop:"):
        return data.split(":")[1]
    return Path(data).expanduser().resolve().name or "images"


def absolute_model(model: str) -> str:
    """A directory as an absolute path (the services run from the package's root, not the caller's directory); a hub
    id as it is."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.is_dir() else model


def absolute_data(data: str) -> str:
    """DIR or coop:NAME:DIR with DIR made absolute, for the same reason."""
    prefix, _, folder = data.rpartition(":") if data.startswith("coop:") else ("", "", data)
    return f"{prefix}:{Path(folder).expanduser().resolve()}" if prefix else str(Path(folder).expanduser().resolve())


def resolve_llm(settings: OptimizeSettings) -> tuple[LlmEndpoint, Price | None]:
    endpoint = resolve_llm_endpoint(settings.llm_base_url, settings.llm_model, os.environ.get("OPENAI_API_KEY", ""))
    if endpoint.source == "default":
        return endpoint, settings.llm_price or Price()  # our own process: free
    return endpoint, price_of(endpoint.model, endpoint.base_url, settings.llm_price)


def optimize(settings: OptimizeSettings) -> int:
    """Runs the whole thing; returns the exit status (0: the run succeeded and the report is written)."""
    started = time.monotonic()
    endpoint, price = resolve_llm(settings)
    embedded = endpoint.source == "default"
    if settings.dry_run:
        return dry_run(settings, endpoint, price)
    if settings.mlflow:
        require_mlflow()
    if embedded:
        print(EMBEDDED_NOTICE, file=sys.stderr, flush=True)
    work = settings.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    for state in ("optimizer-state", "scorer-state"):  # each optimize is one fresh run; only caches carry over
        shutil.rmtree(work / state, ignore_errors=True)
    tokens = write_tokens(work / "tokens.json")
    with Services(work) as services:
        if embedded:
            from demo.embedded_llm import DEFAULT_MODEL, LlamaServer  # needs `make llm-env`

            server = services.enter_context(
                LlamaServer.for_model(
                    settings.embedded_llm or DEFAULT_MODEL, parallel=2, log_path=work / "llama-server.log"
                )
            )
            endpoint = LlmEndpoint(server.base_url, server.alias, "embedded")
        scorer_address = services.start(
            "scorer",
            [
                "scorer_service",
                "--model",
                absolute_model(settings.model),
                "--task",
                f"{task_name(settings.data)}={absolute_data(settings.data)}",
                "--shots",
                str(settings.shots),
                "--seed",
                str(settings.seed),
                "--tokens-file",
                str(work / "tokens.json"),
                "--anonymous-rights",
                "",
                "--cache-dir",
                str(work / "scorer-cache"),
                "--state-dir",
                str(work / "scorer-state"),
            ],
        )
        grammar = embedded if settings.llm_grammar is None else settings.llm_grammar
        optimizer_address = services.start(
            "optimizer",
            [
                "optimizer_service",
                "serve",
                "--state-dir",
                str(work / "optimizer-state"),
                "--scorer",
                scorer_address,
                "--llm-base-url",
                endpoint.base_url,
                "--llm-model",
                endpoint.model,
                "--llm-grammar",
                str(grammar).lower(),
                "--tokens-file",
                str(work / "tokens.json"),
                "--anonymous-rights",
                "",
                *(["--llm-price", f"{price.prompt_per_mtok},{price.completion_per_mtok}"] if price else []),
            ],
            env={
                "SCORER_TOKEN": tokens["optimizer"],
                "OPENAI_API_KEY": os.environ.get("OPENAI_API_KEY") or "not-needed",
            },
        )
        with (
            grpc.insecure_channel(optimizer_address) as opt_channel,
            grpc.insecure_channel(scorer_address) as sc_channel,
        ):
            result = climb(
                settings,
                opt_grpc.OptimizerStub(opt_channel),
                sc_grpc.ScorerStub(sc_channel),
                tokens["local"],
                LlmUsed(endpoint.base_url, endpoint.model, endpoint.source, price),
            )
    if settings.mlflow:
        log_to_mlflow(settings.mlflow, settings.out)
    print((settings.out / SUMMARY).read_text())
    print(f"wrote {settings.out} in {time.monotonic() - started:.0f} s")
    return 0 if result["state"] == "RUN_STATE_SUCCEEDED" else 1


def climb(
    settings: OptimizeSettings,
    optimizer: opt_grpc.OptimizerStub,
    scorer: sc_grpc.ScorerStub,
    token: str,
    llm: LlmUsed,
) -> dict:
    """One run through the optimizer's API, then the evaluation and the report."""
    task = scorer.ListTasks(sc_pb.ListTasksRequest(), metadata=bearer(token)).tasks[0]
    spec = opt_pb.RunSpec()
    spec.CopyFrom(settings.spec)
    spec.task_id = task_name(settings.data)
    # a request_id makes StartRun safe to retry: a repeat returns this run instead of starting another
    run = optimizer.StartRun(opt_pb.StartRunRequest(spec=spec, request_id=uuid.uuid4().hex), metadata=bearer(token))
    log.info("run_started", run_id=run.run_id, model_digest=run.model_digest)
    candidates: list[Candidate] = []
    with RunProgress(run, llm.price, file=sys.stdout) as progress:
        for event in optimizer.WatchRun(opt_pb.WatchRunRequest(run_id=run.run_id), metadata=bearer(token)):
            progress.on_event(event)
            if event.HasField("candidate_scored"):
                candidates.append(candidate_of(event.candidate_scored))
    run = optimizer.GetRun(opt_pb.GetRunRequest(run_id=run.run_id), metadata=bearer(token))
    held = list(dict.fromkeys(c.template for _, c in selected_by_step(candidates, run.spec.iterations)))
    evaluations = evaluate(scorer, task, run, token)
    test = accuracies(scorer, task, held, sc_pb.SPLIT_TEST, token) if held and has_split(task, "test") else {}
    return write_report(
        settings.out,
        run,
        candidates,
        llm=llm,
        evaluations=evaluations,
        class_names=list(task.class_names),
        note=settings.note,
        test_accuracy=test,
        extra={"model": settings.model, "data": settings.data, "model_version": task.model_version},
    )


def split_names(task: sc_pb.TaskInfo) -> dict[str, sc_pb.Split]:
    """The task's splits by short name ("train", "val", "test"), in the scorer's order."""
    return {sc_pb.Split.Name(s.split).removeprefix("SPLIT_").lower(): s.split for s in task.splits}


def has_split(task: sc_pb.TaskInfo, name: str) -> bool:
    return name in split_names(task)


def accuracies(
    scorer: sc_grpc.ScorerStub, task: sc_pb.TaskInfo, templates: list[str], split: sc_pb.Split, token: str
) -> dict[str, float]:
    reply = scorer.Score(
        sc_pb.ScoreRequest(task_id=task.task_id, templates=templates, split=split, model_digest=task.model_digest),
        metadata=bearer(token),
    )
    return {r.template: r.accuracy for r in reply.results if not r.error}


def evaluate(scorer: sc_grpc.ScorerStub, task: sc_pb.TaskInfo, run: opt_pb.Run, token: str) -> list[Evaluation]:
    """The baselines, the answer (the run's own selection: on val where the scorer has a val split, else on train)
    and its ensemble, on every split the scorer has; read after the search, so selection never saw test."""
    rows: list[tuple[str, tuple[str, ...]]] = [(label, (t,)) for label, t in BASELINES.items()]
    if run.HasField("selected"):
        rows.append(("answer", (run.selected.template,)))
    if run.HasField("ensemble") and len(run.ensemble.templates) > 1:
        rows.append(("ensemble", tuple(run.ensemble.templates)))
    measured: dict[int, dict[str, float]] = {i: {} for i in range(len(rows))}
    for name, split in split_names(task).items():
        singles = [templates[0] for _, templates in rows if len(templates) == 1]
        ensembles = [sc_pb.TemplateEnsemble(templates=t) for _, t in rows if len(t) > 1]
        reply = scorer.Score(
            sc_pb.ScoreRequest(
                task_id=task.task_id,
                templates=list(dict.fromkeys(singles)),
                ensembles=ensembles,
                split=split,
                model_digest=task.model_digest,
            ),
            metadata=bearer(token),
        )
        by_template = {r.template: r.accuracy for r in reply.results if not r.error}
        by_ensemble = {tuple(r.templates): r.accuracy for r in reply.ensemble_results if not r.error}
        for i, (_, templates) in enumerate(rows):
            value = by_template.get(templates[0]) if len(templates) == 1 else by_ensemble.get(templates)
            if value is not None:
                measured[i][name] = value
    return [Evaluation(label, templates, measured[i]) for i, (label, templates) in enumerate(rows)]


def dry_run(settings: OptimizeSettings, endpoint: LlmEndpoint, price: Price | None) -> int:
    """The expected spend, from the spec alone: no service starts, nothing is scored."""
    spec = opt_pb.RunSpec()
    spec.CopyFrom(settings.spec)
    spec.task_id = task_name(settings.data)
    run_settings = RunSettings.from_proto(spec, endpoint.model or "embedded")
    llm = LlmSettings()  # the optimizer service's defaults, which `optimize` starts it with
    estimate = estimate_run(
        run_settings,
        price,
        prompt_budget_tokens=llm.prompt_budget_tokens,
        max_completion_tokens=llm.max_completion_tokens,
    )
    where = "the embedded llama-server" if endpoint.source == "default" else endpoint.base_url
    print(f"dry run: {run_settings.iterations_total} iterations, LLM {endpoint.model or '(embedded)'} at {where}")
    print("\n".join(estimate.lines()))
    return 0


def add_optimize_args(p: argparse.ArgumentParser) -> None:
    a = p.add_argument
    a("model", help="CLIP checkpoint: a Hugging Face hub id (e.g. openai/clip-vit-base-patch32) or a directory")
    a("data", help="dataset: an image folder (DIR/train/<class>/*, DIR/test/<class>/*) or coop:NAME:DIR")
    a("--out", type=Path, default=Path("optimize-out"), help="directory for result.json, accuracy.png, summary.md")
    a("--work-dir", type=Path, default=OptimizeSettings.work, help="the services' state, logs and caches")
    a("--shots", type=int, default=16, help="train images per class the search scores on")
    a("--data-seed", type=int, default=1, help="seed of the few-shot sample")
    a("--llm-base-url", default=None, help=f"OpenAI-compatible endpoint; unset: {OPENAI_BASE_URL} with OPENAI_API_KEY")
    a("--llm-model", default=None, help="chat model; unset: gpt-4o-mini on OpenAI's endpoint")
    a(
        "--llm-price",
        type=parse_price,
        default=None,
        help="PROMPT,COMPLETION USD per million tokens; unset: genai-prices",
    )
    a(
        "--llm-grammar",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="constrain replies with a GBNF grammar (llama.cpp only); unset: on for the embedded LLM only",
    )
    add_spec_args(p)
    add_report_args(p)


def main(argv: list[str] | None = None, prog: str = "promptclimb optimize") -> int:
    parser = ArgumentParser(
        prog=prog,
        description="Optimize a CLIP model's prompt template on a dataset with a chat LLM, and report train, val and "
        "test accuracy of the baselines and the answer.",
    )
    add_optimize_args(parser)
    ns = parser.parse_args(argv)
    ns.task = task_name(ns.data)
    configure_logging("INFO")
    try:
        settings = OptimizeSettings(
            model=ns.model,
            data=ns.data,
            out=ns.out,
            spec=run_spec(ns),
            work=ns.work_dir,
            shots=ns.shots,
            seed=ns.data_seed,
            llm_base_url=ns.llm_base_url,
            llm_model=ns.llm_model,
            llm_price=ns.llm_price,
            llm_grammar=ns.llm_grammar,
            dry_run=ns.dry_run,
            mlflow=ns.mlflow,
        )
        return optimize(settings)
    except (OptimizeError, SpecError, TrackingUnavailable) as err:
        print(f"promptclimb optimize: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: every process was stopped", file=sys.stderr)
        return 130
