"""Search strategies as plug-ins: the task in every ask, OPRO's trajectory and samples, edits and crossovers, the
registry; through the service on loopback, real scorer, scripted LLM."""

from __future__ import annotations

import re

import grpc
import pytest

from optimizer_service.choices import Conversation, Feedback
from optimizer_service.spec import RunSettings
from optimizer_service.strategies import STRATEGIES
from promptclimb.optimizer.v1 import optimizer_pb2 as pb
from promptclimb_common.errors import details_of
from tests.fixtures import CLASSES
from tests.optimizer.scripted_llm import Reply

DESCRIPTION = "noisy coloured squares, one per class"
SCORED = re.compile(r"^- (.+?) \(accuracy ([\d.]+)%\)$", re.MULTILINE)


@pytest.mark.parametrize(
    ("strategy", "extra"),
    [
        ("hill_climb", {"feedback": pb.FEEDBACK_NONE}),  # the control: random search
        ("hill_climb", {"feedback": pb.FEEDBACK_POSITIVE_NEGATIVE}),
        ("hill_climb", {"conversation": pb.CONVERSATION_MODE_STATELESS}),
        ("hill_climb", {"initial_pool": pb.INITIAL_POOL_LLM}),
        ("opro", {}),
        ("edit", {}),
    ],
    ids=["random", "chat", "stateless", "llm-pool", "opro", "edit"],
)
async def test_every_ask_names_the_task_its_classes_and_the_users_description(optimizer, strategy, extra):
    run, _ = await optimizer.run_to_end(strategy=strategy, task_description=DESCRIPTION, ensemble_size=1, **extra)
    assert run.state == pb.RUN_STATE_SUCCEEDED, run.stop_reason
    assert run.spec.strategy == strategy and run.spec.task_description == DESCRIPTION
    requests = optimizer.llm.seen
    assert len(requests) >= 2 * 2 * 2
    for seen in requests:
        first_user = next(m["content"] for m in seen.messages if m["role"] == "user")
        for name in CLASSES:
            assert name.replace("_", " ") in first_user, (name, first_user)
        assert DESCRIPTION in first_user


async def test_opro_shows_an_ascending_trajectory_and_samples_each_step_independently(optimizer):
    run, _ = await optimizer.run_to_end(
        strategy="opro", restarts=1, resets=1, iterations=6, samples_per_step=3, top_k=4, ensemble_size=1
    )
    assert run.state == pb.RUN_STATE_SUCCEEDED, run.stop_reason
    calls = sorted(optimizer.llm.seen, key=lambda s: int(s.call_id.rsplit("/", 1)[1]))
    assert len(calls) == 6 == run.counters.llm_calls
    for seen in calls:
        assert [m["role"] for m in seen.messages] == ["system", "user"]  # stateless
        shown = [float(a) for _, a in SCORED.findall(seen.last_user_message)]
        assert len(shown) == 4 and shown == sorted(shown)  # the best last
        assert "ascending order" in seen.last_user_message
    for step in (calls[0:3], calls[3:6]):  # the samples of a step share one trajectory, not one seed
        assert len({s.last_user_message for s in step}) == 1
        assert len({s.body["seed"] for s in step}) == 3
    assert calls[0].last_user_message != calls[3].last_user_message  # the second step saw the first's finds


async def test_opro_stops_at_the_llm_budget_with_every_sample_in_flight_landed(optimizer):
    run, _ = await optimizer.run_to_end(
        strategy="opro", restarts=1, resets=1, iterations=6, samples_per_step=3, max_llm_calls=5, ensemble_size=1
    )
    assert (run.state, run.stop_reason) == (pb.RUN_STATE_SUCCEEDED, "max_llm_calls")
    assert run.counters.llm_calls == 5 == run.counters.iterations_done == len(optimizer.llm.seen)
    steps = optimizer.store.steps(run.run_id)
    assert sorted(key[2] for key in steps) == [0, 1, 2, 3, 4]  # every sample asked was committed


async def test_opro_samples_of_one_step_that_write_the_same_new_template_add_it_once(optimizer):
    """The samples of a step are scored concurrently: a template two of them wrote was new to the pool when each
    reply was read, and must not be added twice (seen in the benchmark: the run failed with an internal error)."""
    twin = Reply("- a twin photo of a {}.")
    optimizer.llm.plan(twin, twin, twin)
    run, _ = await optimizer.run_to_end(
        strategy="opro", restarts=1, resets=1, iterations=3, samples_per_step=3, templates_per_call=1, ensemble_size=1
    )
    assert run.state == pb.RUN_STATE_SUCCEEDED, run.stop_reason
    assert run.counters.llm_calls == 3 and run.counters.candidates_duplicate == 2
    found = [c for c in optimizer.store.candidates(run.run_id) if c.template == "a twin photo of a {}."]
    assert len(found) == 1


