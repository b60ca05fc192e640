"""The package as another team gets it: a wheel built from a copy of the sources, installed into fresh venvs.

The copy holds what git tracks (no stubs: the build hook must compile them).
The wheel goes into two venvs of its own, with no network: one borrows all of
this venv's packages through a .pth file (every extra, no second torch); the
other, the base install, borrows only the files of the distributions its base
requirements reach, as pip would install them, so a missing or needless
requirement shows. Every command runs outside the repository, so nothing of the
checkout can stand in for the installed package. The console scripts then serve
a tiny random CLIP and optimize against it; the base install calls it through
the sync client.
"""

from __future__ import annotations

import importlib.metadata
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import textwrap
import tomllib
import zipfile
from email.parser import HeaderParser
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from promptclimb_common.processes import as_child
from tests.optimizer.scripted_llm import ScriptedLLM
from tests.procs import REPO, start_scorer, stop_process, wait_for_ports

STUBS = [
    f"promptclimb/{service}/v1/{service}_pb2{suffix}"
    for service in ("scorer", "optimizer")
    for suffix in (".py", ".pyi", "_grpc.py")
]
SCRIPTS = {
    "promptclimb": "promptclimb.cli:main",
    "promptclimb-scorer": "promptclimb.cli:scorer",
    "promptclimb-optimizer": "promptclimb.cli:optimizer",
}


