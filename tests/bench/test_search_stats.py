"""The benchmark's statistics and its reading of a run's answer, on numbers worked out by hand."""

from __future__ import annotations

import pytest

from bench.search_quality import run_answers
from bench.search_stats import gap_closed, paired_difference, regret, spread


def test_a_constant_paired_difference_has_a_zero_width_interval():
    assert str(paired_difference([0.52, 0.61, 0.70], [0.50, 0.59, 0.68])) == "+2.0 [+2.0, +2.0]"


def test_the_bootstrap_interval_holds_the_mean_and_is_reproducible():
    method, control = [0.60, 0.55, 0.70, 0.58, 0.66], [0.58, 0.57, 0.61, 0.58, 0.60]
    first, again = paired_difference(method, control), paired_difference(method, control)
    assert first == again
    assert first.mean == pytest.approx(3.0)
    assert first.low < first.mean < first.high
    assert first.low > -2.0 - 1e-9 and first.high < 9.0 + 1e-9  # within the smallest and largest difference


def test_spread_regret_and_gap_closed():
    assert spread([0.5, 0.7]) == "60.0 ± 14.1"
    assert regret([0.5, 0.7], 0.8) == pytest.approx(20.0)
    assert gap_closed([0.8, 0.6], [0.6, 0.6], 0.8) == pytest.approx(0.5)
    assert gap_closed([0.8], [0.8], 0.8) is None  # nothing to close


def _result(answer: dict | None, best: str) -> dict:
    return {"best": [{"template": best}], **({"answer": answer} if answer else {})}


def test_the_runs_answer_is_read_and_a_val_selection_shown_beside_train():
    assert run_answers(_result(None, "a {}"), "a {}") == {"train": "a {}"}
    val = _result({"template": "b {}", "val_accuracy": 0.7}, "a {}")
    assert run_answers(val, "a {}") == {"val": "b {}", "train": "a {}"}
    with pytest.raises(RuntimeError, match="replayed"):
        run_answers(_result(None, "a {}"), "c {}")  # without val the run's answer and its own rule must agree
