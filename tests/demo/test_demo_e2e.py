"""`python -m demo` end to end: real llama-server, real scorer, real optimizer service, on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from promptclimb_common.templates import template_problem
from tests.procs import REPO

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(1500)  # the demo's own 1200 s, and the fixtures
def test_demo_produces_a_result_with_a_valid_best_template(tiny_clip_dir, tmp_path):
    out = tmp_path / "out"
    env = {
        **os.environ,
        "SCORER_MODEL": str(tiny_clip_dir),  # an explicit untrained checkpoint: the demo must say so
        # the default embedded model, Qwen2.5-Coder-1.5B: the 0.5B one mostly copies the prompt's examples
        "DEMO_OUT": str(out),
        "DEMO_RESTARTS": "1",
        "DEMO_RESETS": "1",
        "DEMO_ITERATIONS": "3",
        "DEMO_POOL": "6",
    }
    for remote in ("OPENAI_API_KEY", "LLM_BASE_URL", "LLM_MODEL"):
        env.pop(remote, None)
    result = subprocess.run(
        [sys.executable, "-m", "demo"], cwd=REPO, env=env, capture_output=True, text=True, timeout=1200
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "untrained model: accuracies are chance level" in result.stdout
    assert "no LLM configured" in result.stderr  # the embedded llama-server, and it says so

    report = json.loads((out / "result.json").read_text())
    assert report["state"] == "RUN_STATE_SUCCEEDED" and report["stop_reason"] == "finished"
    assert report["note"].startswith("untrained model") and report["llm"]["source"] == "embedded"
    assert report["llm"]["cost_usd"] == 0.0  # a local llama-server costs nothing
    best = report["best"][0]["template"]
    assert template_problem(best) is None
    assert report["trajectory"] and {row["template"] for row in report["trajectory"]} >= {best}
    assert any(row["llm_call"] for row in report["trajectory"]), "no template came from the LLM"
    labels = {row["label"] for row in report["evaluation"]}
    assert (
        {"baseline_plain", "baseline_photo", "answer"}
        <= labels
        <= {"baseline_plain", "baseline_photo", "answer", "ensemble"}
    )
    assert all(0 <= row["accuracy"]["test"] <= 1 for row in report["evaluation"])
    assert (out / "accuracy.png").stat().st_size > 0 and (out / "summary.md").exists()


@pytest.mark.timeout(2100)  # the demo's own 1800 s (the testbed model is trained on first use), and the fixtures
def test_the_default_demo_climbs_on_the_trained_testbed_model(tmp_path):
    """No SCORER_MODEL: the testbed CLIP (trained on first use), real accuracies, and a test curve."""
    out = tmp_path / "out"
    env = {**os.environ, "DEMO_OUT": str(out), "DEMO_RESTARTS": "1", "DEMO_RESETS": "1", "DEMO_ITERATIONS": "2"}
    for name in ("OPENAI_API_KEY", "LLM_BASE_URL", "LLM_MODEL", "SCORER_MODEL"):
        env.pop(name, None)
    result = subprocess.run(
        [sys.executable, "-m", "demo"], cwd=REPO, env=env, capture_output=True, text=True, timeout=1800
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "untrained" not in result.stdout and "| answer |" in result.stdout
    report = json.loads((out / "result.json").read_text())
    assert report["note"] == "testbed model: a small CLIP trained here on Fashion-MNIST, not CLIP"
    assert "planted-p7" in report["model"]
    rows = {row["label"]: row for row in report["evaluation"]}
    assert rows["baseline_photo"]["accuracy"]["test"] > 0.3  # 10 classes: chance is 0.1
    assert rows["answer"]["templates"] == [report["answer"]["template"]]  # the run's own selection
    assert all("test_accuracy" in step for step in report["selected"])
    curve_test = {step["template"]: step["test_accuracy"] for step in report["selected"]}
    if report["answer"]["template"] in curve_test:  # selected on train at some step: one template, one accuracy
        assert rows["answer"]["accuracy"]["test"] == curve_test[report["answer"]["template"]]
