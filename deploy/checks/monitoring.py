"""deploy/monitoring: promtool on the scrape config and the alerts (`check config`, `check rules`, `test rules`),
promql-parser for the metric names that dashboards and alerts query (they must be names the services expose), the
dashboard against its generator, and the PrometheusRule of deploy/k8s against alerts.yml."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import promql_parser
import yaml

from checks.common import K8S, MONITORING, ROOT, Report, output, run, tool

PROMETHEUSRULE = K8S / "components" / "prometheus-operator" / "prometheusrule.yaml"
ALERTS = MONITORING / "alerts.yml"

# The metric families the services expose: the contract between the services and the dashboard and alerts.
# tests/deploy/test_prometheus_scrape.py checks them against the live services' /metrics.
SCORER_METRICS = {
    "grpc_server_handled_total": "counter",
    "grpc_server_handling_seconds": "histogram",
    "scorer_templates_scored_total": "counter",
    "scorer_text_cache_hits_total": "counter",
    "scorer_text_cache_misses_total": "counter",
    "scorer_text_cache_bytes": "gauge",
    "scorer_batch_prompts": "histogram",
    "scorer_queue_wait_seconds": "histogram",
    "scorer_model_info": "gauge",
}
OPTIMIZER_METRICS = {
    "grpc_server_handled_total": "counter",
    "grpc_server_handling_seconds": "histogram",
    "optimizer_runs": "gauge",
    "optimizer_run_best_train_accuracy": "gauge",
    "optimizer_llm_calls_total": "counter",
    "optimizer_llm_tokens_total": "counter",
    "optimizer_llm_errors_total": "counter",
    "optimizer_scorer_calls_total": "counter",
}


def series_names(families: dict[str, str]) -> set[str]:
    """Names a query may use: histograms also have _bucket, _sum and _count."""
    names = set()
    for name, kind in families.items():
        names.add(name)
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


KNOWN_SERIES = series_names(SCORER_METRICS) | series_names(OPTIMIZER_METRICS) | {"up"}
OUR_PREFIXES = ("grpc_server_", "scorer_", "optimizer_")

# Grafana's variables, as PromQL parsers see them once Grafana has substituted them.
GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "$scorer_job": "promptclimb-scorer",
    "$optimizer_job": "promptclimb-optimizer",
    "$prompt_usd_per_mtok": "0.5",
    "$completion_usd_per_mtok": "1.5",
}
# The panels the dashboard must have, by a series each queries.
DASHBOARD_SERIES = {
    "grpc_server_handled_total",
    "grpc_server_handling_seconds_bucket",
    "scorer_batch_prompts_bucket",
    "scorer_text_cache_hits_total",
    "optimizer_llm_tokens_total",
    "optimizer_run_best_train_accuracy",
}
REQUIRED_ALERTS = {"PromptclimbScorerDown", "PromptclimbScorerErrorRate", "PromptclimbLLMErrorRate"}


def substitute(expr: str) -> str:
    for var, value in sorted(GRAFANA_VARIABLES.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(var, value)
    return expr


def promql_names(expr: str) -> set[str]:
    """Our metric names in a PromQL expression (Grafana variables substituted), by promql-parser's syntax tree."""
    names: set[str] = set()

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(substitute(expr)), visit)
    return {n for n in names if n.startswith(OUR_PREFIXES) or n == "up"}


