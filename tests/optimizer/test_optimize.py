"""`promptclimb optimize` end to end: the real scorer and optimizer service as processes on loopback, the scripted
OpenAI-compatible LLM standing in for a remote one; then its report read back by MLflow's client and exported.

Issue 28's problems 4 (a local run shows test accuracy), 5 (cost unknown, not $0; --dry-run), 6 (MLflow) and 9
(export), and 2 (a model that cannot load stops the run).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.optimizer.scripted_llm import ScriptedLLM
from tests.procs import REPO

pytestmark = pytest.mark.timeout(600)


def optimize(
    *args: str, env: dict | None = None, timeout: float = 400, cwd: Path = REPO
) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "LLM_BASE_URL", "LLM_MODEL")}
    base["PYTHONPATH"] = str(REPO)  # run from elsewhere, as a user would
    return subprocess.run(
        [sys.executable, "-m", "promptclimb", "optimize", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**base, **(env or {})},
    )


BUDGET = ["--restarts", "1", "--resets", "1", "--iterations", "2", "--initial-pool-size", "4"]
BUDGET += ["--templates-per-call", "2", "--top-k", "2", "--conversation", "stateless"]


@pytest.fixture(scope="module")
def report(
    tiny_clip_dir, image_task_dir, tmp_path_factory
) -> tuple[Path, Path, ScriptedLLM, subprocess.CompletedProcess]:
    """One `optimize` run against the scripted LLM, tracked in a fresh MLflow file store; run from a directory of
    its own with paths relative to it."""
    root = tmp_path_factory.mktemp("optimize")
    out, mlruns = root / "out", root / "mlruns"
    (root / "data").symlink_to(image_task_dir)
    with ScriptedLLM() as llm:
        done = optimize(
            str(tiny_clip_dir),
            "data",
            "--out",
            "out",
            "--work-dir",
            "work",
            "--shots",
            "3",
            "--llm-base-url",
            llm.url,
            "--llm-model",
            "scripted-model",
            "--mlflow",
            "mlruns",
            *BUDGET,
            cwd=root,
        )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, mlruns, llm, done


def test_a_local_run_reports_train_and_test_for_the_baselines_and_the_answer(report):
    out, _, llm, done = report
    result = json.loads((out / "result.json").read_text())
    assert result["state"] == "RUN_STATE_SUCCEEDED"
    rows = {row["label"]: row for row in result["evaluation"]}
    assert {"baseline_plain", "baseline_photo", "answer"} <= set(rows)
    for row in rows.values():
        assert set(row["accuracy"]) >= {"train", "test"}, row  # the local user holds the test right
        assert all(0 <= value <= 1 for value in row["accuracy"].values())
    assert rows["answer"]["templates"] == [result["best"][0]["template"]]
    assert rows["answer"]["accuracy"]["train"] == result["best"][0]["train_accuracy"]
    assert "test_accuracy" in result["best"][0] and all("test_accuracy" in s for s in result["selected"])
    assert result["class_names"] and len(llm.seen) == result["counters"]["llm_calls"] == 2
    summary = (out / "summary.md").read_text()
    assert "| row | train | test | template |" in summary and "| answer |" in summary
    assert summary in done.stdout  # printed too
    assert (out / "accuracy.png").read_bytes()[:4] == b"\x89PNG"


def test_a_model_without_a_price_costs_unknown_not_zero(report):
    out, _, _, done = report
    result = json.loads((out / "result.json").read_text())
    assert result["llm"]["model"] == "scripted-model" and result["llm"]["source"] == "flags"
    assert result["llm"]["price_usd_per_mtok"] is None and result["llm"]["cost_usd"] is None
    assert "cost unknown (no price for scripted-model" in (out / "summary.md").read_text()
    assert "cost=unknown" in done.stdout  # the progress bar
    assert "$0" not in (out / "summary.md").read_text()


def test_the_run_is_read_back_from_the_mlflow_file_store(report):
    out, mlruns, _, _ = report
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    result = json.loads((out / "result.json").read_text())
    client = MlflowClient(str(mlruns))
    experiment = client.get_experiment_by_name("promptclimb")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == result["run_id"] and run.info.status == "FINISHED"
    assert run.data.params["spec.iterations"] == "2" and run.data.params["llm.model"] == "scripted-model"
    history = client.get_metric_history(run.info.run_id, "best_train_accuracy")
    assert [(m.step, m.value) for m in history] == [(p["step"], p["best_train_accuracy"]) for p in result["curve"]]
    tested = client.get_metric_history(run.info.run_id, "selected_test_accuracy")
    assert [m.value for m in tested] == [s["test_accuracy"] for s in result["selected"]]
    answer = next(r for r in result["evaluation"] if r["label"] == "answer")
    assert run.data.metrics["answer_test_accuracy"] == answer["accuracy"]["test"]
    assert run.data.metrics["llm_calls"] == 2 and "llm_cost_usd" not in run.data.metrics  # unknown: not logged as 0
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artifacts == {"result.json", "accuracy.png", "summary.md", "best_templates.txt"}
    best = Path(client.download_artifacts(run.info.run_id, "best_templates.txt", str(out.parent)))
    assert best.read_text().splitlines()[0] == result["best"][0]["template"]


def export(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "promptclimb", "export", *args], cwd=REPO, capture_output=True, text=True, timeout=60
    )


def test_export_writes_what_clip_benchmark_and_cupl_load(report, tmp_path):
    out, _, _, _ = report
    result = json.loads((out / "result.json").read_text())
    answer = result["best"][0]["template"]
    done = export(str(out), "--format", "clip_benchmark", "--dataset", "cifar10", "-o", str(tmp_path / "t.json"))
    assert done.returncode == 0, done.stderr
    templates = json.loads((tmp_path / "t.json").read_text())
    # clip_benchmark's --custom_template_file: {dataset: [template]}, filled as template.format(c=classname)
    assert list(templates) == ["cifar10"] and len(templates["cifar10"]) == 1
    name = result["class_names"][0]
    assert templates["cifar10"][0].format(c=name) == answer.replace("{}", name)
    cupl = json.loads(export(str(out), "--format", "cupl").stdout)  # CuPL: {class name: [prompt]}
    assert list(cupl) == result["class_names"]
    assert cupl[name] == [answer.replace("{}", name)]
    assert export(str(out / "result.json"), "--format", "text").stdout == answer + "\n"


def test_the_clip_benchmark_format_is_that_of_its_own_template_file():
    """The installed clip-benchmark's en_zeroshot_classification_templates.json: {dataset: [str with {c}]}."""
    from importlib.resources import files

    from promptclimb.export import to_clip_benchmark

    theirs = json.loads(
        (files("clip_benchmark") / "datasets" / "en_zeroshot_classification_templates.json").read_text()
    )
    assert all(isinstance(v, list) and all("{c}" in t for t in v) for v in theirs.values())
    assert to_clip_benchmark("a {} with {braces}.") == "a {c} with {{braces}}."
    assert to_clip_benchmark("a {} with {braces}.").format(c="cat") == "a cat with {braces}."


