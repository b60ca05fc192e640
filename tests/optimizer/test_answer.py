"""The run's answer (answer.py): one selection rule, read the same way by every client, and selection on a val
split the climb never saw; through the service on loopback with a real scorer that offers SPLIT_VAL."""

from __future__ import annotations

import pytest
import pytest_asyncio

from optimizer_service.answer import selected
from optimizer_service.climb import Counters
from optimizer_service.journal import RunJournal
from optimizer_service.pool import Candidate, Pool
from optimizer_service.signals import Signal
from optimizer_service.spec import RunSettings
from optimizer_service.store import Store
from promptclimb.optimizer.v1 import optimizer_pb2 as pb
from tests.fixtures import write_image_folder
from tests.optimizer.conftest import open_optimizer, scorer_with_tokens


async def test_a_client_ranks_the_runs_events_as_the_run_does_even_on_a_tie(tmp_path):
    """The demo's divergence: two templates tie, and only their place in their step breaks the tie."""
    later_in_restart_0 = Candidate("a first {}", 0.5, restart=0, reset=0, iteration=1, sequence=0, position=1)
    first_in_restart_1 = Candidate("a second {}", 0.5, restart=1, reset=0, iteration=1, sequence=1, position=0)
    pool = Pool([later_in_restart_0, first_in_restart_1])
    assert pool.best()[0] == first_in_restart_1  # the run's rule: met earlier in its step wins before restart
    store = Store.open(tmp_path)
    await store.create_run("r", {}, {}, "RUNNING")
    await RunJournal(store, "r", pool, Counters(), Signal()).record(list(pool), [], None, [])
    events = [pb.RunEvent.FromString(raw) for raw in store.events_after("r", 0)]
    rebuilt = [
        Candidate(
            c.template, c.train_accuracy, c.restart, c.reset, c.iteration, c.candidate_sequence, position=c.position
        )
        for c in (e.candidate_scored for e in events if e.HasField("candidate_scored"))
    ]
    assert Pool(rebuilt).best()[0].template == pool.best()[0].template
    store.close()


def test_selection_takes_the_best_val_accuracy_and_breaks_its_ties_by_train_rank():
    ranked = [Candidate(f"t{i} {{}}", 0.9 - i / 10, 0, 0, 0, sequence=i) for i in range(4)]
    assert selected(ranked, {}) == ranked[0]  # no val: the pool's best
    assert selected(ranked, {0: 0.5, 1: 0.7, 2: 0.7}) == ranked[1]  # val first, ties to the better train rank
    assert selected([], {}) is None


def test_runs_stored_before_val_selection_keep_train_selection():
    stored = RunSettings("shapes", "m").to_json()
    del stored["select_on_val"]
    assert RunSettings.from_json(stored).select_on_val is False


@pytest.fixture(scope="module")
def val_scorer(tiny_clip_dir, tmp_path_factory):
    """A scorer whose task has a val split: 6 train images per class, 2 shots for train and 2 for val."""
    root = tmp_path_factory.mktemp("val-scorer")
    images = write_image_folder(root / "images", per_class=12)
    with scorer_with_tokens(tiny_clip_dir, images, root, "--shots", "2", "--val-shots", "2") as endpoint:
        yield endpoint


@pytest_asyncio.fixture
async def val_optimizer(val_scorer, llm, tmp_path):
    async with open_optimizer(val_scorer.settings(), llm, tmp_path / "state") as service:
        yield service


async def test_the_answer_is_selected_on_val_among_the_best_by_train(val_optimizer):
    run, events = await val_optimizer.run_to_end(val_candidates=5, report_top=3)
    assert run.state == pb.RUN_STATE_SUCCEEDED, run.stop_reason
    assert run.counters.val_scored == 5
    stored = val_optimizer.store
    val = stored.val_accuracies(run.run_id)
    ranked = Pool(stored.candidates(run.run_id)).best(5)
    assert set(val) == {c.sequence for c in ranked}  # exactly the 5 best by train rank were scored on val
    choice = selected(ranked, val)
    assert choice is not None
    assert run.selected.template == choice.template
    assert run.selected.val_accuracy == val[choice.sequence]
    assert run.selected.HasField("test_accuracy")  # the owner and the caller have the test right
    assert [b.template for b in run.best] == [c.template for c in ranked[:3]]  # `best` stays the train ranking
    assert all(b.HasField("val_accuracy") for b in run.best)
    ended = events[-1].run_ended
    assert ended.selected.template == run.selected.template


async def test_a_run_may_keep_train_selection_beside_a_val_split(val_optimizer):
    run, _ = await val_optimizer.run_to_end(select_on_val=False)
    assert run.state == pb.RUN_STATE_SUCCEEDED, run.stop_reason
    assert run.counters.val_scored == 0 and not run.selected.HasField("val_accuracy")
    assert run.selected.template == run.best[0].template


async def test_without_a_val_split_the_answer_is_the_pools_best(optimizer):
    run, _ = await optimizer.run_to_end()
    assert run.state == pb.RUN_STATE_SUCCEEDED, run.stop_reason
    assert run.counters.val_scored == 0
    assert run.selected.template == run.best[0].template
    assert run.selected.train_accuracy == run.best[0].train_accuracy
