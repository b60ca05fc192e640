"""deploy/check.py finds what it is there to find: each test breaks one rendered object."""

from __future__ import annotations

import copy

import pytest

from tests.conftest import prerequisite
from tests.deploy import REPO, load_check

check = load_check()
kubectl = check.tool("kubectl")
needs_kubectl = prerequisite(kubectl is None, why="no kubectl: `make deploy-check` installs it")


@pytest.fixture(scope="module")
def renders() -> dict[str, list[dict]]:
    return {name: check.render(REPO / "deploy" / "k8s" / "overlays" / name, kubectl) for name in ("cpu-dev", "gpu")}


def find(objs: list[dict], kind: str, name: str) -> dict:
    return next(o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name)


def failures(name: str, objs: list[dict]) -> list[str]:
    report = check.Report()
    check.check_references(name, objs, report)
    return report.failures


@needs_kubectl
def test_the_committed_overlays_pass(renders):
    customs = check.custom_schemas()
    for name, objs in renders.items():
        assert failures(name, objs) == []
        assert [check.validate_schema(o, customs) for o in objs] == [None] * len(objs)


@needs_kubectl
def test_schema_errors_are_caught(renders):
    customs = check.custom_schemas()
    objs = copy.deepcopy(renders["gpu"])
    scorer = find(objs, "Deployment", "scorer")
    scorer["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpcc"] = {"port": 1}  # a typo
    assert "grpcc" in check.validate_schema(scorer, customs)
    monitor = find(objs, "ServiceMonitor", "scorer")
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    assert "intervall" in check.validate_schema(monitor, customs)
    unknown = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    assert "deploy/k8s/schemas" in check.validate_schema(unknown, customs)


@needs_kubectl
@pytest.mark.parametrize("breakage, expected", [
    (lambda o: find(o, "NetworkPolicy", "scorer")["spec"]["ingress"][0]["ports"].append({"protocol": "TCP", "port": 22}), "opens ports"),
    (lambda o: find(o, "NetworkPolicy", "scorer")["spec"]["ingress"][0]["from"].append({"ipBlock": {"cidr": "0.0.0.0/0"}}), "ipBlock"),
    (lambda o: find(o, "NetworkPolicy", "scorer")["spec"].update(egress=[{}]), "no egress but DNS"),
    (lambda o: find(o, "NetworkPolicy", "scorer")["spec"]["ingress"][0]["from"][1].pop("podSelector"), "scorer-client pod label"),
    (lambda o: find(o, "Deployment", "scorer")["spec"]["template"]["spec"]["containers"][0].update(image="promptclimb/scorer:latest"),
     "not pinned"),
    (lambda o: find(o, "Deployment", "scorer")["spec"]["template"]["spec"]["containers"][0]["securityContext"].update(
        readOnlyRootFilesystem=False), "readOnlyRootFilesystem"),
    (lambda o: find(o, "Deployment", "scorer")["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"].pop("nvidia.com/gpu"),
     "nvidia.com/gpu"),
    (lambda o: find(o, "Service", "scorer")["spec"]["ports"][0].update(targetPort="grcp"), "targetPort"),
    (lambda o: find(o, "ServiceMonitor", "scorer")["spec"]["selector"]["matchLabels"].pop("promptclimb.io/metrics"), "exactly one Service"),
    (lambda o: find(o, "StatefulSet", "optimizer")["spec"].update(replicas=2), "one replica"),
    (lambda o: find(o, "StatefulSet", "optimizer")["spec"]["template"]["metadata"]["labels"].pop("promptclimb.io/scorer-client"),
     "scorer-client label"),
    (lambda o: find(o, "PrometheusRule", "promptclimb")["spec"]["groups"][0]["rules"].pop(), "alerts.yml"),
    (lambda o: find(o, "ConfigMap", next(c["metadata"]["name"] for c in o if c["metadata"]["name"].startswith("scorer-config")))["data"].update(
        SCORER_BATCH_SIZE="8"), "no flag of the service"),
])
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
    expr = ('sum by (grpc_service) (rate(grpc_server_handled_total{job=~"$scorer_job", grpc_code!="OK"}[$__rate_interval]))'
            ' / histogram_quantile(0.9, scorer_queue_wait_seconds_bucket) + up{scorer_job="x"}')
    assert check.promql_names(expr) == {"grpc_server_handled_total", "scorer_queue_wait_seconds_bucket", "up"}


def test_dockerignore_rules():
    patterns = ["*", "!pyproject.toml", "!deploy/docker/", "**/__pycache__"]
    assert check.dockerignore_allows("pyproject.toml", patterns)
    assert check.dockerignore_allows("deploy/docker/healthcheck.py", patterns)
    assert not check.dockerignore_allows("deploy/compose.yaml", patterns)
    assert not check.dockerignore_allows(".venv", patterns)


def reproduce_failures(objs: list[dict]) -> list[str]:
    report = check.Report()
    check.check_reproduce_jobs(objs, report)
    return report.failures


@needs_kubectl
@pytest.mark.parametrize("breakage, expected", [
    (lambda o: find(o, "Job", "reproduce-cells")["spec"].update(completions=65), "but grid.toml has 66 cells"),
    (lambda o: find(o, "Job", "reproduce-cells")["spec"].pop("completionMode"), "completionMode must be Indexed"),
    (lambda o: find(o, "Job", "reproduce-cells")["spec"]["template"]["spec"]["containers"][0].update(
        args=["--config", "/etc/promptclimb/grid.toml", "--cell", "0"]), "job-completion-index"),
    (lambda o: find(o, "Job", "reproduce-gather")["spec"].update(suspend=False), "suspended until the cells are done"),
    (lambda o: find(o, "PersistentVolumeClaim", "reproduce-results")["spec"].update(accessModes=["ReadWriteOnce"]),
     "ReadWriteMany volume shared by both Jobs"),
])
def test_reproduce_job_breakages_are_caught(breakage, expected):
    objs = check.render(REPO / "deploy" / "k8s" / "reproduce", kubectl)
    assert reproduce_failures(objs) == []
    broken = copy.deepcopy(objs)
    breakage(broken)
    assert any(expected in f for f in reproduce_failures(broken)), reproduce_failures(broken)
