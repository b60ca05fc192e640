"""`python -m optimizer_service run`: one optimization in a process of its own, with a report on disk."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.optimizer.conftest import SCORER_TOKENS, TASK
from tests.optimizer.scripted_llm import Fail, Reply, ScriptedLLM
from tests.procs import REPO


def run_cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "optimizer_service", "run", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_run_writes_result_json_and_a_plot(scorer, tmp_path):
    out = tmp_path / "out"
    env = {
        "PATH": "/usr/bin:/bin",
        "OPENAI_API_KEY": "placeholder",
        "SCORER_TOKEN": SCORER_TOKENS["optimizer"][0],
        "OPTIMIZER_TEMPLATES_PER_CALL": "3",
    }
    with ScriptedLLM() as llm:
        done = run_cli(
            "--scorer",
            scorer.address,
            "--task",
            TASK,
            "--llm-base-url",
            llm.url,
            "--llm-model",
            "scripted-model",
            "--restarts",
            "1",
            "--resets",
            "2",
            "--iterations",
            "2",
            "--initial-pool-size",
            "5",
            "--conversation",
            "stateless",
            "--llm-backoff-initial-s",
            "0.01",
            "--out",
            str(out),
            env=env,
        )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "climbing" in done.stderr and "4/4" in done.stderr and "llm_calls=4" in done.stderr  # the progress bar
    result = json.loads((out / "result.json").read_text())
    assert result["state"] == "RUN_STATE_SUCCEEDED" and result["stop_reason"] == "finished"
    assert result["spec"]["templates_per_call"] == 3  # from the OPTIMIZER_ environment default
    assert result["spec"]["conversation"] == "stateless"
    counters = result["counters"]
    assert counters["iterations_done"] == 4 and counters["llm_calls"] == 4 == len(llm.seen)
    assert len(result["trajectory"]) == counters["templates_scored"] == 5 + 4 * 3
    assert [t["sequence"] for t in result["trajectory"]] == list(range(17))
    assert {t["llm_call"] for t in result["trajectory"] if t["iteration"] >= 0} == {s.call_id for s in llm.seen}
    bests = [point["best_train_accuracy"] for point in result["curve"]]
    assert [point["step"] for point in result["curve"]] == [0, 1, 2, 3, 4] and bests == sorted(bests)
    assert result["best"][0]["train_accuracy"] == max(t["train_accuracy"] for t in result["trajectory"])
    assert "test_accuracy" in result["best"][0]
    assert result["class_names"] and result["llm"]["cost_usd"] is None  # scripted-model has no price: unknown
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "state" / "optimizer.sqlite3").exists()


def test_run_refuses_an_over_cap_spec_and_a_missing_key(scorer, tmp_path):
    base = [
        "--scorer",
        scorer.address,
        "--task",
        TASK,
        "--llm-base-url",
        "http://127.0.0.1:9/v1",
        "--llm-model",
        "m",
        "--out",
        str(tmp_path / "out"),
    ]
    over = run_cli(*base, "--restarts", "99", env={"PATH": "/usr/bin:/bin", "OPENAI_API_KEY": "x"})
    assert over.returncode == 2 and "restarts=99 is out of range" in over.stderr
    keyless = run_cli(*base, env={"PATH": "/usr/bin:/bin"})
    assert keyless.returncode == 2 and "OPENAI_API_KEY" in keyless.stderr


def test_rerunning_after_a_failure_resumes_the_same_run(scorer, tmp_path):
    out = tmp_path / "out"
    env = {"PATH": "/usr/bin:/bin", "OPENAI_API_KEY": "placeholder", "SCORER_TOKEN": SCORER_TOKENS["optimizer"][0]}
    args = [
        "--scorer",
        scorer.address,
        "--task",
        TASK,
        "--llm-model",
        "scripted-model",
        "--restarts",
        "1",
        "--resets",
        "1",
        "--iterations",
        "3",
        "--initial-pool-size",
        "4",
        "--llm-max-attempts",
        "1",
        "--out",
        str(out),
    ]
    with ScriptedLLM([Reply("- first {}"), Fail(500)]) as llm:
        failed = run_cli(*args, "--llm-base-url", llm.url, env=env)
    assert failed.returncode == 1
    first = json.loads((out / "result.json").read_text())
    assert first["state"] == "RUN_STATE_FAILED" and "5xx" in first["stop_reason"]
    assert first["counters"]["iterations_done"] == 1
    with ScriptedLLM() as llm:
        resumed = run_cli(*args, "--llm-base-url", llm.url, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    second = json.loads((out / "result.json").read_text())
    assert second["run_id"] == first["run_id"] and second["state"] == "RUN_STATE_SUCCEEDED"
    assert second["counters"]["iterations_done"] == 3
    assert [s.call_id.rsplit("/", 1)[1] for s in llm.seen] == ["1", "2"]  # iteration 0 was not asked again


def test_serve_refuses_an_unusable_state_dir_at_start(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the state dir should be")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "optimizer_service",
            "serve",
            "--port",
            "0",
            "--metrics-port",
            "0",
            "--state-dir",
            str(blocker / "state"),
            "--llm-model",
            "m",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "OPENAI_API_KEY": "x"},
    )
    assert done.returncode == 2
    assert "optimizer_cannot_start" in done.stderr
    assert f"--state-dir {blocker / 'state'} ({blocker / 'state'}) is not writable: Not a directory" in done.stderr
    assert "point --state-dir (env OPTIMIZER_STATE_DIR) at a writable directory" in done.stderr


def test_run_refuses_an_unwritable_out_dir_at_start(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the report should go")
    done = run_cli(
        "--scorer",
        "127.0.0.1:1",
        "--task",
        TASK,
        "--out",
        str(blocker / "out"),
        "--llm-model",
        "m",
        env={"PATH": "/usr/bin:/bin", "OPENAI_API_KEY": "x"},
    )
    assert done.returncode == 2
    assert f"--out {blocker / 'out'} ({blocker / 'out'}) is not writable: Not a directory" in done.stderr
    assert "point --out (env OPTIMIZER_OUT) at a writable directory" in done.stderr


def test_accuracy_curve_accumulates_over_steps_and_restarts():
    from optimizer_service.pool import INITIAL, Candidate
    from optimizer_service.report import accuracy_curve

    candidates = [
        Candidate("a {}", 0.2, INITIAL, INITIAL, INITIAL, 0),
        Candidate("b {}", 0.4, INITIAL, INITIAL, INITIAL, 1),
        Candidate("c {}", 0.1, 0, 0, 1, 2),
        Candidate("d {}", 0.9, 1, 1, 0, 3),
    ]
    curve = accuracy_curve(candidates, iterations=2)  # step = reset * 2 + iteration + 1
    assert [(step, best) for step, best, _ in curve] == [(0, 0.4), (1, 0.4), (2, 0.4), (3, 0.9)]
    assert [round(mean, 4) for _, _, mean in curve] == [0.3, 0.3, round(0.7 / 3, 4), 0.4]


def test_the_key_alone_is_enough_and_help_shows_the_defaults(monkeypatch):
    """Issue 28, problem 3: OPENAI_API_KEY alone means OpenAI and a default model; --help shows defaults."""
    import argparse

    from optimizer_service.cli import add_run_args
    from optimizer_service.config import connection_settings

    parser = argparse.ArgumentParser()
    add_run_args(parser)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-placeholder")
    _, llm = connection_settings(parser, parser.parse_args(["--task", "t", "--out", "o"]))
    assert (llm.base_url, llm.model, llm.source) == ("https://api.openai.com/v1", "gpt-4o-mini", "OPENAI_API_KEY")
    _, local = connection_settings(
        parser, parser.parse_args(["--task", "t", "--out", "o", "--llm-base-url", "http://h:1/v1"])
    )
    assert (local.base_url, local.model, local.source) == ("http://h:1/v1", "", "flags")
    helped = run_cli("--help", env={"PATH": "/usr/bin:/bin"})
    flat = " ".join(helped.stdout.split())
    assert "--llm-context-tokens LLM_CONTEXT_TOKENS the LLM's context size" in flat
    assert "(default: 4096)" in flat and "(default: 512)" in flat and "(default: 120.0)" in flat


def test_run_stops_at_its_dollar_cap(scorer, tmp_path):
    """Issue 28, problem 5: `run --max-llm-cost-usd` ends the run once its cost reaches the cap."""
    out = tmp_path / "out"
    env = {"PATH": "/usr/bin:/bin", "OPENAI_API_KEY": "placeholder", "SCORER_TOKEN": SCORER_TOKENS["optimizer"][0]}
    with ScriptedLLM() as llm:  # 40 + 12 tokens a reply at $1000 per million: $0.052 a call
        done = run_cli(
            *("--scorer", scorer.address, "--task", TASK, "--llm-base-url", llm.url, "--llm-model", "m"),
            *("--llm-price", "1000,1000", "--max-llm-cost-usd", "0.1", "--initial-pool-size", "4"),
            *("--restarts", "1", "--resets", "1", "--iterations", "5", "--out", str(out)),
            env=env,
        )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    assert result["stop_reason"] == "max_llm_cost_usd" and result["counters"]["llm_calls"] == 2 == len(llm.seen)
    assert result["llm"]["cost_usd"] == pytest.approx(2 * 52 * 1000 / 1e6)
    assert "cost=$0.1040" in done.stderr  # the progress bar shows dollars


def test_dry_run_prints_the_expected_spend_and_asks_nobody(tmp_path):
    """Issue 28, problem 5: `run --dry-run` scores nothing and calls no LLM (the scorer's port is closed)."""
    with ScriptedLLM() as llm:
        done = run_cli(
            *("--scorer", "127.0.0.1:9", "--task", TASK, "--llm-base-url", llm.url, "--llm-model", "m"),
            *("--llm-price", "2,8", "--restarts", "1", "--resets", "2", "--iterations", "3", "--dry-run"),
            *("--out", str(tmp_path / "out")),
            env={"PATH": "/usr/bin:/bin", "OPENAI_API_KEY": "x"},
        )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "expected LLM calls:  6" in done.stdout and "expected tokens:" in done.stdout
    assert "expected cost:       $0.0" in done.stdout
    assert llm.seen == [] and not (tmp_path / "out").exists()
