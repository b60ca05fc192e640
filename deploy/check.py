"""Offline checks of deploy/: what `make deploy-check` runs (the checks live in deploy/checks/).

- YAML: yamllint on every file.
- Kubernetes (checks.k8s, checks.topology, checks.reproduce): every overlay rendered by `kubectl kustomize` and
  validated by kubernetes-validate (or deploy/k8s/schemas/ for the prometheus-operator kinds), then what schemas
  cannot see: references between objects, hardening, the scorer, optimizer, firewall and monitors as promptclimb
  needs them, and the reproduce Jobs against the grid.
- Monitoring (checks.monitoring): promtool on the scrape config and alerts, promql-parser for the metric names
  of dashboards and alerts, the dashboard against its generator, the PrometheusRule against alerts.yml.
- Containers (checks.containers, checks.compose): hadolint and the images' own rules on the Dockerfiles, the
  requirement files against pyproject.toml and constraints.txt, .dockerignore, and `docker-compose config` on
  deploy/compose.yaml.

    python deploy/check.py                         # everything; exit 1 on any failure
    python deploy/check.py --write-prometheusrule  # regenerate the PrometheusRule from alerts.yml
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from promptclimb_common.cli_help import ArgumentParser

sys.path.insert(0, str(Path(__file__).resolve().parent))  # deploy/checks, also when loaded by path (tests)

from checks import compose, containers, monitoring, topology, yaml_files
from checks.common import Report, tool
from checks.k8s import render
from checks.monitoring import OPTIMIZER_METRICS, SCORER_METRICS

__all__ = ["OPTIMIZER_METRICS", "SCORER_METRICS", "main", "render", "tool"]

SECTIONS: list[Callable[[Report], None]] = [
    yaml_files.check_yaml_files,
    monitoring.check_prometheusrule_file,
    topology.check_kubernetes,
    monitoring.check_monitoring,
    containers.check_containers,
    compose.check_compose_file,
]


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--write-prometheusrule", action="store_true", help="regenerate the PrometheusRule from alerts.yml and exit"
    )
    args = parser.parse_args(argv)
    if args.write_prometheusrule:
        monitoring.PROMETHEUSRULE.write_text(monitoring.prometheusrule_text())
        print(f"wrote {monitoring.PROMETHEUSRULE}")
        return 0
    r = Report()
    for section in SECTIONS:
        try:
            section(r)
        except Exception as err:  # noqa: BLE001 - report and go on to the next section
            r.check(False, f"{section.__module__}.{section.__name__} crashed", f"{type(err).__name__}: {err}")
    print(f"deploy-check: {r.passed} checks passed, {len(r.failures)} failed")
    return 1 if r.failures else 0


if __name__ == "__main__":
    sys.exit(main())