async def test_edit_asks_for_one_named_change_of_good_templates_or_their_combination(optimizer):
    run, _ = await optimizer.run_to_end(strategy="edit", restarts=1, resets=2, iterations=6, top_k=3, ensemble_size=1)
    assert run.state == pb.RUN_STATE_SUCCEEDED, run.stop_reason
    operations = set()
    for seen in optimizer.llm.seen:
        text = seen.last_user_message
        listed = [t for t, _ in SCORED.findall(text)]
        if "combine them" in text:
            operations.add("combine")
            assert len(listed) == 2
        else:
            operation = re.search(r"Rewrite it by (\w+)", text)
            assert operation is not None, text
            operations.add(operation.group(1))
            assert len(listed) == 1
    assert len(operations) >= 3  # the operations vary from step to step
    first = [s.last_user_message for s in optimizer.llm.seen]
    optimizer.llm.seen.clear()
    await optimizer.run_to_end(strategy="edit", restarts=1, resets=2, iterations=6, top_k=3, ensemble_size=1)
    ops = [re.sub(r"- .*\n", "", t) for t in first]
    again = [re.sub(r"- .*\n", "", s.last_user_message) for s in optimizer.llm.seen]
    assert again == ops  # operations are drawn by the seed, not by timing


async def test_an_unknown_strategy_is_refused_naming_the_known_ones(optimizer):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await optimizer.stub.StartRun(pb.StartRunRequest(spec=pb.RunSpec(task_id="shapes", strategy="annealing")))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for name in STRATEGIES:
        assert name in (caught.value.details() or "")


@pytest.mark.parametrize(
    ("given", "strategy"),
    [
        ({}, "edit"),  # the benchmark's winner (docs/search-quality.md)
        ({"show_accuracies": False, "top_k": 5}, "edit"),  # knobs edit reads too
        ({"preset": pb.PRESET_AUTHORS}, "hill_climb"),  # the preset reproduces the paper's code
        ({"feedback": pb.FEEDBACK_NONE, "conversation": pb.CONVERSATION_MODE_STATELESS}, "hill_climb"),  # control
        ({"feedback": pb.FEEDBACK_NONE}, "hill_climb"),
        ({"feedback": pb.FEEDBACK_POSITIVE_ONLY}, "hill_climb"),
        ({"conversation": pb.CONVERSATION_MODE_CHAT}, "hill_climb"),
        ({"strategy": "opro"}, "opro"),
    ],
    ids=["empty", "edit-knobs", "authors", "random-search", "feedback-none", "p-only", "chat", "named"],
)
def test_an_empty_strategy_is_edit_unless_the_spec_asks_for_a_hill_climb(given, strategy):
    settings = RunSettings.from_proto(pb.RunSpec(task_id="shapes", **given), "m")
    assert settings.strategy == strategy


def test_the_random_search_control_keeps_its_knobs_without_naming_a_strategy():
    spec = pb.RunSpec(task_id="shapes", feedback=pb.FEEDBACK_NONE, conversation=pb.CONVERSATION_MODE_STATELESS)
    settings = RunSettings.from_proto(spec, "m")
    assert (settings.strategy, settings.feedback, settings.conversation) == (
        "hill_climb",
        Feedback.NONE,
        Conversation.STATELESS,
    )


@pytest.mark.parametrize("strategy", ["hill_climb", "per_class", "per_class_no_feedback"])
def test_the_strategies_that_hill_climb_take_its_knobs(strategy):
    spec = pb.RunSpec(
        task_id="shapes",
        strategy=strategy,
        feedback=pb.FEEDBACK_POSITIVE_ONLY,
        conversation=pb.CONVERSATION_MODE_STATELESS,
    )
    settings = RunSettings.from_proto(spec, "m")
    assert (settings.feedback, settings.conversation) == (Feedback.POSITIVE_ONLY, Conversation.STATELESS)


@pytest.mark.parametrize(
    ("strategy", "knob", "value"),
    [
        ("edit", "feedback", pb.FEEDBACK_POSITIVE_NEGATIVE),
        ("edit", "conversation", pb.CONVERSATION_MODE_CHAT),
        ("opro", "feedback", pb.FEEDBACK_NONE),
        ("opro", "conversation", pb.CONVERSATION_MODE_STATELESS),
    ],
)
async def test_a_hill_climb_knob_given_to_another_strategy_is_refused_not_ignored(optimizer, strategy, knob, value):
    spec = pb.RunSpec(task_id="shapes", strategy=strategy, **{knob: value})
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await optimizer.stub.StartRun(pb.StartRunRequest(spec=spec))
    refused = details_of(caught.value)
    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT and refused.fields == (f"spec.{knob}",)
    assert "hill_climb" in refused.message and strategy in refused.message
    assert not (await optimizer.stub.ListRuns(pb.ListRunsRequest())).runs  # refused before any work


async def test_an_edit_runs_effective_spec_reads_back_as_the_same_settings(optimizer):
    run, _ = await optimizer.run_to_end(ensemble_size=1)  # no strategy: edit
    assert run.state == pb.RUN_STATE_SUCCEEDED, run.stop_reason
    assert run.spec.strategy == "edit"
    # GetRun's spec is what a report re-reads (report.py) and what a client may send again
    again = RunSettings.from_proto(run.spec, run.spec.llm_model)
    assert again.to_proto() == run.spec


def test_settings_stored_before_the_strategy_knob_load_as_the_hill_climb_they_were():
    stored = RunSettings.from_proto(pb.RunSpec(task_id="shapes", strategy="hill_climb"), "m").to_json()
    del stored["strategy"]
    assert RunSettings.from_json(stored).strategy == "hill_climb"
