"""The SQLite store: WAL, atomic progress commits, reload, cache, clear errors."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import pytest

from optimizer_service.pool import INITIAL, Candidate
from optimizer_service.store import CachedReply, RunRecord, Step, Store, StoreError
from promptclimb.optimizer.v1 import optimizer_pb2 as pb
from tests.optimizer.conftest import small_spec


def event(label: str) -> pb.RunEvent:
    return pb.RunEvent(new_best=pb.NewBest(template=label))


def stored_run(store: Store, run_id: str) -> RunRecord:
    record = store.run(run_id)
    assert record is not None, f"no run {run_id} in the store"
    return record


def labels(payloads: list[bytes]) -> list[tuple[int, str]]:
    return [(e.sequence, e.new_best.template) for e in map(pb.RunEvent.FromString, payloads)]


async def test_opens_in_wal_mode_and_round_trips_a_run(tmp_path):
    store = Store.open(tmp_path / "state")
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    await store.create_run("r1", {"task_id": "pets"}, {"llm_calls": 0}, "PENDING")
    seeds = [
        Candidate("a {}", 0.5, INITIAL, INITIAL, INITIAL, 0),
        Candidate("the {}", 0.25, INITIAL, INITIAL, INITIAL, 1),
    ]
    await store.commit_progress("r1", seeds, {"llm_calls": 0}, [event("e1"), event("e2")])
    step = Step(0, 0, 0, "r1/0/0/0", [{"role": "user", "content": "go {}"}], "- a new {}")
    await store.commit_progress(
        "r1", [Candidate("a new {}", 0.75, 0, 0, 0, 2, "r1/0/0/0")], {"llm_calls": 1}, [event("e3")], [step]
    )
    store.close()

    reopened = Store.open(tmp_path / "state")
    assert [c.template for c in reopened.candidates("r1")] == ["a {}", "the {}", "a new {}"]
    assert reopened.candidates("r1")[2].llm_call == "r1/0/0/0"
    assert reopened.steps("r1") == {(0, 0, 0): step}
    assert stored_run(reopened, "r1").counters == {"llm_calls": 1}
    assert labels(reopened.events_after("r1", 1)) == [(2, "e2"), (3, "e3")]  # numbered by the store, after the last
    assert reopened.last_event_sequence("r1") == 3
    assert reopened.test_accuracies("r1") == {}
    await reopened.set_test_accuracies("r1", {2: 0.7})
    assert reopened.test_accuracies("r1") == {2: 0.7}


async def test_positions_reuse_rejections_and_the_ensemble_round_trip(tmp_path):
    store = Store.open(tmp_path)
    await store.create_run("r1", {}, {}, "RUNNING")
    admitted = [
        Candidate("a {}", 0.5, 0, INITIAL, INITIAL, 0, "", 0),
        Candidate("a {}", 0.5, 1, INITIAL, INITIAL, 1, "", 3, True),
    ]
    await store.commit_progress("r1", admitted, {}, [], rejected=[("a {} " + "x" * 80, "too long for the model")])
    await store.set_ensemble("r1", ["a {}", "the {}"], 0.75, None)
    store.close()
    reopened = Store.open(tmp_path)
    assert reopened.candidates("r1") == admitted
    assert reopened.rejections("r1") == [("a {} " + "x" * 80, "too long for the model")]
    assert reopened.ensemble("r1") == (["a {}", "the {}"], 0.75, None)
    assert reopened.ensemble("r2") is None


def test_a_database_from_before_the_new_columns_is_upgraded_on_open(tmp_path):
    import sqlite3

    old = sqlite3.connect(tmp_path / "optimizer.sqlite3")
    old.execute(
        "CREATE TABLE candidates (run_id TEXT NOT NULL, sequence INTEGER NOT NULL, template TEXT NOT NULL, "
        "accuracy REAL NOT NULL, restart INTEGER NOT NULL, reset INTEGER NOT NULL, iteration INTEGER NOT NULL, "
        "llm_call TEXT NOT NULL, test_accuracy REAL, PRIMARY KEY (run_id, sequence))"
    )
    old.execute("INSERT INTO candidates VALUES ('r1', 0, 'a {}', 0.5, -1, -1, -1, '', NULL)")
    old.commit()
    old.close()
    store = Store.open(tmp_path)
    assert store.candidates("r1") == [Candidate("a {}", 0.5, INITIAL, INITIAL, INITIAL, 0)]


async def test_a_failed_commit_writes_nothing(tmp_path):
    store = Store.open(tmp_path)
    await store.create_run("r1", {}, {"n": 0}, "RUNNING")
    await store.commit_progress("r1", [Candidate("a {}", 0.5, INITIAL, INITIAL, INITIAL, 0)], {"n": 1}, [event("e1")])
    step = Step(0, 0, 0, "c", [], "reply")
    with pytest.raises(StoreError):  # sequence 0 is taken: the whole step must roll back
        await store.commit_progress("r1", [Candidate("b {}", 0.1, 0, 0, 0, 0)], {"n": 2}, [event("e2")], [step])
    assert store.steps("r1") == {}
    assert stored_run(store, "r1").counters == {"n": 1}
    assert labels(store.events_after("r1", 0)) == [(1, "e1")]


async def test_response_cache(tmp_path):
    store = Store.open(tmp_path)
    assert store.cached_reply("k") is None
    await store.cache_reply("k", CachedReply("- a {}", 10, 3))
    assert store.cached_reply("k") == CachedReply("- a {}", 10, 3)


def test_state_path_that_is_a_file_fails_at_open(tmp_path):
    blocker = tmp_path / "state"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="check that it exists, is writable"):
        Store.open(blocker)


async def test_a_runs_table_from_before_request_ids_and_pinning_is_upgraded_on_open(tmp_path):
    import sqlite3

    old = sqlite3.connect(tmp_path / "optimizer.sqlite3")
    old.execute(
        "CREATE TABLE runs (run_id TEXT PRIMARY KEY, settings TEXT NOT NULL, state TEXT NOT NULL, "
        "stop_reason TEXT NOT NULL DEFAULT '', counters TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL)"
    )
    old.execute("""INSERT INTO runs VALUES ('old', '{}', 'SUCCEEDED', 'finished', '{}', 1.0, 2.0)""")
    old.commit()
    old.close()
    store = Store.open(tmp_path)
    before = stored_run(store, "old")
    assert (before.request_id, before.model_digest, before.stop_reason) == (None, "", "finished")  # unpinned, as it ran
    new = await store.create_run("new", {"a": 1}, {}, "PENDING", request_id="req-1", model_digest="d" * 32)
    assert (new.request_id, new.model_digest) == ("req-1", "d" * 32)
    assert (
        await store.create_run("other", {"a": 2}, {}, "PENDING", request_id="req-1")
    ).run_id == "new"  # the id is taken
    assert store.run("other") is None


async def test_pages_of_runs_created_at_the_same_instant_neither_repeat_nor_skip(tmp_path):
    store = Store.open(tmp_path)
    for run_id in ("a", "b", "c", "d"):
        await store.create_run(run_id, {}, {}, "SUCCEEDED")
    store._db.execute("UPDATE runs SET created = 5.0")
    first = store.runs_page(None, None, 2)
    rest = store.runs_page(None, (first[-1].created, first[-1].run_id), 10)
    assert [r.run_id for r in first + rest] == ["d", "c", "b", "a"]
    assert [r.run_id for r in store.runs_page(["PENDING"], None, 10)] == []


async def test_writes_asked_at_once_are_committed_in_the_order_asked(tmp_path):
    store = Store.open(tmp_path)
    await store.create_run("r1", {}, {}, "PENDING")
    await asyncio.gather(*(store.set_state("r1", f"S{n}", "", {"n": n}, [event(f"e{n}")]) for n in range(1, 31)))
    assert stored_run(store, "r1").state == "S30"
    assert labels(store.events_after("r1", 0)) == [(n, f"e{n}") for n in range(1, 31)]  # one number each, in order
    store.close()


async def test_the_service_keeps_answering_while_a_commit_waits_for_the_database(optimizer):
    """A commit that waits (here on another writer's lock; in production on the disk's fsync) leaves the loop free."""
    blocker = sqlite3.connect(optimizer.store.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the store's commits wait for this lock (busy_timeout: 5 s)
    try:
        start = asyncio.ensure_future(optimizer.stub.StartRun(pb.StartRunRequest(spec=small_spec())))
        longest_gap, last, until = 0.0, time.perf_counter(), time.perf_counter() + 1.0
        while time.perf_counter() < until:
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            longest_gap, last = max(longest_gap, now - last), now
        began = time.perf_counter()
        listed = await optimizer.stub.ListRuns(pb.ListRunsRequest(), timeout=2)
        answered_s = time.perf_counter() - began
        assert not start.done()  # StartRun is still waiting to store its run
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    run = await start
    assert longest_gap < 0.5 and answered_s < 1.0 and list(listed.runs) == []
    assert optimizer.store.run(run.run_id) is not None
