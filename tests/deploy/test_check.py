"""deploy/check.py finds what it is there to find: each test breaks one rendered object or one file.

Where a maintained tool does a check (hadolint, docker-compose, yamllint, promql-parser, docker's .dockerignore
matcher), the test breaks the file the way the hand-written check it replaced was there to catch, and shows that
the tool, as deploy/checks runs it, reports it."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import prerequisite
from tests.deploy import REPO, load_check

check = load_check()  # puts deploy/ on sys.path: deploy/checks imports as `checks`
from checks import common, compose, containers, k8s, monitoring, reproduce, topology, yaml_files  # noqa: E402

kubectl = check.tool("kubectl")
needs_kubectl = prerequisite(kubectl is None, why="no kubectl: `make deploy-check` installs it")
DOCKER = REPO / "deploy" / "docker"


@pytest.fixture(scope="module")
def renders() -> dict[str, list[dict]]:
    return {name: check.render(REPO / "deploy" / "k8s" / "overlays" / name, kubectl) for name in ("cpu-dev", "gpu")}


def find(objs: list[dict], kind: str, name: str) -> dict:
    return next(o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name)


def failures(name: str, objs: list[dict]) -> list[str]:
    report = common.Report()
    topology.check_references(name, objs, report)
    return report.failures


@needs_kubectl
def test_the_committed_overlays_pass(renders):
    customs = k8s.custom_schemas()
    for name, objs in renders.items():
        assert failures(name, objs) == []
        assert [k8s.validate_schema(o, customs) for o in objs] == [None] * len(objs)


@needs_kubectl
def test_schema_errors_are_caught(renders):
    customs = k8s.custom_schemas()
    objs = copy.deepcopy(renders["gpu"])
    scorer = find(objs, "Deployment", "scorer")
    scorer["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpcc"] = {"port": 1}  # a typo
    assert "grpcc" in str(k8s.validate_schema(scorer, customs))
    monitor = find(objs, "ServiceMonitor", "scorer")
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    assert "intervall" in str(k8s.validate_schema(monitor, customs))
    unknown = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    assert "deploy/k8s/schemas" in str(k8s.validate_schema(unknown, customs))


def scorer_config(objs: list[dict]) -> dict:
    return next(o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("scorer-config"))


def scorer_container(objs: list[dict]) -> Any:
    return find(objs, "Deployment", "scorer")["spec"]["template"]["spec"]["containers"][0]


def firewall(objs: list[dict]) -> Any:
    return find(objs, "NetworkPolicy", "scorer")["spec"]


def optimizer(objs: list[dict]) -> dict:
    return find(objs, "StatefulSet", "optimizer")


@needs_kubectl
@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        (lambda o: firewall(o)["ingress"][0]["ports"].append({"protocol": "TCP", "port": 22}), "opens ports"),
        (lambda o: firewall(o)["ingress"][0]["from"].append({"ipBlock": {"cidr": "0.0.0.0/0"}}), "ipBlock"),
        (lambda o: firewall(o).update(egress=[{}]), "no egress but DNS"),
        (lambda o: firewall(o)["ingress"][0]["from"][1].pop("podSelector"), "scorer-client pod label"),
        (lambda o: scorer_container(o).update(image="promptclimb/scorer:latest"), "not pinned"),
        (
            lambda o: scorer_container(o)["securityContext"].update(readOnlyRootFilesystem=False),
            "readOnlyRootFilesystem",
        ),
        (lambda o: scorer_container(o)["resources"]["limits"].pop("nvidia.com/gpu"), "nvidia.com/gpu"),
        (lambda o: find(o, "Service", "scorer")["spec"]["ports"][0].update(targetPort="grcp"), "targetPort"),
        (
            lambda o: find(o, "ServiceMonitor", "scorer")["spec"]["selector"]["matchLabels"].pop(
                "promptclimb.io/metrics"
            ),
            "exactly one Service",
        ),
        (lambda o: optimizer(o)["spec"].update(replicas=2), "one replica"),
        (
            lambda o: optimizer(o)["spec"]["template"]["metadata"]["labels"].pop("promptclimb.io/scorer-client"),
            "scorer-client label",
        ),
        (lambda o: find(o, "PrometheusRule", "promptclimb")["spec"]["groups"][0]["rules"].pop(), "alerts.yml"),
        (lambda o: scorer_config(o)["data"].update(SCORER_BATCH_SIZE="8"), "no flag of the service"),
    ],
)
def test_reference_checks_catch_breakage(renders, breakage, expected):
    objs = copy.deepcopy(renders["gpu"])
    breakage(objs)
    found = failures("gpu", objs)
    assert any(expected in f for f in found), found


@needs_kubectl
def test_tls_overlay_uses_exec_probes_and_plaintext_uses_native_grpc(renders):
    dev = find(renders["cpu-dev"], "Deployment", "scorer")["spec"]["template"]["spec"]["containers"][0]
    gpu = find(renders["gpu"], "Deployment", "scorer")["spec"]["template"]["spec"]["containers"][0]
    assert dev["readinessProbe"]["grpc"] == {"port": 50051}
    assert gpu["readinessProbe"]["exec"]["command"] == ["python", "/app/healthcheck.py"]


def test_promql_names_skip_labels_variables_and_functions():
    expr = (
        'sum by (grpc_service) (rate(grpc_server_handled_total{job=~"$scorer_job", grpc_code!="OK"}'
        '[$__rate_interval])) / histogram_quantile(0.9, scorer_queue_wait_seconds_bucket) + up{scorer_job="x"}'
    )
    assert monitoring.promql_names(expr) == {"grpc_server_handled_total", "scorer_queue_wait_seconds_bucket", "up"}


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("rate(scorer_templates_scored_totl[5m])", "unknown metrics ['scorer_templates_scored_totl']"),
        ("rate(scorer_templates_scored_total[5m]", "does not parse"),
    ],
)
def test_promql_unknown_names_and_syntax_errors_are_caught(expr, expected):
    report = common.Report()
    monitoring.check_names("panel", expr, report)
    assert any(expected in f for f in report.failures), report.failures


def test_dockerignore_rules():
    patterns = ["*", "!pyproject.toml", "!deploy/docker/", "!scorer_service/", "**/__pycache__"]
    assert containers.dockerignore_allows("pyproject.toml", patterns)
    assert containers.dockerignore_allows("deploy/docker/healthcheck.py", patterns)
    assert not containers.dockerignore_allows("deploy/compose.yaml", patterns)
    assert not containers.dockerignore_allows(".venv", patterns)
    assert containers.dockerignore_allows("scorer_service/server.py", patterns)
    assert not containers.dockerignore_allows("scorer_service/__pycache__/server.cpython-311.pyc", patterns)


def test_requirement_pins_are_read_by_packaging(tmp_path):
    path = tmp_path / "requirements.txt"
    path.write_text("# comment\nGrpcio_Tools == 1.85.1  # why\nopenai==3.57.0 ; python_version >= '3.11'\ntqdm\n")
    assert containers.requirement_file_pins(path) == {"grpcio-tools": "1.85.1", "openai": "3.57.0", "tqdm": ""}


def reproduce_failures(objs: list[dict]) -> list[str]:
    report = common.Report()
    reproduce.check_reproduce_jobs(objs, report)
    return report.failures


@needs_kubectl
@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        (lambda o: find(o, "Job", "reproduce-cells")["spec"].update(completions=65), "but grid.toml has 66 cells"),
        (lambda o: find(o, "Job", "reproduce-cells")["spec"].pop("completionMode"), "completionMode must be Indexed"),
        (
            lambda o: find(o, "Job", "reproduce-cells")["spec"]["template"]["spec"]["containers"][0].update(
                args=["--config", "/etc/promptclimb/grid.toml", "--cell", "0"]
            ),
            "job-completion-index",
        ),
        (
            lambda o: find(o, "Job", "reproduce-gather")["spec"].update(suspend=False),
            "suspended until the cells are done",
        ),
        (
            lambda o: find(o, "PersistentVolumeClaim", "reproduce-results")["spec"].update(
                accessModes=["ReadWriteOnce"]
            ),
            "ReadWriteMany volume shared by both Jobs",
        ),
    ],
)
def test_reproduce_job_breakages_are_caught(breakage, expected):
    objs = check.render(REPO / "deploy" / "k8s" / "reproduce", kubectl)
    assert reproduce_failures(objs) == []
    broken = copy.deepcopy(objs)
    breakage(broken)
    assert any(expected in f for f in reproduce_failures(broken)), reproduce_failures(broken)


# ---------------------------------------------------------------- files broken on disk, checked by the tools


def broken_copy(source: Path, tmp_path: Path, old: str, new: str) -> Path:
    text = source.read_text()
    assert old in text, f"{old!r} is no longer in {source.name}: update the test"
    path = tmp_path / source.name
    path.write_text(text.replace(old, new, 1))
    return path


def needs(name: str) -> pytest.MarkDecorator:
    return prerequisite(common.tool(name) is None, why=f"no {name}: `make deploy-check` pip-installs it")


needs_hadolint, needs_compose, needs_yamllint = needs("hadolint"), needs("docker-compose"), needs("yamllint")


@needs_hadolint
@pytest.mark.parametrize(
    ("dockerfile", "service"),
    [
        ("scorer.Dockerfile", "scorer_service"),
        ("optimizer.Dockerfile", "optimizer_service"),
        ("reproduce.Dockerfile", None),
    ],
)
def test_the_committed_dockerfiles_pass(dockerfile, service):
    report = common.Report()
    containers.check_dockerfile(DOCKER / dockerfile, service, report)
    assert report.failures == []


@needs_hadolint
@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        # What hadolint now finds in place of the hand-written checks:
        ("USER 10001:10001", "USER root", "DL3002"),  # last USER root
        ('ENTRYPOINT ["python", "-m", "scorer_service"]', "ENTRYPOINT python -m scorer_service", "DL3025"),
        ("WORKDIR /app\nRUN mkdir -p /models/clip", "RUN cd /app && mkdir -p /models/clip", "DL3003"),
        ("FROM ${PYTORCH_IMAGE} AS runtime", "FROM python:latest AS runtime", "DL3007"),
        # What dockerfile-parse reads for the checks hadolint cannot do:
        (
            "ARG PYTORCH_IMAGE=pytorch/pytorch:2.13.0-cuda13.0-cudnn9-runtime",
            "ARG PYTORCH_IMAGE=pytorch/pytorch:latest",
            "is not pinned",
        ),
        ("pytorch/pytorch:2.13.0-", "pytorch/pytorch:2.12.0-", "base has torch 2.12.0, constraints.txt pins 2.13.0"),
        ("ARG TORCH_VERSION=2.13.0", "ARG TORCH_VERSION=2.12.0", "ARG TORCH_VERSION must equal the torch pin"),
        ("USER 10001:10001\n", "", "final stage must switch to a non-root USER"),
        ('CMD ["python", "/app/healthcheck.py"]', 'CMD ["python", "/app/probe.py"]', "HEALTHCHECK must use"),
        ('"-m", "scorer_service"]', '"-m", "optimizer_service"]', "ENTRYPOINT must be python -m scorer_service"),
        (
            "COPY deploy/docker/healthcheck.py",
            "COPY tests /app/tests\nCOPY deploy/docker/healthcheck.py",
            "COPY tests: excluded by .dockerignore",
        ),
        ("    HF_HUB_OFFLINE=1 \\\n", "", "HF_HUB_OFFLINE=1 must be set"),
        (
            "    SCORER_PORT=50051 \\\n",
            "    SCORER_PORT=50051 \\\n    SCORER_BATCH_SIZE=8 \\\n",
            "no flag of the service",
        ),
    ],
)
def test_dockerfile_breakages_are_caught(tmp_path, old, new, expected):
    path = broken_copy(DOCKER / "scorer.Dockerfile", tmp_path, old, new)
    report = common.Report()
    containers.check_dockerfile(path, "scorer_service", report)
    assert any(expected in f for f in report.failures), report.failures


@needs_compose
def test_the_committed_compose_file_passes():
    report = common.Report()
    compose.check_compose(compose.COMPOSE, report)
    assert report.failures == []


@needs_compose
@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        # What docker-compose now finds in place of the hand-written checks:
        (
            "- scorer-cache:/var/cache/promptclimb",
            "- scorer-cach:/var/cache/promptclimb",
            "undefined volume scorer-cach",
        ),
        # and what no check found before: the compose-spec schema, interpolation against env.example.
        ("stop_grace_period: 45s", "stop_grace_periodd: 45s", "stop_grace_periodd"),
        ("condition: service_healthy", "condition: service_healthyy", "condition value must be one of"),
        ('SCORER_GRACE_SECONDS: "30"', "SCORER_GRACE_SECONDS: ${PROMPTCLIMB_GRACE:?set it}", "PROMPTCLIMB_GRACE"),
        # What is still checked on Compose's resolved project:
        ("image: prom/prometheus:v3.7.3", "image: prom/prometheus:latest", "is not pinned"),
        (
            "dockerfile: deploy/docker/scorer.Dockerfile",
            "dockerfile: deploy/docker/scorer.Dockerfil",
            "scorer.Dockerfil",
        ),
        (
            "./monitoring/alerts.yml:",
            "./monitoring/alert.yml:",
            "bind mount deploy/monitoring/alert.yml does not exist",
        ),
        (
            "- optimizer-state:/var/lib/promptclimb",
            "- ./state:/var/lib/promptclimb",
            "state dir must be on a named volume",
        ),
        ("SCORER_SHOTS:", "SCORER_SHOTZ:", "SCORER_SHOTZ is no flag"),
    ],
)
def test_compose_breakages_are_caught(tmp_path, old, new, expected):
    path = broken_copy(compose.COMPOSE, tmp_path, old, new)
    report = common.Report()
    compose.check_compose(path, report)
    assert any(expected in f for f in report.failures), report.failures


@needs_yamllint
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: 1\nb: 2\na: 3\n", "key-duplicates"),  # PyYAML keeps the last a
        ("enabled: yes\n", "truthy"),
        ("a: [1, 2\n", "syntax"),
    ],
)
def test_yamllint_catches_what_pyyaml_lets_through(tmp_path, text, expected):
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    report = common.Report()
    yaml_files.check_yaml([path], report)
    assert any(expected in f for f in report.failures), report.failures