def run(*command, cwd: Path, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert not check or done.returncode == 0, (
        f"{command} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    )
    return done


def copy_sources(target: Path) -> Path:
    listed = run("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=REPO).stdout.split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    root = tmp_path_factory.mktemp("package")
    sources = copy_sources(root / "src")
    assert not list((sources / "promptclimb").rglob("*_pb2*")), "the copy must hold no stubs"
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(root / "dist"), str(sources), cwd=root)
    [built] = (root / "dist").glob("promptclimb-*.whl")
    return built


def fresh_venv(wheel: Path, venv: Path) -> Path:
    """A venv holding the wheel alone; returns its site-packages."""
    run(sys.executable, "-m", "venv", "--without-pip", str(venv), cwd=venv.parent)
    python = venv / "bin" / "python"
    run(sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel), cwd=venv.parent)
    return Path(
        run(
            str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=venv.parent
        ).stdout.strip()
    )


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory):
    """(the wheel, a fresh venv it is installed in, which borrows every package of this one)."""
    venv = tmp_path_factory.mktemp("full") / "venv"
    site = fresh_venv(wheel, venv)
    (site / "test-borrowed-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return wheel, venv


def base_requirements(wheel: Path) -> list[Requirement]:
    """The wheel's Requires-Dist that hold without an extra: what `pip install promptclimb` installs."""
    with zipfile.ZipFile(wheel) as archive:
        [metadata] = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        headers = HeaderParser().parsestr(archive.read(metadata).decode())
    return [r for r in map(Requirement, headers.get_all("Requires-Dist") or []) if without_extra(r)]


def without_extra(requirement: Requirement) -> bool:
    return requirement.marker is None or requirement.marker.evaluate({"extra": ""})


def closure(requirements: list[Requirement]) -> dict[str, importlib.metadata.Distribution]:
    """The installed distributions the requirements reach, theirs included, as pip would resolve them here."""
    found: dict[str, importlib.metadata.Distribution] = {}
    todo = list(requirements)
    while todo:
        name = canonicalize_name(todo.pop().name)
        if name not in found:
            found[name] = importlib.metadata.distribution(name)
            todo += [r for r in map(Requirement, found[name].requires or []) if without_extra(r)]
    return found


@pytest.fixture(scope="module")
def base_installed(wheel, tmp_path_factory):
    """(the base requirements, a fresh venv with the wheel and only the files of the distributions they reach)."""
    requirements = base_requirements(wheel)
    root = tmp_path_factory.mktemp("base")
    site = fresh_venv(wheel, root / "venv")
    borrowed = root / "borrowed"
    for dist in closure(requirements).values():
        for file in dist.files or []:
            source = Path(str(dist.locate_file(file)))
            if not str(file).startswith("..") and source.is_file():  # scripts live outside site-packages
                (borrowed / file).parent.mkdir(parents=True, exist_ok=True)
                (borrowed / file).symlink_to(source)
    (site / "test-borrowed-dependencies.pth").write_text(f"{borrowed}\n")
    return requirements, root / "venv"


def venv_env(venv: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, "PATH": f"{venv / 'bin'}:/usr/bin:/bin", **extra}


def options_of(help_text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", help_text))


def test_the_wheel_carries_the_generated_stubs_and_the_console_scripts(installed):
    wheel, _ = installed
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        [entry_points] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = archive.read(entry_points).decode()
    assert set(STUBS) <= names
    assert {
        "promptclimb/client.py",
        "promptclimb/py.typed",
        "scorer_service/app.py",
        "optimizer_service/server.py",
    } <= names
    assert not [n for n in names if n.startswith(("tests/", "protos/"))]
    for script, target in SCRIPTS.items():
        assert f"{script} = {target}" in scripts


def test_the_installed_package_is_the_one_imported(installed, tmp_path):
    _, venv = installed
    modules = (
        "promptclimb.client, promptclimb.scorer.v1.scorer_pb2_grpc, promptclimb.optimizer.v1.optimizer_pb2, "
        "scorer_service, optimizer_service"
    )
    done = run(
        str(venv / "bin" / "python"),
        "-c",
        f"import {modules}; print(*(m.__file__ for m in ({modules})))",
        cwd=tmp_path,
        env=venv_env(venv),
    )
    for path in done.stdout.split():
        assert Path(path).is_relative_to(venv), path


@pytest.mark.parametrize(
    ("installed_command", "module_command"),
    [
        (["promptclimb-scorer"], ["scorer_service"]),
        (["promptclimb", "scorer"], ["scorer_service"]),
        (["promptclimb-optimizer", "run"], ["optimizer_service", "run"]),
        (["promptclimb", "run"], ["optimizer_service", "run"]),
        (["promptclimb-optimizer", "serve"], ["optimizer_service", "serve"]),
        (["promptclimb", "serve"], ["optimizer_service", "serve"]),
    ],
)
def test_the_console_scripts_take_the_modules_flags(installed, tmp_path, installed_command, module_command):
    _, venv = installed
    script = run(
        str(venv / "bin" / installed_command[0]), *installed_command[1:], "--help", cwd=tmp_path, env=venv_env(venv)
    )
    module = run(sys.executable, "-m", *module_command, "--help", cwd=REPO)
    assert options_of(script.stdout) == options_of(module.stdout) and len(options_of(module.stdout)) > 10
    assert script.stdout.startswith(f"usage: {' '.join(installed_command)}")


def test_the_console_scripts_serve_score_and_optimize_a_tiny_model(installed, tiny_clip_dir, image_task_dir, tmp_path):
    _, venv = installed
    env = venv_env(venv, OPENAI_API_KEY="placeholder", PYTHONUNBUFFERED="1")
    port_file = tmp_path / "scorer.ports.json"
    command = [
        str(venv / "bin" / "promptclimb-scorer"),
        "--model",
        str(tiny_clip_dir),
        "--task",
        f"shapes={image_task_dir}",
        "--shots",
        "2",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--metrics-port",
        "off",
        "--port-file",
        str(port_file),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--state-dir",
        str(tmp_path / "state"),
    ]
    with (tmp_path / "scorer.log").open("wb") as log:
        scorer = subprocess.Popen(
            **as_child(command), cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    try:
        address = f"127.0.0.1:{wait_for_ports(port_file, scorer).grpc}"
        tasks = json.loads(
            run(str(venv / "bin" / "promptclimb"), "tasks", "--scorer", address, cwd=tmp_path, env=env).stdout
        )
        assert [t["task_id"] for t in tasks["tasks"]] == ["shapes"]
        scored = json.loads(
            run(
                str(venv / "bin" / "promptclimb"),
                "score",
                "--scorer",
                address,
                "--task",
                "shapes",
                "a photo of a {}.",
                "{}",
                cwd=tmp_path,
                env=env,
            ).stdout
        )
        assert [(r["template"], r["total"]) for r in scored["results"]] == [("a photo of a {}.", 8), ("{}", 8)]
        unknown = run(
            str(venv / "bin" / "promptclimb"),
            "score",
            "--scorer",
            address,
            "--task",
            "nope",
            "{}",
            cwd=tmp_path,
            env=env,
            check=False,
        )
        assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr
        with ScriptedLLM() as llm:
            run(
                str(venv / "bin" / "promptclimb-optimizer"),
                "run",
                "--scorer",
                address,
                "--task",
                "shapes",
                "--llm-base-url",
                llm.url,
                "--llm-model",
                "scripted-model",
                "--restarts",
                "1",
                "--resets",
                "1",
                "--iterations",
                "2",
                "--initial-pool-size",
                "4",
                "--out",
                str(tmp_path / "out"),
                cwd=tmp_path,
                env=env,
            )
        result = json.loads((tmp_path / "out" / "result.json").read_text())
        assert result["state"] == "RUN_STATE_SUCCEEDED" and result["counters"]["iterations_done"] == 2
        assert len(llm.seen) == 2
    finally:
        assert stop_process(scorer, signal.SIGTERM) == 0, (tmp_path / "scorer.log").read_text()[-3000:]


SERVICE_STACK = ("torch", "transformers", "safetensors", "pillow", "numpy", "matplotlib", "redis", "openai")


def test_the_base_install_is_the_client_with_ranges_not_pins(base_installed):
    requirements, venv = base_installed
    names = {canonicalize_name(r.name) for r in requirements}
    assert names == {"grpcio", "grpcio-status", "googleapis-common-protos", "protobuf", "tenacity"}
    assert all(spec.operator != "==" for r in requirements for spec in r.specifier), requirements
    python = str(venv / "bin" / "python")
    absent = run(
        python,
        "-c",
        f"import importlib.util; print(*[m for m in {SERVICE_STACK!r} if importlib.util.find_spec(m)])",
        cwd=venv.parent,
        env=venv_env(venv),
    )
    assert absent.stdout.split() == []
    run(sys.executable, "-m", "pip", "--python", python, "check", cwd=venv.parent)  # the borrowed versions fit


def test_the_base_install_calls_a_scorer_through_the_sync_client_inside_a_running_loop(
    base_installed, tiny_clip_dir, image_task_dir, tmp_path
):
    """As a notebook does: the cell's code runs while the kernel's event loop runs."""
    _, venv = base_installed
    process, address = start_scorer(
        tiny_clip_dir, {"shapes": image_task_dir}, tmp_path / "cache", tmp_path / "log", "--shots", "2"
    )
    try:
        notebook_cell = textwrap.dedent(
            f"""
            import asyncio, sys
            from promptclimb.client import SyncScorer
            from promptclimb.scorer.v1 import scorer_pb2

            async def kernel():
                with SyncScorer({address!r}) as scorer:
                    reply = scorer.score(scorer_pb2.ScoreRequest(task_id="shapes", templates=["a photo of a {{}}."]))
                print(reply.results[0].total, "torch" in sys.modules)

            asyncio.run(kernel())
            """
        )
        done = run(str(venv / "bin" / "python"), "-c", notebook_cell, cwd=tmp_path, env=venv_env(venv))
        assert done.stdout.split() == ["8", "False"]
        tasks = run(str(venv / "bin" / "promptclimb"), "tasks", "--scorer", address, cwd=tmp_path, env=venv_env(venv))
        assert [t["task_id"] for t in json.loads(tasks.stdout)["tasks"]] == ["shapes"]
    finally:
        assert stop_process(process, signal.SIGTERM) == 0


@pytest.mark.parametrize(
    ("command", "extra"), [(["scorer"], "scorer"), (["run"], "optimizer"), (["serve"], "optimizer")]
)
def test_a_service_command_in_the_base_install_names_the_extra_it_needs(base_installed, tmp_path, command, extra):
    _, venv = base_installed
    done = run(str(venv / "bin" / "promptclimb"), *command, "--help", cwd=tmp_path, env=venv_env(venv), check=False)
    assert done.returncode == 1
    assert f"pip install 'promptclimb[{extra}]'" in done.stderr


def test_every_dependency_has_one_exact_pin_in_the_constraints_within_its_range():
    """pyproject.toml states what works (ranges); constraints.txt what `make env` and the images install."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = [
        Requirement(line)
        for line in [*project["dependencies"], *itertools.chain(*project["optional-dependencies"].values())]
        if not line.startswith(project["name"] + "[")
    ]
    lines = [line.split("#", 1)[0].strip() for line in (REPO / "constraints.txt").read_text().splitlines()]
    pins = {canonicalize_name(r.name): r for r in map(Requirement, filter(None, lines))}
    for requirement in declared:
        assert not any(spec.operator == "==" for spec in requirement.specifier), f"{requirement}: a range, not a pin"
        pin = pins.get(canonicalize_name(requirement.name))
        assert pin is not None, f"{requirement.name} has no pin in constraints.txt"
        [exact] = [spec.version for spec in pin.specifier if spec.operator == "=="]
        assert requirement.specifier.contains(exact, prereleases=True), f"{pin} is outside {requirement}"
