"""`promptclimb export RUN --format clip_benchmark|cupl|text`: the run's answer in the format another tool loads.

RUN is a report directory (of `promptclimb optimize` or `promptclimb run`) or its result.json.

- clip_benchmark: the JSON `--custom_template_file` of clip_benchmark reads: `{dataset: [template, ...]}`, each
  template with `{c}` where the class name goes (clip_benchmark fills it with `template.format(c=classname)`, so a
  literal brace is doubled).
- cupl: CuPL's class-specific prompts, `{class name: [prompt, ...]}`: every answer template filled with the class
  name. Needs the class names, which the report records (result.json's class_names).
- text: one template per line, with `{}`, as `--initial-templates-file` reads them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from optimizer_service.report import RESULT, answer_templates
from promptclimb_common.cli_help import ArgumentParser

FORMATS = ("clip_benchmark", "cupl", "text")


class ExportError(ValueError):
    """The run has nothing to export in that format; says why."""


def load_result(run: Path) -> dict[str, Any]:
    path = run / RESULT if run.is_dir() else run
    if not path.is_file():
        raise ExportError(f"{path} does not exist: RUN is the --out directory of `optimize` or `run`")
    result: dict[str, Any] = json.loads(path.read_text())
    return result


def to_clip_benchmark(template: str) -> str:
    """`{}` -> `{c}`, other braces doubled: what str.format(c=...) turns back into the template's text."""
    return template.replace("{", "{{").replace("}", "}}").replace("{{}}", "{c}")


def export(result: dict[str, Any], fmt: str, dataset: str = "") -> str:
    """The answer of `result` in format `fmt`; `dataset` names clip_benchmark's key (default: the task id)."""
    templates = answer_templates(result)
    if not templates:
        raise ExportError(f"run {result['run_id']} has no answer ({result['state']}, {result['stop_reason']})")
    if fmt == "text":
        return "\n".join(templates) + "\n"
    if fmt == "clip_benchmark":
        key = dataset or result["spec"]["task_id"]
        return json.dumps({key: [to_clip_benchmark(t) for t in templates]}, indent=2, ensure_ascii=False) + "\n"
    if fmt == "cupl":
        names = result.get("class_names") or []
        if not names:
            raise ExportError("result.json has no class_names (reports written before issue 28 lack them)")
        prompts = {name: [t.replace("{}", name) for t in templates] for name in names}
        return json.dumps(prompts, indent=2, ensure_ascii=False) + "\n"
    raise ExportError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def main(argv: list[str] | None = None, prog: str = "promptclimb export") -> int:
    parser = ArgumentParser(
        prog=prog,
        description="Write a run's answer in the format clip_benchmark, CuPL or a plain list loads.",
    )
    parser.add_argument("run", type=Path, help="the run's report directory (its --out) or its result.json")
    parser.add_argument("--format", choices=FORMATS, default="text", help="what to write")
    parser.add_argument("--dataset", default="", help="clip_benchmark's dataset key (default: the run's task id)")
    parser.add_argument("--output", "-o", type=Path, default=None, help="file to write (default: stdout)")
    ns = parser.parse_args(argv)
    try:
        text = export(load_result(ns.run), ns.format, ns.dataset)
    except ExportError as err:
        print(f"{prog}: {err}", file=sys.stderr)
        return 2
    if ns.output:
        ns.output.write_text(text)
    else:
        sys.stdout.write(text)
    return 0
