"""What every check module shares: the repository's paths, the report, tools on PATH, the services' variables."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
MONITORING = DEPLOY / "monitoring"
DOCKER = DEPLOY / "docker"

# The only images compose and the manifests may run, all pinned to a tag (a digest may follow).
PINNED_TAG = re.compile(r"^[\w./-]+(:[\w.+-]+)(@sha256:[0-9a-f]{64})?$")


def pinned(image: str) -> bool:
    return bool(PINNED_TAG.match(image)) and not image.endswith(":latest")


class Report:
    """Counts passed checks and prints each failure as it happens."""

    def __init__(self) -> None:
        self.failures: list[str] = []
        self.passed = 0

    def check(self, ok: bool, what: str, why: str = "") -> bool:
        if ok:
            self.passed += 1
        else:
            self.failures.append(f"{what}: {why}" if why else what)
            print(f"FAIL {what}{': ' + why if why else ''}")
        return ok

    def section(self, title: str) -> None:
        print(f"== {title}")


def tool(name: str) -> str | None:
    """A tool on PATH, or in the venv that runs this script (where the Makefile pip-installs them)."""
    found = shutil.which(name)
    if found:
        return found
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else None


def run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=cwd, check=False)


def output(proc: subprocess.CompletedProcess[str]) -> str:
    """The tail of what a tool said, for a failure line."""
    return (proc.stdout + proc.stderr).strip()[-2000:]


def service_env_names() -> set[str]:
    """Every SCORER_* and OPTIMIZER_* variable the two CLIs read (one per flag)."""
    sys.path.insert(0, str(ROOT))
    from optimizer_service.config import add_serve_args
    from scorer_service.config import build_parser

    scorer = {f"SCORER_{a.dest.upper()}" for a in build_parser()._actions if a.dest != "help"}
    serve = argparse.ArgumentParser()
    add_serve_args(serve)
    optimizer = {f"OPTIMIZER_{a.dest.upper()}" for a in serve._actions if a.dest != "help"}
    # SCORER_TOKEN: not a flag but the variable --scorer-token-env names by default.
    return scorer | optimizer | {"SCORER_TASKS", "SCORER_TOKEN"}


def check_env_names(where: str, names: Iterable[object], r: Report) -> None:
    try:
        known = service_env_names()
    except Exception as err:  # noqa: BLE001 - the services may be mid-edit: report, do not crash the check
        r.check(False, where, f"cannot read the services' flags: {type(err).__name__}: {err}")
        return
    for name in names:
        if str(name).startswith(("SCORER_", "OPTIMIZER_")):
            r.check(
                name in known,
                where,
                f"{name} is no flag of the service"
                " (see python -m scorer_service --help / optimizer_service serve --help)",
            )
