"""What the image check asks of the running containers: the scorer lists and scores, the optimizer finishes a run,
both stop on SIGTERM, the scorer refuses a state dir on the read-only root; once per manifest (Kubernetes, compose)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import grpc

from image_checks.common import LOGS, CheckFailed, sh
from image_checks.container import Container, healthcheck, serving
from image_checks.manifests import ContainerSpec, compose_services, kubernetes_pods
from promptclimb.optimizer.v1 import optimizer_pb2, optimizer_pb2_grpc
from promptclimb.scorer.v1 import scorer_pb2, scorer_pb2_grpc
from tests.optimizer.scripted_llm import ScriptedLLM
from tests.procs import start_redis, stop_process

TERMINAL = {optimizer_pb2.RUN_STATE_SUCCEEDED, optimizer_pb2.RUN_STATE_FAILED, optimizer_pb2.RUN_STATE_CANCELLED}


def check_scorer(address: str, token: str, report: list[str]) -> str:
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    with grpc.insecure_channel(address) as channel:
        stub = scorer_pb2_grpc.ScorerStub(channel)
        tasks = stub.ListTasks(scorer_pb2.ListTasksRequest(), metadata=metadata, timeout=30).tasks
        if not tasks:
            raise CheckFailed("the scorer lists no task")
        task = tasks[0]
        splits = ", ".join(f"{scorer_pb2.Split.Name(s.split)} {s.num_images} images" for s in task.splits)
        report.append(
            f"- ListTasks: {task.task_id!r}, {task.num_classes} classes {list(task.class_names)},"
            f" model {task.model_name}, {splits}"
        )
        templates = ["a photo of a {}.", "{}", "a {} with {two} holes"]
        request = scorer_pb2.ScoreRequest(task_id=task.task_id, templates=templates, split=scorer_pb2.SPLIT_TRAIN)
        reply = stub.Score(request, metadata=metadata, timeout=60)
        scored = [r for r in reply.results if not r.error]
        if len(scored) != 2 or not all(r.total > 0 for r in scored) or not reply.results[2].error:
            raise CheckFailed(f"Score answered {reply}")
        for r in reply.results:
            outcome = (
                f"error {r.error!r}"
                if r.error
                else f"{r.correct}/{r.total} (random weights: chance level, not a result)"
            )
            report.append(f"  - Score {r.template!r}: {outcome}")
        return str(task.task_id)


def check_optimizer_run(address: str, token: str, task_id: str, llm: ScriptedLLM, report: list[str]) -> None:
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    with grpc.insecure_channel(address) as channel:
        stub = optimizer_pb2_grpc.OptimizerStub(channel)
        started = time.monotonic()
        spec = optimizer_pb2.RunSpec(
            task_id=task_id, initial_pool_size=4, restarts=1, resets=1, iterations=2, templates_per_call=2, top_k=1
        )  # a short run
        run_id = stub.StartRun(optimizer_pb2.StartRunRequest(spec=spec), metadata=metadata, timeout=30).run_id
        while True:
            run = stub.GetRun(optimizer_pb2.GetRunRequest(run_id=run_id), metadata=metadata, timeout=30)
            if run.state in TERMINAL or time.monotonic() - started > 300:
                break
            time.sleep(0.5)
    if run.state != optimizer_pb2.RUN_STATE_SUCCEEDED:
        raise CheckFailed(f"the run ended {optimizer_pb2.RunState.Name(run.state)}: {run.stop_reason!r}")
    c = run.counters
    report.append(
        f"- run {run_id}: {optimizer_pb2.RunState.Name(run.state)} ({run.stop_reason})"
        f" in {time.monotonic() - started:.1f} s, "
        f"{c.iterations_done}/{c.iterations_total} iterations, {c.llm_calls} LLM calls (the scripted LLM saw "
        f"{len(llm.seen)}), {c.templates_scored} templates scored; best {run.best[0].template!r}"
    )


@contextmanager
def quota_store(url: str, report: list[str]) -> Iterator[None]:
    """Debian's redis-server where a manifest's scorer keeps its quotas in Redis (components/quota-redis), standing in
    for that Redis container as the scripted LLM stands in for llama-server: the scorer cannot start without it."""
    if not url.startswith("redis://"):
        yield
        return
    port = urlsplit(url).port or 6379
    process, _ = start_redis(LOGS / "quota-redis", port=port)
    report.append(f"- quota store {url}: Debian's redis-server on loopback port {port} in its place")
    try:
        yield
    finally:
        stop_process(process)


def run_profile(
    label: str,
    scorer: ContainerSpec,
    optimizer: ContainerSpec,
    scorer_token: str,
    optimizer_token: str,
    report: list[str],
) -> None:
    report.append(f"\n### {label}\n")
    for init in scorer.init:
        with Container(init) as container:
            code, output = container.run(container.argv, LOGS / f"{init.name}.log")
            if code != 0:
                raise CheckFailed(f"init container {init.name} exited {code}: {output[-2000:]}")
            report.append(f"- init container {init.name}: exit 0 ({' '.join(container.argv)[:80]})")
    with Container(scorer) as s_box, Container(optimizer) as o_box:
        for box in (s_box, o_box):
            found = box.probe(LOGS / f"{box.spec.name}-probe.log")
            report.append(
                f"- {box.spec.name} as {box.spec.user}, root read-only: writes refused on "
                f"{', '.join(p for p, r in found.items() if r != 'writable')}; writable: "
                f"{', '.join(p for p, r in found.items() if r == 'writable')}"
            )
        llm_url = o_box.env["OPTIMIZER_LLM_BASE_URL"]
        scorer_port, optimizer_port = int(s_box.env["SCORER_PORT"]), int(o_box.env["OPTIMIZER_PORT"])
        grace = float(s_box.env.get("SCORER_GRACE_SECONDS", 30))
        with (
            quota_store(s_box.env.get("SCORER_QUOTA_STORE", ""), report),
            serving(s_box, LOGS / f"{scorer.name}.log", scorer_port, report, grace),
        ):
            report.append(f"- {scorer.name} HEALTHCHECK: {healthcheck(s_box, LOGS / f'{scorer.name}-healthcheck.log')}")
            task_id = check_scorer(f"127.0.0.1:{scorer_port}", scorer_token, report)
            llm_port = re.search(r":(\d+)/", llm_url)
            if llm_port is None:
                raise CheckFailed(f"OPTIMIZER_LLM_BASE_URL {llm_url} names no port")
            with (
                ScriptedLLM(port=int(llm_port.group(1))) as llm,
                serving(o_box, LOGS / f"{optimizer.name}.log", optimizer_port, report, 30),
            ):
                report.append(
                    f"- {optimizer.name}: scorer at {o_box.env['OPTIMIZER_SCORER']}, LLM at {llm_url} "
                    "(the scripted LLM), as the manifest says"
                )
                check_optimizer_run(f"127.0.0.1:{optimizer_port}", optimizer_token, task_id, llm, report)
        state = o_box.env["OPTIMIZER_STATE_DIR"]
        if not optimizer.host_path(f"{state}/optimizer.sqlite3").is_file():
            raise CheckFailed(f"no optimizer.sqlite3 on the state volume {state}")
        report.append(f"- the optimizer's runs are on its state volume ({state}/optimizer.sqlite3)")


def check_state_dir_on_the_root(scorer: ContainerSpec, report: list[str]) -> None:
    """The scorer with its state dir on the read-only root must stop at once, naming the flag."""
    spec = ContainerSpec(
        scorer.name + "-bad-state",
        scorer.image,
        scorer.env | {"SCORER_STATE_DIR": "/app/state"},
        scorer.mounts,
        scorer.user,
        scorer.command,
        scorer.args,
        scorer.hosts,
    )
    with Container(spec) as box:
        started = time.monotonic()
        code, output = box.run(box.argv, LOGS / f"{spec.name}.log", timeout=120)
        elapsed = time.monotonic() - started
    message = next((line for line in output.splitlines() if line.startswith("scorer: ")), "")
    if code != 2 or "--state-dir /app/state" not in message:
        raise CheckFailed(f"with SCORER_STATE_DIR=/app/state the scorer exited {code}: {output[-1500:]}")
    report.append(
        f"- scorer with SCORER_STATE_DIR=/app/state (read-only root): exit 2 in {elapsed:.1f} s"
        f" (buildah run included): `{message}`"
    )


def run_all(volumes_root: Path, report: list[str]) -> None:
    """Both profiles, inside the private network namespace."""
    sh(["ip", "link", "set", "lo", "up"])
    pods = kubernetes_pods(volumes_root)
    scorer, optimizer = pods["scorer"], pods["optimizer"]
    tokens = json.loads(optimizer.host_path(optimizer.env["OPTIMIZER_TOKENS_FILE"]).read_text())["tokens"]
    run_token = next(t["token"] for t in tokens if "run" in t["rights"])
    run_profile(
        "Kubernetes (deploy/k8s/overlays/cpu-dev, rendered)",
        scorer,
        optimizer,
        optimizer.env["SCORER_TOKEN"],
        run_token,
        report,
    )
    check_state_dir_on_the_root(scorer, report)
    model, data = scorer.init[0].host_path("/models/clip"), scorer.init[1].host_path("/data")
    services, dotenv = compose_services(volumes_root, model, data)
    run_profile(
        "compose (deploy/compose.yaml, interpolated with a test .env; model and data from the run above)",
        services["scorer"],
        services["optimizer"],
        dotenv["PROMPTCLIMB_SCORER_TOKEN"],
        dotenv["PROMPTCLIMB_OPTIMIZER_TOKEN"],
        report,
    )
