"""`make demo`: the whole system on one machine, end to end.

Starts an LLM (the embedded llama-server, or a remote OpenAI-compatible
endpoint), the scorer and the optimizer service on loopback ports, starts one
run through the optimizer's gRPC API, streams its progress, prints the best
templates against the baselines `{}` and `a photo of a {}.` (train accuracy,
and test accuracy read with an admin token), writes result.json and a plot,
and stops every process, also on Ctrl-C or failure.

By default the scorer serves the testbed CLIP (testbed/train.py: a small model
trained on Fashion-MNIST on this machine, trained on first use and cached), on
Fashion-MNIST with the full test split.

Environment knobs (all optional):
  SCORER_MODEL      CLIP hub id or directory instead of the testbed model (falls
                    back to random weights, loudly, when it cannot be loaded)
  DEMO_DATA         image-folder dataset (default: Fashion-MNIST, 100 train images
                    per class to draw shots from, the full 10,000-image test split)
  DEMO_SHOTS        train images per class the search sees (default 16)
  OPENAI_API_KEY    use OpenAI (or LLM_BASE_URL) instead of the embedded LLM
  LLM_BASE_URL, LLM_MODEL   a remote OpenAI-compatible endpoint and model
  DEMO_LLM          embedded model: qwen2.5-coder-1.5b (default) or qwen2.5-coder-0.5b
  DEMO_LLM_GRAMMAR  true/false: constrain replies with a GBNF grammar (default: true for the embedded LLM)
  DEMO_OUT          output directory (default demo-out)
  DEMO_RESTARTS, DEMO_RESETS, DEMO_ITERATIONS, DEMO_TEMPLATES_PER_CALL, DEMO_POOL   the run's budget
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
from typing import Any

import grpc
import structlog
from tqdm import tqdm

from demo.embedded_llm import DEFAULT_MODEL, LlamaServer
from optimizer_service.cli import selected_by_step, write_report
from optimizer_service.pool import Candidate
from promptclimb.optimizer.v1 import optimizer_pb2 as opt_pb
from promptclimb.optimizer.v1 import optimizer_pb2_grpc as opt_grpc
from promptclimb.scorer.v1 import scorer_pb2 as sc_pb
from promptclimb.scorer.v1 import scorer_pb2_grpc as sc_grpc
from promptclimb_common.logging import configure_logging
from promptclimb_common.processes import start_service, stop_process
from testbed.fashion_mnist import prepare_testbed_task
from testbed.random_clip import UNTRAINED_MARKER, build_random_clip
from testbed.train import ensure_model

log = structlog.get_logger("demo")

WORK = Path(".cache/promptclimb/demo")
RANDOM_MODEL = Path(".cache/promptclimb/models/random-tiny")
BASELINES = ("{}", "a photo of a {}.")
UNTRAINED_WARNING = "untrained model: accuracies are chance level; set SCORER_MODEL to real weights"


@dataclass(frozen=True)
class DemoSettings:
    model: str | None
    data: Path | None
    shots: int
    out: Path
    llm_base_url: str | None
    llm_model: str  # the remote endpoint's; the embedded server names its own
    embedded_llm: str
    llm_grammar: bool
    restarts: int
    resets: int
    iterations: int
    templates_per_call: int
    pool: int

    @classmethod
    def from_env(cls) -> DemoSettings:
        env = os.environ.get
        remote = env("LLM_BASE_URL") or ("https://api.openai.com/v1" if env("OPENAI_API_KEY") else None)
        return cls(
            model=env("SCORER_MODEL") or None,
            data=Path(data) if (data := env("DEMO_DATA")) else None,
            shots=int(env("DEMO_SHOTS", 16)),
            out=Path(env("DEMO_OUT", "demo-out")),
            llm_base_url=remote,
            llm_model=env("LLM_MODEL", "gpt-4o-mini"),
            embedded_llm=env("DEMO_LLM", DEFAULT_MODEL),
            # GBNF is llama.cpp's: on for the embedded server, off for remote endpoints unless asked for
            llm_grammar=env("DEMO_LLM_GRAMMAR", "false" if remote else "true").lower() == "true",
            restarts=int(env("DEMO_RESTARTS", 2)),
            resets=int(env("DEMO_RESETS", 1)),
            iterations=int(env("DEMO_ITERATIONS", 3)),
            templates_per_call=int(env("DEMO_TEMPLATES_PER_CALL", 4)),
            pool=int(env("DEMO_POOL", 10)),
        )


def resolve_model(ref: str | None) -> tuple[str, bool]:
    """The CLIP checkpoint to serve and whether it is untrained.

    No `ref`: the testbed model, trained here on first use. A directory or a hub
    id already in the local cache is used as it is. Anything else falls back,
    loudly, to a random tiny CLIP built once on disk: an explicit model that
    cannot be had is a user's mistake to show, not to hide.
    """
    if ref is None:
        return str(ensure_model()), False
    path = Path(ref).expanduser()
    if path.is_dir():
        return str(path), (path / UNTRAINED_MARKER).exists()
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(
            ref,
            local_files_only=os.environ.get("HF_HUB_OFFLINE") == "1",
            allow_patterns=["*.json", "*.safetensors", "*.txt"],
        )
        return ref, False
    except OSError as err:  # huggingface_hub's errors (offline, not found, HTTP) are all OSErrors
        log.warning("clip_model_unavailable", model=ref, error=str(err).splitlines()[0][:200])
    if not (RANDOM_MODEL / UNTRAINED_MARKER).exists():
        log.warning("building_random_clip", path=str(RANDOM_MODEL), shape="tiny")
        build_random_clip(RANDOM_MODEL, "tiny")
    return str(RANDOM_MODEL), True


def banner(text: str) -> None:
    line = "!" * (len(text) + 8)
    print(f"\n{line}\n!!! {text} !!!\n{line}\n", flush=True)


class Processes(contextlib.ExitStack):
    """Every child of the demo, stopped in reverse order on exit, Ctrl-C included."""

    def service(self, name: str, args: list[str], env: dict | None = None) -> str:
        log_path = WORK / f"{name}.log"
        log_path.unlink(missing_ok=True)
        log.info("service_starting", service=name, log=str(log_path))
        try:
            service = start_service(args, log_path, env, timeout=900)
        except (RuntimeError, TimeoutError) as err:  # it exited, or never served
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
            raise RuntimeError(f"{name} did not start ({err}); the end of {log_path}:\n{tail}") from None
        self.callback(stop_process, service.process, signal.SIGTERM, 60)
        log.info("service_ready", service=name, address=service.address)
        return service.address


def write_tokens(path: Path) -> dict[str, str]:
    tokens = {name: secrets.token_urlsafe(24) for name in ("optimizer", "admin", "user")}
    path.write_text(
        json.dumps(
            {
                "tokens": [
                    {"name": "optimizer", "token": tokens["optimizer"], "rights": ["score"]},
                    {"name": "admin", "token": tokens["admin"], "rights": ["score", "test", "run"]},
                    {"name": "user", "token": tokens["user"], "rights": ["run"]},
                ]
            }
        )
    )
    path.chmod(0o600)
    return tokens


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


def follow(stub: opt_grpc.OptimizerStub, run_id: str, token: str) -> list[Candidate]:
    """Streams the run's events into a progress bar; returns every scored candidate."""
    candidates: list[Candidate] = []
    run = stub.GetRun(opt_pb.GetRunRequest(run_id=run_id), metadata=bearer(token))
    with tqdm(total=run.counters.iterations_total, unit="it", desc="climbing", file=sys.stdout) as bar:
        for event in stub.WatchRun(opt_pb.WatchRunRequest(run_id=run_id), metadata=bearer(token)):
            kind = event.WhichOneof("event")
            if kind == "candidate_scored":
                c = event.candidate_scored
                candidates.append(
                    Candidate(
                        c.template,
                        c.train_accuracy,
                        c.restart,
                        c.reset,
                        c.iteration,
                        c.candidate_sequence,
                        c.llm_call,
                        c.position,
                    )
                )
            elif kind == "iteration_done":
                done = event.iteration_done
                bar.n = done.counters.iterations_done
                bar.set_postfix(
                    best=f"{100 * done.best_train_accuracy:.1f}%",
                    llm_calls=done.counters.llm_calls,
                    tokens=done.counters.llm_prompt_tokens + done.counters.llm_completion_tokens,
                    refresh=True,
                )
            elif kind == "new_best":
                bar.write(f"  new best {100 * event.new_best.train_accuracy:5.1f}%  {event.new_best.template}")
    return candidates


