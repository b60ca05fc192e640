"""A real Prometheus scrapes a real scorer and optimizer with the project's scrape config.

deploy/monitoring/prometheus.yml (the compose file's config) is rewritten only
where it must be for a test: targets become loopback ports, the scrape
interval one second. Prometheus is Debian's package (`make deploy-check`
installs it). Assertions go through Prometheus' HTTP API, as a dashboard's
would; the metric families the dashboard and alerts use are checked against
each service's own /metrics exposition.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import grpc
import pytest
import yaml

from promptclimb.optimizer.v1 import optimizer_pb2, optimizer_pb2_grpc
from promptclimb.scorer.v1 import scorer_pb2, scorer_pb2_grpc
from promptclimb_common.processes import as_child
from tests.conftest import prerequisite
from tests.deploy import load_check
from tests.procs import REPO, held_port, scorer_service, start_service, stop_process, wait_until

MONITORING = REPO / "deploy" / "monitoring"
PROMETHEUS = shutil.which("prometheus")
SCORER_METRICS = load_check().SCORER_METRICS
OPTIMIZER_METRICS = load_check().OPTIMIZER_METRICS

pytestmark = prerequisite(
    PROMETHEUS is None, why="no prometheus binary: `make deploy-check` installs Debian's prometheus"
)


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as reply:
        body: dict = json.load(reply)
    return body


def query(api: str, promql: str) -> list[dict]:
    body = get_json(f"{api}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
    assert body["status"] == "success", body
    result: list[dict] = body["data"]["result"]
    return result


def declared_families(metrics_url: str) -> dict[str, str]:
    """`# TYPE name kind` lines of a /metrics page: families exist even before their first sample."""
    with urllib.request.urlopen(metrics_url, timeout=5) as reply:
        text = reply.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            out[name] = kind
    return out


def write_config(tmp: Path, scorer_metrics: int, optimizer_metrics: int, prometheus_port: int) -> Path:
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = "1s"
    config["global"]["scrape_timeout"] = "1s"
    config["global"]["evaluation_interval"] = "1s"
    loopback = {
        "promptclimb-scorer": f"127.0.0.1:{scorer_metrics}",
        "promptclimb-optimizer": f"127.0.0.1:{optimizer_metrics}",
        "prometheus": f"127.0.0.1:{prometheus_port}",
    }
    for job in config["scrape_configs"]:
        assert job["job_name"] in loopback, f"unexpected job {job['job_name']} in prometheus.yml"
        for static in job["static_configs"]:
            static["targets"] = [loopback[job["job_name"]]]
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    for rule_file in config.get("rule_files", []):
        shutil.copy(MONITORING / rule_file, tmp / rule_file)
    return path


@pytest.fixture(scope="module")
def services(tiny_clip_dir, image_task_dir, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("services")
    scorer = scorer_service(
        tiny_clip_dir, {"shapes": image_task_dir}, tmp_path / "cache", tmp_path / "scorer.log", metrics=True
    )
    try:
        optimizer = start_service(
            [
                "optimizer_service",
                "serve",
                "--state-dir",
                str(tmp_path / "state"),
                "--scorer",
                scorer.address,
                # No run is started, so the LLM is never called.
                "--llm-base-url",
                "http://127.0.0.1:9/v1",
                "--llm-model",
                "none",
            ],
            tmp_path / "optimizer.log",
            env={"OPENAI_API_KEY": "placeholder-for-an-unused-llm"},
            metrics=True,
            timeout=60,
        )
    except BaseException:
        stop_process(scorer.process)
        raise
    try:
        # Traffic, so that labelled series exist.
        with grpc.insecure_channel(scorer.address) as channel:
            scorer_pb2_grpc.ScorerStub(channel).Score(
                scorer_pb2.ScoreRequest(task_id="shapes", templates=["a photo of a {}."]), timeout=30
            )
        # A refusal is counted all the same.
        with grpc.insecure_channel(optimizer.address) as channel, contextlib.suppress(grpc.RpcError):
            optimizer_pb2_grpc.OptimizerStub(channel).ListRuns(optimizer_pb2.ListRunsRequest(), timeout=10)
        yield {"scorer_metrics": scorer.ports.metrics, "optimizer_metrics": optimizer.ports.metrics}
    finally:
        stop_process(optimizer.process)
        stop_process(scorer.process)


@pytest.fixture
def prometheus(services, tmp_path):
    assert PROMETHEUS is not None  # pytestmark skips the module without it
    log_path = tmp_path / "prometheus.log"
    # Prometheus scrapes itself, so its config names its port before it starts: a held one, until it listens (see
    # held_port).
    with held_port() as port:
        config = write_config(tmp_path, services["scorer_metrics"], services["optimizer_metrics"], port)
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                **as_child(
                    [
                        PROMETHEUS,
                        f"--config.file={config}",
                        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                        f"--web.listen-address=127.0.0.1:{port}",
                        "--log.level=warn",
                    ]
                ),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        api = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            assert process.poll() is None, log_path.read_text()
            try:
                with urllib.request.urlopen(f"{api}/-/ready", timeout=1):
                    return True
            except OSError:
                return False

        try:
            wait_until(ready, 30, "prometheus ready")
        except BaseException:
            stop_process(process, timeout=15)
            raise
    try:
        yield api
    finally:
        stop_process(process, timeout=15)


def test_prometheus_scrapes_scorer_and_optimizer(services, prometheus):
    def targets_up():
        active = get_json(f"{prometheus}/api/v1/targets")["data"]["activeTargets"]
        health = {t["labels"]["job"]: t["health"] for t in active}
        return (
            health if health.get("promptclimb-scorer") == "up" and health.get("promptclimb-optimizer") == "up" else None
        )

    wait_until(targets_up, what="both promptclimb targets up")

    model = wait_until(
        lambda: query(prometheus, 'scorer_model_info{job="promptclimb-scorer"}'), what="scorer_model_info"
    )
    assert model[0]["metric"]["device"] == "cpu"
    scored = wait_until(
        lambda: query(prometheus, 'scorer_templates_scored_total{job="promptclimb-scorer", task="shapes"}'),
        what="scorer_templates_scored_total",
    )
    assert float(scored[0]["value"][1]) >= 1
    calls = wait_until(
        lambda: query(prometheus, 'grpc_server_handled_total{job="promptclimb-optimizer", grpc_method="ListRuns"}'),
        what="the optimizer's grpc_server_handled_total",
    )
    assert calls[0]["metric"]["grpc_service"] == "promptclimb.optimizer.v1.Optimizer"
    assert (
        wait_until(lambda: query(prometheus, 'optimizer_runs{job="promptclimb-optimizer"}'), what="optimizer_runs")
        is not None
    )

    # The alert rules load and evaluate against live data, and with both targets
    # up the "down" alerts settle to inactive (absent() may fire before the first scrape).
    def down_alerts_settled():
        groups = get_json(f"{prometheus}/api/v1/rules")["data"]["groups"]
        rules = {r["name"]: r for g in groups for r in g["rules"]}
        if not rules or any(r["health"] != "ok" for r in rules.values()):
            return None
        down = [rules[name]["state"] for name in ("PromptclimbScorerDown", "PromptclimbOptimizerDown")]
        return rules if down == ["inactive", "inactive"] else None

    rules = wait_until(down_alerts_settled, what="alert rules evaluated, no target down")
    assert {"PromptclimbScorerErrorRate", "PromptclimbLLMErrorRate"} <= set(rules)


def test_services_declare_every_metric_the_dashboard_and_alerts_use(services):
    for port, wanted, service in (
        (services["scorer_metrics"], SCORER_METRICS, "scorer"),
        (services["optimizer_metrics"], OPTIMIZER_METRICS, "optimizer"),
    ):
        declared = declared_families(f"http://127.0.0.1:{port}/metrics")
        missing = {name: kind for name, kind in wanted.items() if declared.get(name) != kind}
        assert not missing, (
            f"the {service} does not expose {missing} (deploy/check.py lists what dashboards and alerts use)"
        )
