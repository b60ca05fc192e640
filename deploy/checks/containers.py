"""The images' sources: Dockerfiles, their requirement files, and the build context's .dockerignore.

hadolint lints every Dockerfile (its rules: tagged, non-latest base images; last USER not root; JSON-form
ENTRYPOINT; no `cd` in RUN; ...). dockerfile-parse reads them for what hadolint does not know: bases named by an
ARG (hadolint does not resolve them) pinned, the final stage's USER, HEALTHCHECK and ENTRYPOINT, and the torch of
the scorer's base image against constraints.txt. docker's own PatternMatcher applies .dockerignore.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from docker.utils.build import PatternMatcher
from dockerfile_parse import DockerfileParser
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from checks.common import DEPLOY, DOCKER, ROOT, Report, check_env_names, output, pinned, run, tool

HADOLINT_CONFIG = DEPLOY / ".hadolint.yaml"
SERVICES = {"scorer.Dockerfile": "scorer_service", "optimizer.Dockerfile": "optimizer_service"}
# What the optimizer image must not install: the scorer's model stack, its quota store's client, matplotlib.
SCORER_ONLY = ("torch", "transformers", "safetensors", "pillow", "numpy", "matplotlib", "redis")
# What it leaves out of the optimizer's requirements: the plots of `optimizer_service run`.
OPTIMIZER_IMAGE_LEAVES_OUT = ("matplotlib",)
PYTORCH_TAG = re.compile(r"^pytorch/pytorch:(\d+\.\d+\.\d+)-cuda[\d.]+-cudnn\d+-runtime$")


def pins(requirements: list[str]) -> dict[str, str]:
    """name -> exact version ('' when not pinned with ==), by packaging's parser."""
    out: dict[str, str] = {}
    for line in requirements:
        req = Requirement(line)
        exact = [s.version for s in req.specifier if s.operator == "=="]
        out[canonicalize_name(req.name)] = exact[0] if exact else ""
    return out


def requirement_file_pins(path: Path) -> dict[str, str]:
    lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    return pins([line for line in lines if line])


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def constraint_pins() -> dict[str, str]:
    """constraints.txt: the exact version of every requirement of pyproject.toml (tests/test_package.py checks it)."""
    return requirement_file_pins(ROOT / "constraints.txt")


def requirement_names(*extras: str) -> set[str]:
    """The names the base install and these extras of pyproject.toml require (not the extras' own references)."""
    project = pyproject()["project"]
    lines = [*project["dependencies"], *(d for e in extras for d in project["optional-dependencies"][e])]
    return {str(canonicalize_name(Requirement(d).name)) for d in lines} - {project["name"]}


