"""The pool: ranking per restart, deduplication, best of the run."""

from __future__ import annotations

import pytest

from optimizer_service.pool import INITIAL, Candidate, Pool


def seeded(*accuracies: float) -> Pool:
    return Pool(Candidate(f"seed {i} of a {{}}", acc, INITIAL, INITIAL, INITIAL, i) for i, acc in enumerate(accuracies))


def test_top_and_bottom_rank_by_accuracy_and_never_overlap():
    pool = seeded(0.5, 0.9, 0.1, 0.7, 0.3)
    assert [c.accuracy for c in pool.top(2, restart=0)] == [0.9, 0.7]
    assert [c.accuracy for c in pool.bottom(2, restart=0)] == [0.1, 0.3]
    small = seeded(0.5, 0.9, 0.1)
    top, bottom = small.top(2, 0), small.bottom(2, 0)
    assert {c.sequence for c in top}.isdisjoint({c.sequence for c in bottom})
    assert [c.accuracy for c in bottom] == [0.1]


def test_ties_go_to_the_template_the_restart_met_first_whatever_the_scoring_order():
    pool = Pool()
    # Admitted in an order a slow scorer could produce: later iterations first, sequence numbers out of step.
    pool.add(Candidate("iteration one {}", 0.5, 0, 0, 1, 0, position=0))
    pool.add(Candidate("iteration zero, second line {}", 0.5, 0, 0, 0, 1, position=1))
    pool.add(Candidate("iteration zero, first line {}", 0.5, 0, 0, 0, 2, position=0))
    pool.add(Candidate("sample {}", 0.5, 0, INITIAL, INITIAL, 3, position=0))
    assert [c.template for c in pool.top(2, 0)] == ["sample {}", "iteration zero, first line {}"]
    assert [c.template for c in pool.bottom(2, 0)] == ["iteration one {}", "iteration zero, second line {}"]


def test_the_run_best_lists_each_template_once_and_breaks_ties_by_restart():
    pool = Pool()
    pool.add(Candidate("shared {}", 0.75, 1, 0, 0, 0, position=0))
    pool.add(Candidate("Shared  {}", 0.75, 0, 0, 0, 1, position=0, reused=True))
    pool.add(Candidate("other {}", 0.5, 0, 0, 0, 2, position=1))
    assert [(c.template, c.restart) for c in pool.best(3)] == [("Shared  {}", 0), ("other {}", 0)]
    assert pool.mean_accuracy() == pytest.approx((0.75 + 0.5) / 2)


def test_each_restart_climbs_on_its_own_pool_and_a_shared_one():
    pool = seeded(0.2, 0.3)  # an initial pool every restart shares (the LLM-written one)
    pool.add(Candidate("restart zero's {}", 0.8, 0, 0, 0, 2))
    pool.add(Candidate("restart one's {}", 0.9, 1, 0, 0, 3))
    assert [c.template for c in pool.top(1, restart=0)] == ["restart zero's {}"]
    assert [c.template for c in pool.top(1, restart=1)] == ["restart one's {}"]
    assert len(pool.view(0)) == 3
    assert pool.best(1)[0].template == "restart one's {}"
    assert pool.mean_accuracy() == pytest.approx((0.2 + 0.3 + 0.8 + 0.9) / 4)


def test_duplicates_are_per_restart_and_the_memory_is_the_runs():
    pool = seeded(0.2)
    pool.add(Candidate("A photo of a {}", 0.5, 1, 0, 0, 1))
    new, duplicates = pool.split_new(["a  photo of a {}", "seed 0 OF a {}", "a new {}", "A new {}"], restart=0)
    assert new == ["a  photo of a {}", "a new {}"]  # restart 1's find is new to restart 0
    assert duplicates == ["seed 0 OF a {}", "A new {}"]
    assert pool.split_new(["a photo of a {}"], restart=1) == ([], ["a photo of a {}"])
    assert pool.accuracy("a PHOTO of a {}") == 0.5 and pool.accuracy("a new {}") is None
    assert pool.holds("a PHOTO of a {}", 1) and not pool.holds("a photo of a {}", 0)
    pool.add(Candidate("a photo of a {}", 0.5, 0, 0, 0, 2, reused=True))  # restart 0 may admit it too
    with pytest.raises(ValueError, match="already in restart 0's pool"):
        pool.add(Candidate("a photo of a {}", 0.5, 0, 0, 1, 3))


def test_scorer_refusals_are_remembered_by_key():
    pool = Pool(rejected=[("a {} far too long", "too long for the model")])
    assert pool.rejection("A  {} far too LONG") == "too long for the model"
    assert pool.rejection("a {}") is None