def scores(
    scorer: sc_grpc.ScorerStub, task_id: str, templates: list[str], split: sc_pb.Split, token: str
) -> dict[str, float]:
    reply = scorer.Score(sc_pb.ScoreRequest(task_id=task_id, templates=templates, split=split), metadata=bearer(token))
    return {r.template: r.accuracy for r in reply.results}


def report(
    scorer: sc_grpc.ScorerStub, task_id: str, selected: str, best: list[str], admin: str, untrained: bool
) -> list[dict[str, Any]]:
    """Train and test accuracy of the baselines, the train-selected template and the other best ones
    (test read with the admin token, after the search: selection never sees it)."""
    templates = list(dict.fromkeys([*BASELINES, selected, *best]))
    train = scores(scorer, task_id, templates, sc_pb.SPLIT_TRAIN, admin)
    test = scores(scorer, task_id, templates, sc_pb.SPLIT_TEST, admin)
    kinds = dict.fromkeys(BASELINES, "baseline") | {selected: "selected"}
    rows: list[dict[str, Any]] = [
        {"template": t, "kind": kinds.get(t, "found"), "train_accuracy": train[t], "test_accuracy": test[t]}
        for t in templates
    ]
    print("\n  train   test   template")
    for row in rows:
        tag = {"baseline": "   (baseline)", "selected": "   <- the climb's pick (best on train)"}.get(row["kind"], "")
        print(f"  {100 * row['train_accuracy']:5.1f}%  {100 * row['test_accuracy']:5.1f}%  {row['template']}{tag}")
    if untrained:
        banner(UNTRAINED_WARNING)
    return rows