def dashboard_queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    def walk(panels: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
        for panel in panels:
            for target in panel.get("targets", []):
                if target.get("expr"):
                    yield panel.get("title", "?"), target["expr"]
            yield from walk(panel.get("panels", []))

    yield from walk(dashboard.get("panels", []))


def panel_ids(panels: list[dict[str, Any]]) -> Iterator[object]:
    for panel in panels:
        yield panel.get("id")
        yield from panel_ids(panel.get("panels", []))


def check_names(where: str, expr: str, r: Report) -> set[str]:
    try:
        names = promql_names(expr)
    except ValueError as err:  # promql-parser's syntax errors
        r.check(False, where, f"PromQL does not parse: {err}")
        return set()
    r.check(names <= KNOWN_SERIES, where, f"unknown metrics {sorted(names - KNOWN_SERIES)}")
    return names


def check_dashboards(promtool: str, r: Report) -> None:
    sys.path.insert(0, str(MONITORING))
    try:
        import make_dashboard
    finally:
        sys.path.pop(0)
    out = make_dashboard.OUT
    r.check(
        out.exists() and out.read_text() == make_dashboard.render(),
        str(out.relative_to(ROOT)),
        "differs from what deploy/monitoring/make_dashboard.py writes: edit the script and run it",
    )
    dashboards = sorted((MONITORING / "grafana").glob("*.json"))
    r.check(bool(dashboards), "dashboards", "no deploy/monitoring/grafana/*.json")
    for path in dashboards:
        check_dashboard(str(path.relative_to(ROOT)), path.read_text(), promtool, r)


def check_dashboard(where: str, text: str, promtool: str, r: Report) -> None:
    try:
        dashboard = json.loads(text)
    except json.JSONDecodeError as err:
        r.check(False, where, f"not JSON: {err}")
        return
    r.check(bool(dashboard.get("uid")) and bool(dashboard.get("title")), where, "needs uid and title")
    ids = list(panel_ids(dashboard.get("panels", [])))
    r.check(len(ids) == len(set(ids)) and None not in ids, where, "panel ids must be unique and set")
    queries = list(dashboard_queries(dashboard))
    used = set().union(*(check_names(f"{where} panel {title!r}", expr, r) for title, expr in queries))
    r.check(used >= DASHBOARD_SERIES, where, f"panels missing for {sorted(DASHBOARD_SERIES - used)}")
    # promtool, Prometheus' own parser, reads each query as a recording rule.
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query{i}", "expr": substitute(expr)} for i, (_, expr) in enumerate(queries)
                ],
            }
        ]
    }
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as tmp:
        yaml.safe_dump(rules, tmp)
    try:
        proc = run([promtool, "check", "rules", tmp.name])
    finally:
        os.unlink(tmp.name)
    r.check(proc.returncode == 0, f"{where} PromQL", output(proc))


def check_monitoring(r: Report) -> None:
    r.section("monitoring (promtool, promql-parser, dashboards)")
    promtool = tool("promtool")
    if not r.check(promtool is not None, "promtool", "not found (make deploy-check installs Debian's prometheus)"):
        return
    assert promtool is not None
    for cmd in (
        ["check", "config", "prometheus.yml"],
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts.test.yml"],
    ):
        proc = run([promtool, *cmd], cwd=MONITORING)
        r.check(proc.returncode == 0, f"promtool {' '.join(cmd)}", output(proc))
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    r.check(
        {"promptclimb-scorer", "promptclimb-optimizer"} <= jobs,
        "prometheus.yml",
        f"jobs {jobs} lack promptclimb-scorer/-optimizer",
    )
    alerts = yaml.safe_load(ALERTS.read_text())
    rules = [rule for group in alerts["groups"] for rule in group["rules"]]
    r.check(
        {rule["alert"] for rule in rules} >= REQUIRED_ALERTS,
        "alerts.yml",
        "needs scorer-down, scorer error-rate and LLM error-rate alerts",
    )
    for rule in rules:
        check_names(f"alert {rule['alert']}", str(rule["expr"]), r)
    check_dashboards(promtool, r)


def prometheusrule_text() -> str:
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "promptclimb", "labels": {"app.kubernetes.io/name": "promptclimb"}},
        "spec": yaml.safe_load(ALERTS.read_text()),
    }
    header = (
        "# Generated from deploy/monitoring/alerts.yml by `python deploy/check.py --write-prometheusrule`;"
        " do not edit.\n"
    )
    return header + yaml.safe_dump(rule, sort_keys=False, width=1000)


def check_prometheusrule_file(r: Report) -> None:
    r.check(
        PROMETHEUSRULE.exists() and PROMETHEUSRULE.read_text() == prometheusrule_text(),
        str(PROMETHEUSRULE.relative_to(ROOT)),
        "out of date with deploy/monitoring/alerts.yml: run python deploy/check.py --write-prometheusrule",
    )