def test_export_refuses_a_report_that_is_not_there(tmp_path):
    done = export(str(tmp_path), "--format", "text")
    assert done.returncode == 2 and "result.json does not exist" in done.stderr


def test_a_model_that_cannot_load_stops_the_run_with_the_reason(image_task_dir, tmp_path):
    missing = tmp_path / "no-such-model"
    with ScriptedLLM() as llm:
        done = optimize(
            str(missing),
            str(image_task_dir),
            "--out",
            str(tmp_path / "out"),
            "--work-dir",
            str(tmp_path / "work"),
            "--llm-base-url",
            llm.url,
            *BUDGET,
            timeout=120,
        )
    assert done.returncode == 2
    assert f"scorer: model directory {missing} does not exist" in done.stderr
    assert not (tmp_path / "out").exists() and llm.seen == []


def test_dry_run_prints_calls_tokens_and_dollars_and_starts_nothing(tmp_path):
    done = optimize(
        "openai/clip-vit-base-patch32",
        str(tmp_path / "no-data-needed"),
        "--out",
        str(tmp_path / "out"),
        "--dry-run",
        *BUDGET,
        env={"OPENAI_API_KEY": "sk-placeholder"},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "LLM gpt-4o-mini at https://api.openai.com/v1" in done.stdout
    assert "expected LLM calls:  2" in done.stdout
    cost = next(line for line in done.stdout.splitlines() if line.startswith("expected cost:"))
    assert "$0.0" in cost and "unknown" not in cost  # gpt-4o-mini has a price in genai-prices
    assert not (tmp_path / "out").exists()
