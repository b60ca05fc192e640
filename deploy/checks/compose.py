"""deploy/compose.yaml. Docker Compose itself (`docker-compose config`, the pip-shipped binary) validates it
against the compose-spec schema, interpolates deploy/env.example (so every required variable is listed there),
and resolves services, volumes and networks; its normalized JSON is then checked for what Compose leaves to `up`:
pinned images, Dockerfiles and bind-mounted files that exist, and promptclimb's own needs."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from checks.common import DEPLOY, ROOT, Report, check_env_names, output, pinned, tool

COMPOSE = DEPLOY / "compose.yaml"
ENV_EXAMPLE = DEPLOY / "env.example"
PLACEHOLDER = "placeholder-for-deploy-check"


class ComposeRejected(Exception):
    """docker-compose refused the file; the message is what it said."""


def resolve(path: Path, variables: Mapping[str, str], env_file: Path | None = None) -> dict[str, Any]:
    """The project as Compose resolves it (`config --format json`), interpolated from `variables` and `env_file`
    only: no variable of this process and no deploy/.env reaches it."""
    exe = tool("docker-compose")
    if exe is None:
        raise ComposeRejected("docker-compose not found (make deploy-check pip-installs it)")
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "TMPDIR")} | dict(variables)
    cmd = [
        exe,
        "--project-directory",
        str(DEPLOY),
        "--env-file",
        str(env_file or os.devnull),
        "-f",
        str(path),
        "config",
        "--format",
        "json",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, check=False)
    if proc.returncode != 0:
        raise ComposeRejected(output(proc))
    config: dict[str, Any] = json.loads(proc.stdout)
    return config


def compose_config(path: Path, r: Report) -> dict[str, Any] | None:
    """The project with deploy/env.example's variables, or None (a failure reported) where Compose rejects it."""
    # env.example leaves the secrets empty for the user to fill; Compose's ${VAR:?} refuses empty values.
    placeholders = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and not name.startswith("#") and not value:
            placeholders[name.strip()] = PLACEHOLDER
    try:
        return resolve(path, placeholders, ENV_EXAMPLE)
    except ComposeRejected as err:
        r.check(False, f"docker-compose config {path.name}", str(err))
        return None


def git_ignored(path: Path) -> bool:
    """Local data the user supplies (deploy/.gitignore: models, data, secrets) need not exist in the checkout."""
    # The trailing slash: git matches a directory pattern ("/data/") only against a path said to be a directory.
    proc = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", f"{path}/"], capture_output=True, check=False)
    return proc.returncode == 0


def check_compose(path: Path, r: Report) -> None:
    config = compose_config(path, r)
    if config is None:
        return
    services = config["services"]
    where = path.name
    r.check(
        {"scorer", "optimizer", "llama-server", "prometheus", "grafana"} <= set(services),
        where,
        f"services {sorted(services)}",
    )
    for name, svc in services.items():
        swhere = f"{where} {name}"
        r.check(pinned(svc.get("image", "")), swhere, f"image {svc.get('image', '')!r} is not pinned")
        if "build" in svc:
            dockerfile = Path(svc["build"]["context"]) / svc["build"]["dockerfile"]
            r.check(dockerfile.exists(), swhere, f"no {dockerfile}")
        for volume in svc.get("volumes", []):
            source = Path(volume["source"])
            if volume["type"] == "bind" and source.is_relative_to(ROOT) and not git_ignored(source):
                r.check(source.exists(), swhere, f"bind mount {source.relative_to(ROOT)} does not exist")
        check_env_names(swhere, svc.get("environment", {}), r)
    state = [v for v in services["optimizer"].get("volumes", []) if v["target"] == "/var/lib/promptclimb"]
    r.check([v["type"] for v in state] == ["volume"], f"{where} optimizer", "state dir must be on a named volume")
    r.check(
        "healthcheck" in services["scorer"] and "healthcheck" in services["optimizer"],
        where,
        "scorer and optimizer need healthchecks",
    )
    r.check("SCORER_TASKS" in services["scorer"].get("environment", {}), f"{where} scorer", "SCORER_TASKS must be set")
    check_safe_defaults(where, services, r)


def check_safe_defaults(where: str, services: dict[str, Any], r: Report) -> None:
    """With deploy/env.example's values, every port is published on loopback only (opening one is the user's choice),
    and both gRPC services require tokens."""
    for name, svc in services.items():
        for port in svc.get("ports", []):
            r.check(
                port.get("host_ip") == "127.0.0.1",
                f"{where} {name}",
                f"port {port.get('published')} is published on {port.get('host_ip') or 'every address'}, not loopback",
            )
    for name, prefix in (("scorer", "SCORER"), ("optimizer", "OPTIMIZER")):
        env = services[name].get("environment", {})
        r.check(
            bool(env.get("PROMPTCLIMB_TOKENS") or env.get(f"{prefix}_TOKENS_FILE")),
            f"{where} {name}",
            f"no tokens (PROMPTCLIMB_TOKENS or {prefix}_TOKENS_FILE): every caller would be anonymous",
        )


def check_compose_file(r: Report) -> None:
    r.section("compose (docker-compose config, images, files)")
    check_compose(COMPOSE, r)