def run_demo(settings: DemoSettings) -> int:
    WORK.mkdir(parents=True, exist_ok=True)
    for state in ("optimizer-state", "scorer-state"):  # each demo is one fresh run; only caches carry over
        shutil.rmtree(WORK / state, ignore_errors=True)
    settings.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    model, untrained = resolve_model(settings.model)
    if untrained:
        banner(UNTRAINED_WARNING)
    data = settings.data or prepare_testbed_task()
    tokens = write_tokens(WORK / "tokens.json")
    with Processes() as processes:
        if settings.llm_base_url:
            base_url, llm_model = settings.llm_base_url, settings.llm_model
            log.info("llm_remote", base_url=base_url, model=llm_model)
        else:
            llm = processes.enter_context(
                LlamaServer.for_model(settings.embedded_llm, parallel=2, log_path=WORK / "llama-server.log")
            )
            base_url, llm_model = llm.base_url, llm.alias
        scorer_address = processes.service(
            "scorer",
            [
                "scorer_service",
                "--model",
                model,
                "--task",
                f"demo={data}",
                "--shots",
                str(settings.shots),
                "--seed",
                "1",
                "--tokens-file",
                str(WORK / "tokens.json"),
                "--cache-dir",
                str(WORK / "scorer-cache"),
                "--state-dir",
                str(WORK / "scorer-state"),
            ],
        )
        optimizer_address = processes.service(
            "optimizer",
            [
                "optimizer_service",
                "serve",
                "--state-dir",
                str(WORK / "optimizer-state"),
                "--scorer",
                scorer_address,
                "--llm-base-url",
                base_url,
                "--llm-model",
                llm_model,
                "--llm-grammar",
                str(settings.llm_grammar).lower(),
                "--tokens-file",
                str(WORK / "tokens.json"),
            ],
            env={"SCORER_TOKEN": tokens["optimizer"], "OPENAI_API_KEY": os.environ.get("OPENAI_API_KEY", "not-needed")},
        )
        with (
            grpc.insecure_channel(optimizer_address) as opt_channel,
            grpc.insecure_channel(scorer_address) as sc_channel,
        ):
            optimizer = opt_grpc.OptimizerStub(opt_channel)
            scorer = sc_grpc.ScorerStub(sc_channel)
            spec = opt_pb.RunSpec(
                task_id="demo",
                restarts=settings.restarts,
                resets=settings.resets,
                iterations=settings.iterations,
                templates_per_call=settings.templates_per_call,
                initial_pool_size=settings.pool,
                label="make demo",
            )
            # a request_id makes StartRun safe to retry: a repeat returns this run instead of starting another
            started_run = optimizer.StartRun(
                opt_pb.StartRunRequest(spec=spec, request_id=uuid.uuid4().hex), metadata=bearer(tokens["user"])
            )
            run_id = started_run.run_id
            log.info("run_started", run_id=run_id, model_digest=started_run.model_digest)
            candidates = follow(optimizer, run_id, tokens["user"])
            run = optimizer.GetRun(opt_pb.GetRunRequest(run_id=run_id), metadata=bearer(tokens["user"]))
            print(
                f"\nrun {run_id}: {opt_pb.RunState.Name(run.state)} ({run.stop_reason}); "
                f"{run.counters.llm_calls} LLM calls, {run.counters.templates_scored} templates scored"
            )
            held = [c.template for _, c in selected_by_step(candidates, run.spec.iterations)]
            selected = run.selected.template  # the run's own answer (optimizer_service/answer.py)
            rows = report(scorer, "demo", selected, [b.template for b in run.best], tokens["admin"], untrained)
            test = scores(scorer, "demo", list(dict.fromkeys(held)), sc_pb.SPLIT_TEST, tokens["admin"]) if held else {}
    write_report(settings.out, run, candidates, note=UNTRAINED_WARNING if untrained else "", test_accuracy=test)
    result_path = settings.out / "result.json"
    result = json.loads(result_path.read_text())
    result.update(
        model=model,
        untrained_model=untrained,
        baselines_and_best=rows,
        warning=UNTRAINED_WARNING if untrained else None,
    )
    result_path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {result_path} and {settings.out / 'accuracy.png'} in {time.monotonic() - started:.0f} s")
    if untrained:
        banner(UNTRAINED_WARNING)
    return 0 if run.state == opt_pb.RUN_STATE_SUCCEEDED else 1


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(
        prog="python -m demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args(argv)
    configure_logging("INFO")
    try:
        return run_demo(DemoSettings.from_env())
    except KeyboardInterrupt:
        print("\ninterrupted: every process was stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