def check_requirements(r: Report) -> None:
    """The optimizer image's requirements are pyproject.toml's [optimizer] ones at constraints.txt's pins, and none
    of the scorer's stack."""
    project_pins = constraint_pins()
    wanted = requirement_names("serving", "optimizer")
    opt = requirement_file_pins(DOCKER / "optimizer-requirements.txt")
    for name, version in opt.items():
        where = f"optimizer-requirements.txt {name}"
        r.check(name in wanted, where, "not a base, [serving] or [optimizer] requirement in pyproject.toml")
        r.check(
            project_pins.get(name) == version,
            where,
            f"pinned {version or 'nothing'}, constraints.txt pins {project_pins.get(name)}",
        )
    for heavy in SCORER_ONLY:
        r.check(heavy not in opt, "optimizer-requirements.txt", f"must not install {heavy}")
    missing = wanted - set(opt) - set(OPTIMIZER_IMAGE_LEAVES_OUT)
    r.check(
        not missing,
        "optimizer-requirements.txt",
        f"[optimizer] requirements neither listed nor left out: {sorted(missing)}",
    )
    data = requirement_file_pins(DOCKER / "optimizer-data-requirements.txt")
    makefile_pin = re.search(r"^CLIP_BENCHMARK := (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    baselines = (ROOT / "optimizer_service" / "baselines.py").read_text()
    baselines_pin = re.search(r'^CLIP_BENCHMARK_PIN = "([^"]+)"', baselines, re.M)
    r.check(
        {f"{name}=={version}" for name, version in data.items()}
        == {makefile_pin and makefile_pin.group(1), baselines_pin and baselines_pin.group(1)},
        "optimizer-data-requirements.txt",
        "clip-benchmark must be pinned as in the Makefile and optimizer_service/baselines.py",
    )
    build = requirement_file_pins(DOCKER / "build-requirements.txt")
    build_system = pins(pyproject()["build-system"]["requires"])
    for name in ("grpcio-tools", "setuptools"):
        r.check(
            build.get(name) == build_system.get(name), "build-requirements.txt", f"{name} must match [build-system]"
        )


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def dockerignore_allows(path: str, patterns: list[str]) -> bool:
    """Whether a path of the build context reaches the build (Docker's rule: the last matching pattern wins)."""
    # types-docker declares a PathLike; the matcher runs fnmatch on the string, as .dockerignore's lines are.
    return not PatternMatcher(patterns).matches(path)  # type: ignore[arg-type]


def hadolint(path: Path, r: Report) -> None:
    exe = tool("hadolint")
    if r.check(exe is not None, "hadolint", "not found (make deploy-check pip-installs it)"):
        assert exe is not None
        proc = run([exe, "--no-color", "--config", str(HADOLINT_CONFIG), str(path)])
        r.check(proc.returncode == 0, f"hadolint {path.name}", output(proc))


def instructions(parser: DockerfileParser, name: str) -> list[str]:
    return [i["value"] for i in parser.structure if i["instruction"] == name]


def exec_form(value: str) -> list[str] | None:
    """An instruction's JSON (exec) form, None for the shell form (hadolint's DL3025 names that)."""
    try:
        words = json.loads(value)
    except json.JSONDecodeError:
        return None
    return words if isinstance(words, list) else None


def check_dockerfile(path: Path, service: str | None, r: Report) -> None:
    """hadolint, then what it cannot see. service: the module the image's ENTRYPOINT runs (None: not checked)."""
    hadolint(path, r)
    where = path.name
    parser = DockerfileParser(path=str(path), env_replace=False)
    parents = parser.parent_images  # ARGs resolved to their defaults
    stages = {parts[-1] for parts in (f.split() for f in instructions(parser, "FROM")) if len(parts) >= 3}
    for image in parents:
        r.check(image in stages or pinned(image), where, f"base {image!r} is not pinned")
    if service is None:
        return
    r.check(len(parents) >= 2, where, "must be multi-stage")
    froms = [n for n, i in enumerate(parser.structure) if i["instruction"] == "FROM"]
    tail = parser.structure[froms[-1] :]
    users = [i["value"] for i in tail if i["instruction"] == "USER"]
    r.check(bool(users), where, "final stage must switch to a non-root USER")
    r.check(
        any(i["instruction"] == "HEALTHCHECK" and "/app/healthcheck.py" in i["value"] for i in tail),
        where,
        "HEALTHCHECK must use /app/healthcheck.py",
    )
    entry = [i["value"] for i in tail if i["instruction"] == "ENTRYPOINT"]
    r.check(
        bool(entry) and exec_form(entry[-1]) == ["python", "-m", service],
        where,
        f"ENTRYPOINT must be python -m {service}",
    )
    ignore = dockerignore_patterns()
    for copy in instructions(parser, "COPY"):
        words = copy.split()
        if any(w.startswith("--from") for w in words):
            continue
        for src in [w for w in words if not w.startswith("--")][:-1]:
            r.check(dockerignore_allows(src.rstrip("/"), ignore), where, f"COPY {src}: excluded by .dockerignore")
            r.check((ROOT / src).exists(), where, f"COPY {src}: no such path")
    final_env = parser.envs  # the last stage's
    check_env_names(where, final_env, r)
    if service == "scorer_service":
        check_scorer_base(where, parser, final_env, r)


def check_scorer_base(where: str, parser: DockerfileParser, final_env: Mapping[str, str], r: Report) -> None:
    """The scorer runs on a pytorch/pytorch CUDA image whose torch is constraints.txt's pin."""
    torch = constraint_pins().get("torch")
    r.check(final_env.get("HF_HUB_OFFLINE") == "1", where, "HF_HUB_OFFLINE=1 must be set in the final stage")
    base = parser.parent_images[-1]
    m = PYTORCH_TAG.match(base)
    if r.check(bool(m), where, f"PYTORCH_IMAGE {base!r} must be a pytorch/pytorch CUDA runtime tag"):
        assert m is not None
        r.check(m.group(1) == torch, where, f"base has torch {m.group(1)}, constraints.txt pins {torch}")
    torch_arg = [a.split("=", 1)[1] for a in instructions(parser, "ARG") if a.startswith("TORCH_VERSION=")]
    r.check(torch_arg == [torch], where, "ARG TORCH_VERSION must equal the torch pin")


def check_containers(r: Report) -> None:
    r.section("containers (hadolint, Dockerfiles, requirements, .dockerignore)")
    check_requirements(r)
    for path in sorted(DOCKER.glob("*.Dockerfile")):
        check_dockerfile(path, SERVICES.get(path.name), r)
    ignore = dockerignore_patterns()
    needed = (
        "pyproject.toml",
        "constraints.txt",
        "protos",
        "promptclimb_common",
        "scorer_service",
        "optimizer_service",
        "deploy/docker/healthcheck.py",
    )
    for path_ in needed:
        r.check(dockerignore_allows(path_, ignore), ".dockerignore", f"excludes {path_}")
    for path_ in (".venv", ".git", "gen", "tests", "deploy/.env"):
        r.check(not dockerignore_allows(path_, ignore), ".dockerignore", f"lets {path_} into the build context")
