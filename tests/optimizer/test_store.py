"""The SQLite store: WAL, atomic progress commits, reload, cache, clear errors."""

from __future__ import annotations

import pytest

from optimizer_service.pool import INITIAL, Candidate
from optimizer_service.store import CachedReply, Step, Store, StoreError


def test_opens_in_wal_mode_and_round_trips_a_run(tmp_path):
    store = Store.open(tmp_path / "state")
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.create_run("r1", {"task_id": "pets"}, {"llm_calls": 0}, "PENDING")
    seeds = [Candidate("a {}", 0.5, INITIAL, INITIAL, INITIAL, 0), Candidate("the {}", 0.25, INITIAL, INITIAL, INITIAL, 1)]
    store.commit_progress("r1", seeds, {"llm_calls": 0}, [(1, b"e1"), (2, b"e2")])
    step = Step(0, 0, 0, "r1/0/0/0", [{"role": "user", "content": "go {}"}], "- a new {}")
    store.commit_progress("r1", [Candidate("a new {}", 0.75, 0, 0, 0, 2, "r1/0/0/0")], {"llm_calls": 1}, [(3, b"e3")], [step])
    store.close()

    reopened = Store.open(tmp_path / "state")
    assert [c.template for c in reopened.candidates("r1")] == ["a {}", "the {}", "a new {}"]
    assert reopened.candidates("r1")[2].llm_call == "r1/0/0/0"
    assert reopened.steps("r1") == {(0, 0, 0): step}
    assert reopened.run("r1").counters == {"llm_calls": 1}
    assert reopened.events_after("r1", 1) == [b"e2", b"e3"]
    assert reopened.last_event_sequence("r1") == 3
    best = reopened.best_candidates("r1", 2)
    assert [(c.template, test) for c, test in best] == [("a new {}", None), ("a {}", None)]
    reopened.set_test_accuracies("r1", {2: 0.7})
    assert reopened.best_candidates("r1", 1)[0][1] == 0.7


def test_a_failed_commit_writes_nothing(tmp_path):
    store = Store.open(tmp_path)
    store.create_run("r1", {}, {"n": 0}, "RUNNING")
    store.commit_progress("r1", [Candidate("a {}", 0.5, INITIAL, INITIAL, INITIAL, 0)], {"n": 1}, [(1, b"e1")])
    step = Step(0, 0, 0, "c", [], "reply")
    with pytest.raises(StoreError):  # sequence 0 is taken: the whole step must roll back
        store.commit_progress("r1", [Candidate("b {}", 0.1, 0, 0, 0, 0)], {"n": 2}, [(2, b"e2")], [step])
    assert store.steps("r1") == {}
    assert store.run("r1").counters == {"n": 1}
    assert store.events_after("r1", 0) == [b"e1"]


def test_response_cache(tmp_path):
    store = Store.open(tmp_path)
    assert store.cached_reply("k") is None
    store.cache_reply("k", CachedReply("- a {}", 10, 3))
    assert store.cached_reply("k") == CachedReply("- a {}", 10, 3)


def test_state_path_that_is_a_file_fails_at_open(tmp_path):
    blocker = tmp_path / "state"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="check that it exists, is writable"):
        Store.open(blocker)

