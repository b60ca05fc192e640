"""The package as another team gets it: a wheel built from a copy of the sources, installed into a fresh venv.

The copy holds what git tracks (no stubs: the build hook must compile them);
the wheel goes into a venv of its own, which borrows this venv's dependencies
through a .pth file (no network, no second torch); every command runs outside
the repository, so nothing of the checkout can stand in for the installed
package. The console scripts then serve a tiny random CLIP and optimize against it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from promptclimb_common.processes import as_child
from tests.optimizer.scripted_llm import ScriptedLLM
from tests.procs import REPO, stop_process, wait_for_ports

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
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(the wheel, the fresh venv it is installed in)."""
    root = tmp_path_factory.mktemp("package")
    sources = copy_sources(root / "src")
    assert not list((sources / "promptclimb").rglob("*_pb2*")), "the copy must hold no stubs"
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(root / "dist"), str(sources), cwd=root)
    [wheel] = (root / "dist").glob("promptclimb-*.whl")
    venv = root / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", str(venv), cwd=root)
    python = venv / "bin" / "python"
    run(sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel), cwd=root)
    site = Path(
        run(str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=root).stdout.strip()
    )
    (site / "test-borrowed-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return wheel, venv


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
