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


def test_ties_go_to_the_earlier_candidate():
    pool = seeded(0.5, 0.5, 0.5, 0.5)
    assert [c.sequence for c in pool.top(2, 0)] == [0, 1]
    assert [c.sequence for c in pool.bottom(2, 0)] == [3, 2]


def test_each_restart_climbs_on_the_initial_pool_plus_its_own_finds():
    pool = seeded(0.2, 0.3)
    pool.add(Candidate("restart zero's {}", 0.8, 0, 0, 0, 2))
    pool.add(Candidate("restart one's {}", 0.9, 1, 0, 0, 3))
    assert [c.template for c in pool.top(1, restart=0)] == ["restart zero's {}"]
    assert [c.template for c in pool.top(1, restart=1)] == ["restart one's {}"]
    assert len(pool.view(0)) == 3
    assert pool.best(1)[0].template == "restart one's {}"
    assert pool.mean_accuracy() == pytest.approx((0.2 + 0.3 + 0.8 + 0.9) / 4)


def test_duplicates_are_found_by_case_and_spacing_across_the_whole_run():
    pool = seeded(0.2)
    pool.add(Candidate("A photo of a {}", 0.5, 1, 0, 0, 1))
    new, duplicates = pool.split_new(["a  photo of a {}", "seed 0 OF a {}", "a new {}", "A new {}"])
    assert new == ["a new {}"]
    assert duplicates == ["a  photo of a {}", "seed 0 OF a {}", "A new {}"]
    assert "a PHOTO of a {}" in pool
    with pytest.raises(ValueError):
        pool.add(Candidate("a photo of a {}", 0.1, 2, 0, 0, 2))
