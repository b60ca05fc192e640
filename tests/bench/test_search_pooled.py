"""Pooling the benchmark's paired seeds over runs: pairs stay within a run; the largest pooled gains are named."""

from __future__ import annotations

import json

import pytest

from bench import search_pooled


def run(control: list[float], **methods: list[float]) -> dict:
    graded = {"random": {str(s): {"test": t} for s, t in enumerate(control, 1)}}
    for name, tests in methods.items():
        graded[name.replace("_", "-")] = {str(s): {"test": t} for s, t in enumerate(tests, 1)}
    return {"graded": graded}


def test_pairs_stay_within_their_run_and_a_missing_method_pools_over_the_runs_that_have_it():
    first = run([0.5, 0.6], edit=[0.6, 0.7], opro=[0.5, 0.6])
    second = run([0.9, 0.1], edit=[0.9, 0.1])  # an unpaired mean would mix 0.9 with the first run's 0.5
    total, each, count = search_pooled.pooled([first, second], "edit")
    assert count == 4 and total.mean == pytest.approx(5.0)  # (10 + 10 + 0 + 0) / 4 points
    assert each[0] is not None and each[0].mean == pytest.approx(10.0)
    total, each, count = search_pooled.pooled([first, second], "opro")
    assert count == 2 and each[1] is None and total.mean == pytest.approx(0.0)


def test_the_table_names_the_largest_pooled_gain_whose_interval_excludes_zero(tmp_path, capsys):
    files = []
    for name, data in {
        "a": run([0.5, 0.5, 0.5], edit=[0.6, 0.62, 0.61], p_stateless=[0.9, 0.5, 0.4]),
        "b": run([0.6, 0.6, 0.6], edit=[0.65, 0.66, 0.64], p_stateless=[0.6, 0.95, 0.6]),
    }.items():
        path = tmp_path / name / "search_quality.json"
        path.parent.mkdir()
        path.write_text(json.dumps(data))
        files.append(str(path))
    runs = [json.loads((tmp_path / n / "search_quality.json").read_text()) for n in ("a", "b")]
    noisy, steady = search_pooled.pooled(runs, "p-stateless")[0], search_pooled.pooled(runs, "edit")[0]
    assert noisy.mean > steady.mean and noisy.low <= 0 < steady.low  # +10.8 crossing 0 against +8.0 above it
    search_pooled.main(files)
    out = capsys.readouterr().out
    assert "| Δ on a | Δ on b |" in out
    assert "Largest pooled Δ: positive only, stateless, +10.8 [" in out
    assert out.strip().endswith("Largest pooled Δ with its interval above 0: edit and crossover of good templates.")
