"""yamllint over every YAML file of deploy/ (config deploy/.yamllint.yaml): PyYAML, which the other checks read
them with, silently keeps the last of two duplicate keys and takes `on`/`yes` for booleans."""

from __future__ import annotations

from pathlib import Path

from checks.common import DEPLOY, Report, output, run, tool

CONFIG = DEPLOY / ".yamllint.yaml"


def check_yaml(paths: list[Path], r: Report) -> None:
    exe = tool("yamllint")
    if r.check(exe is not None, "yamllint", "not found (make deploy-check pip-installs it)"):
        assert exe is not None
        proc = run([exe, "--strict", "-f", "parsable", "-c", str(CONFIG), *map(str, paths)])
        r.check(proc.returncode == 0, "yamllint", output(proc))


def check_yaml_files(r: Report) -> None:
    r.section("yaml (yamllint)")
    check_yaml([DEPLOY], r)
