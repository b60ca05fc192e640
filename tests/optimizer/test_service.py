"""The Optimizer service end to end on loopback: real scorer, scripted LLM, generated stubs."""

from __future__ import annotations

from collections.abc import Awaitable

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from prometheus_client import REGISTRY

from promptclimb.optimizer.v1 import optimizer_pb2 as pb
from tests.optimizer.conftest import TASK, small_spec
from tests.optimizer.scripted_llm import EMPTY_CHOICES, GARBAGE, NOT_UTF8, TRUNCATED_JSON, Delay, Drop, Fail, Reply


async def test_a_run_finishes_with_a_full_trajectory(optimizer):
    run, events = await optimizer.run_to_end()
    assert run.state == pb.RUN_STATE_SUCCEEDED, run.stop_reason
    assert run.stop_reason == "finished"
    c = run.counters
    assert c.iterations_done == c.iterations_total == 2 * 2 * 2
    assert c.llm_calls == 8 and c.llm_errors == 0 and c.scorer_calls == 1 + 8
    scored = [e.candidate_scored for e in events if e.HasField("candidate_scored")]
    samples = {
        restart: [s.template for s in scored if s.iteration == -1 and s.restart == restart] for restart in (0, 1)
    }
    assert [len(sample) for sample in samples.values()] == [6, 6] and samples[0] != samples[
        1
    ]  # each restart's own draw
    distinct_seeds = len(set(samples[0]) | set(samples[1]))
    assert c.templates_scored == distinct_seeds + 8 * 2  # a template two restarts drew is scored once
    assert c.candidates_reused == 12 - distinct_seeds
    assert c.llm_prompt_tokens == 8 * 40 and c.llm_completion_tokens == 8 * 12
    assert len(optimizer.llm.seen) == 8
    assert len(scored) == 12 + 8 * 2
    assert [s.candidate_sequence for s in scored] == list(range(len(scored)))
    assert {s.llm_call for s in scored if s.iteration >= 0} == {s.call_id for s in optimizer.llm.seen}
    assert [b.train_accuracy for b in run.best] == sorted((s.train_accuracy for s in scored), reverse=True)[:5]
    assert all(b.HasField("test_accuracy") for b in run.best)  # our scorer token has the test right


def _iteration_requests(seen, restart: int, reset: int):
    """The scripted server's requests of one climb's reset, by iteration."""
    calls = [s for s in seen if s.call_id.split("/")[1:3] == [str(restart), str(reset)]]
    return sorted(calls, key=lambda s: int(s.call_id.split("/")[3]))


async def test_best_train_accuracy_never_decreases_and_events_arrive_in_order(optimizer):
    run, events = await optimizer.run_to_end(iterations=3)
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert events[-1].HasField("run_ended") and events[-1].run_ended.state == pb.RUN_STATE_SUCCEEDED
    assert all(e.run_id == run.run_id for e in events)
    done = [e.iteration_done for e in events if e.HasField("iteration_done")]
    assert len(done) == 12
    bests = [d.best_train_accuracy for d in done]
    assert bests == sorted(bests)
    assert [d.counters.iterations_done for d in done] == list(range(1, 13))
    new_bests = [e.new_best.train_accuracy for e in events if e.HasField("new_best")]
    assert new_bests == sorted(set(new_bests)) and new_bests[-1] == run.best[0].train_accuracy
    # Every IterationDone comes after the CandidateScored events of its own iteration.
    position = {e.sequence: e for e in events}
    for event in events:
        if event.HasField("candidate_scored") and event.candidate_scored.iteration >= 0:
            scored = event.candidate_scored
            later_done = [
                e
                for s, e in position.items()
                if s > event.sequence
                and e.HasField("iteration_done")
                and (e.iteration_done.restart, e.iteration_done.reset, e.iteration_done.iteration)
                == (scored.restart, scored.reset, scored.iteration)
            ]
            assert later_done


async def test_watch_replays_from_a_sequence(optimizer):
    run, events = await optimizer.run_to_end()
    tail = [e async for e in optimizer.stub.WatchRun(pb.WatchRunRequest(run_id=run.run_id, after_sequence=5))]
    assert tail == events[5:]


async def test_chat_mode_carries_history_and_accuracy_feedback(optimizer):
    run, _ = await optimizer.run_to_end(strategy="hill_climb", iterations=3)
    assert run.state == pb.RUN_STATE_SUCCEEDED
    for restart in range(2):
        for reset in range(2):
            first, second, third = _iteration_requests(optimizer.llm.seen, restart, reset)
            assert [m["role"] for m in first.messages] == ["system", "user"]  # a reset starts a fresh conversation
            assert [m["role"] for m in third.messages] == ["system", "user", "assistant", "user", "assistant", "user"]
            assert third.messages[:4] == second.messages  # the chat grows by the reply and a feedback turn
            assert third.messages[4]["content"] != "" and third.messages[2]["role"] == "assistant"
            assert 'The accuracy of "' in second.last_user_message and "is now" in second.last_user_message
    seen_reply = optimizer.llm.seen[0]
    assert "work poorly" in seen_reply.last_user_message and "(accuracy " in seen_reply.last_user_message


async def test_stateless_positive_only_hidden_accuracies_change_the_messages_as_intended(optimizer):
    run, _ = await optimizer.run_to_end(
        conversation=pb.CONVERSATION_MODE_STATELESS, feedback=pb.FEEDBACK_POSITIVE_ONLY, show_accuracies=False
    )
    assert run.state == pb.RUN_STATE_SUCCEEDED
    assert len(optimizer.llm.seen) == 8
    for seen in optimizer.llm.seen:
        assert [m["role"] for m in seen.messages] == ["system", "user"]
        text = seen.last_user_message
        assert "work well" in text and "work poorly" not in text
        assert "%" not in text and "(accuracy" not in text


@pytest.mark.parametrize(
    ("limit", "value", "check"),
    [
        ("max_llm_calls", 3, lambda c, seen: c.llm_calls == 3 and seen == 3),
        ("max_scored_templates", 9, lambda c, seen: c.templates_scored == 9),
        ("max_llm_tokens", 100, lambda c, seen: c.llm_prompt_tokens + c.llm_completion_tokens == 104 and seen == 2),
    ],
)
async def test_budgets_stop_a_run_cleanly_with_their_name(optimizer, limit, value, check):
    run, events = await optimizer.run_to_end(**{limit: value})
    assert run.state == pb.RUN_STATE_SUCCEEDED
    assert run.stop_reason == limit
    assert run.counters.iterations_done < run.counters.iterations_total
    assert check(run.counters, len(optimizer.llm.seen))
    assert events[-1].run_ended.stop_reason == limit


async def test_wall_time_budget_stops_a_slow_run(optimizer):
    optimizer.llm.plan(*[Delay(0.3, Reply(f"- slow {i} {{}}")) for i in range(8)])
    run, _ = await optimizer.run_to_end(max_wall_time=Duration(nanos=500_000_000))
    assert (run.state, run.stop_reason) == (pb.RUN_STATE_SUCCEEDED, "max_wall_time")
    assert run.counters.active_time.ToTimedelta().total_seconds() >= 0.5


async def test_passing_llm_faults_are_retried_and_a_hopeless_reply_skipped(optimizer):
    optimizer.llm.plan(
        Fail(429, {"retry-after": "0.01"}), Fail(500), Reply("- a third try {}"), GARBAGE, EMPTY_CHOICES, TRUNCATED_JSON
    )
    run, events = await optimizer.run_to_end(restarts=1)
    assert run.state == pb.RUN_STATE_SUCCEEDED, run.stop_reason
    c = run.counters
    assert (c.iterations_done, c.llm_calls, c.llm_errors) == (4, 4, 5)
    first = [s.answered for s in optimizer.llm.seen if s.call_id.endswith("/0/0/0")]
    skipped = [s for s in optimizer.llm.seen if s.call_id.endswith("/0/0/1")]
    assert first == ["fail 429", "fail 500", "reply"]
    assert [s.answered for s in skipped] == ["raw", "raw", "raw"]
    assert not [
        e
        for e in events
        if e.HasField("candidate_scored") and (e.candidate_scored.reset, e.candidate_scored.iteration) == (0, 1)
    ]


async def test_an_llm_that_stays_down_fails_the_run_which_resumes_later(optimizer):
    optimizer.llm.plan(Fail(500), Fail(503), Fail(500))
    run, events = await optimizer.run_to_end(restarts=1)
    assert run.state == pb.RUN_STATE_FAILED
    assert "failed after 3 attempt(s): 5xx" in run.stop_reason
    assert events[-1].run_ended.state == pb.RUN_STATE_FAILED
    resumed = await optimizer.stub.ResumeRun(pb.ResumeRunRequest(run_id=run.run_id))
    assert resumed.state in (pb.RUN_STATE_PENDING, pb.RUN_STATE_RUNNING)
    [
        e
        async for e in optimizer.stub.WatchRun(
            pb.WatchRunRequest(run_id=run.run_id, after_sequence=events[-1].sequence)
        )
    ]
    final = await optimizer.stub.GetRun(pb.GetRunRequest(run_id=run.run_id))
    assert (final.state, final.stop_reason) == (pb.RUN_STATE_SUCCEEDED, "finished")
    assert final.counters.iterations_done == 4 and final.counters.llm_errors == 3
    seed_templates = [e for e in events if e.HasField("candidate_scored")]
    assert final.counters.templates_scored == len(seed_templates) + 4 * 2  # the initial pool was not scored twice


async def test_cancel_then_resume(optimizer):
    optimizer.llm.plan(*[Delay(0.2, Reply(f"- slow {i} of a {{}}")) for i in range(4)])
    run_id = (await optimizer.stub.StartRun(pb.StartRunRequest(spec=small_spec(restarts=1)))).run_id
    async for event in optimizer.stub.WatchRun(pb.WatchRunRequest(run_id=run_id)):
        if event.HasField("iteration_done"):
            break
    cancelled = await optimizer.stub.CancelRun(pb.CancelRunRequest(run_id=run_id))
    assert (cancelled.state, cancelled.stop_reason) == (pb.RUN_STATE_CANCELLED, "cancelled")
    assert cancelled.counters.iterations_done < 4
    with pytest.raises(grpc.aio.AioRpcError) as again:
        await optimizer.stub.CancelRun(pb.CancelRunRequest(run_id=run_id))
    assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    await optimizer.stub.ResumeRun(pb.ResumeRunRequest(run_id=run_id))
    events = [e async for e in optimizer.stub.WatchRun(pb.WatchRunRequest(run_id=run_id))]
    final = await optimizer.stub.GetRun(pb.GetRunRequest(run_id=run_id))
    assert final.state == pb.RUN_STATE_SUCCEEDED and final.counters.iterations_done == 4
    done = [(e.iteration_done.reset, e.iteration_done.iteration) for e in events if e.HasField("iteration_done")]
    assert sorted(done) == [(0, 0), (0, 1), (1, 0), (1, 1)]  # each iteration finished exactly once
    # the replay leaves out the superseded CANCELLED end: one RunEnded, the last event
    assert [e.run_ended.state for e in events if e.HasField("run_ended")] == [pb.RUN_STATE_SUCCEEDED]
    assert events[-1].HasField("run_ended")
    with pytest.raises(grpc.aio.AioRpcError) as finished:
        await optimizer.stub.ResumeRun(pb.ResumeRunRequest(run_id=run_id))
    assert finished.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_llm_written_initial_pool_from_the_tasks_class_names(optimizer):
    optimizer.llm.plan(
        Reply(
            'Sure:\n1. a photo of a black cat at night\n2. "a blurry {} outdoors"\n3. a {} and a {}\n'
            "- a {} on a table (accuracy 99%)"
        )
    )
    run, events = await optimizer.run_to_end(
        initial_pool=pb.INITIAL_POOL_LLM, initial_pool_size=3, restarts=1, resets=1
    )
    assert run.state == pb.RUN_STATE_SUCCEEDED, run.stop_reason
    seed_request = optimizer.llm.seen[0]
    assert seed_request.call_id == f"{run.run_id}/seed/0"
    for name in ("red apple", "green_leaf", "blue sky", "black cat"):
        assert name in seed_request.last_user_message or name.replace("_", " ") in seed_request.last_user_message
    seeds = [
        e.candidate_scored for e in events if e.HasField("candidate_scored") and e.candidate_scored.iteration == -1
    ]
    assert [s.template for s in seeds] == ["a photo of a {} at night", "a blurry {} outdoors", "a {} on a table"]
    assert {s.llm_call for s in seeds} == {seed_request.call_id}
    assert run.counters.candidates_invalid == 1


async def test_given_initial_pool_is_scored_as_given(optimizer):
    given = ["a {}", "the {} again", "A {}"]
    run, events = await optimizer.run_to_end(
        initial_pool=pb.INITIAL_POOL_GIVEN,
        initial_templates=given,
        restarts=1,
        resets=1,
        iterations=1,
        initial_pool_size=0,
    )
    seeds = [
        e.candidate_scored.template
        for e in events
        if e.HasField("candidate_scored") and e.candidate_scored.iteration == -1
    ]
    assert sorted(seeds) == ["a {}", "the {} again"]  # N=0: all of them, in an order drawn by the seed
    assert run.counters.candidates_duplicate >= 1


@pytest.mark.optimizer(scorer={"token_name": "train-only"})
async def test_without_the_test_right_the_result_has_no_test_accuracy(optimizer):
    run, _ = await optimizer.run_to_end(restarts=1, resets=1, iterations=1)
    assert run.state == pb.RUN_STATE_SUCCEEDED and run.best
    assert not any(b.HasField("test_accuracy") for b in run.best)


async def _status_of(call: Awaitable[object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value.code(), caught.value.details() or ""


async def test_bad_requests_get_the_documented_status_and_an_actionable_message(optimizer):
    stub = optimizer.stub
    code, details = await _status_of(stub.StartRun(pb.StartRunRequest(spec=small_spec(restarts=17))))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "restarts=17" in details and "1..16" in details
    code, details = await _status_of(stub.StartRun(pb.StartRunRequest(spec=small_spec(task_id="nope"))))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and f"this server has: {TASK}" in details
    code, details = await _status_of(stub.StartRun(pb.StartRunRequest()))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "task_id is required" in details
    code, _ = await _status_of(stub.GetRun(pb.GetRunRequest(run_id="0" * 32)))
    assert code == grpc.StatusCode.NOT_FOUND
    for bad in ("", "../../etc", "x" * 65):
        code, _ = await _status_of(stub.GetRun(pb.GetRunRequest(run_id=bad)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, _ = await _status_of(stub.CancelRun(pb.CancelRunRequest(run_id="f" * 32)))
    assert code == grpc.StatusCode.NOT_FOUND
    code, _ = await _status_of(_first(stub.WatchRun(pb.WatchRunRequest(run_id="f" * 32))))
    assert code == grpc.StatusCode.NOT_FOUND
    code, _ = await _status_of(stub.ResumeRun(pb.ResumeRunRequest(run_id="f" * 32)))
    assert code == grpc.StatusCode.NOT_FOUND
    assert list((await stub.ListRuns(pb.ListRunsRequest())).runs) == []  # nothing was created by the bad requests


async def _first(stream):
    return await anext(aiter(stream))


@pytest.mark.optimizer(scorer={"address": "127.0.0.1:9", "grace_s": 0.2})
async def test_an_unreachable_scorer_is_unavailable_at_start(optimizer):
    code, details = await _status_of(optimizer.stub.StartRun(pb.StartRunRequest(spec=small_spec())))
    assert code == grpc.StatusCode.UNAVAILABLE and "127.0.0.1:9" in details


@pytest.mark.optimizer(
    tokens=[
        {"name": "ops", "token": "ops-secret", "rights": ["run"]},
        {"name": "viewer", "token": "view-secret", "rights": []},
    ]
)
async def test_the_api_takes_bearer_tokens(optimizer):
    code, _ = await _status_of(optimizer.stub.ListRuns(pb.ListRunsRequest()))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    code, _ = await _status_of(
        optimizer.stub.ListRuns(pb.ListRunsRequest(), metadata=(("authorization", "Bearer view-secret"),))
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    reply = await optimizer.stub.ListRuns(pb.ListRunsRequest(), metadata=(("authorization", "Bearer ops-secret"),))
    assert list(reply.runs) == []


async def test_list_runs_shows_every_run_with_its_label_newest_first(optimizer):
    first, _ = await optimizer.run_to_end(restarts=1, resets=1, iterations=1, label="first")
    second, _ = await optimizer.run_to_end(restarts=1, resets=1, iterations=1, label="second")
    runs = (await optimizer.stub.ListRuns(pb.ListRunsRequest())).runs
    assert [(r.run_id, r.spec.label) for r in runs] == [(second.run_id, "second"), (first.run_id, "first")]
    assert runs[0].spec.restarts == 0  # a summary by default (RUN_VIEW_BASIC); the spec in full on request:
    runs = (await optimizer.stub.ListRuns(pb.ListRunsRequest(view=pb.RUN_VIEW_FULL))).runs
    assert runs[0].spec.restarts == 1 and runs[0].spec.templates_per_call == 2 and runs[0].spec.temperature == 1.0


def _sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_metrics_count_what_a_run_did(optimizer):
    names = [
        ("optimizer_llm_calls_total", {"model": "scripted-model", "outcome": "success"}),
        ("optimizer_llm_tokens_total", {"model": "scripted-model", "kind": "prompt"}),
        ("optimizer_candidates_total", {"outcome": "scored"}),
        ("optimizer_scorer_calls_total", {"code": "OK"}),
        ("optimizer_llm_request_duration_seconds_count", {"model": "scripted-model"}),
    ]
    before = [_sample(name, **labels) for name, labels in names]
    run, _ = await optimizer.run_to_end(ensemble_size=1)
    after = [_sample(name, **labels) for name, labels in names]
    # the distinct seeds + 8 iterations x 2 templates scored; 1 + 8 train Score calls and 1 on test for the final best.
    assert run.counters.templates_scored > 8 * 2
    assert [a - b for a, b in zip(after, before, strict=True)] == [
        8,
        8 * 40,
        run.counters.templates_scored,
        1 + 8 + 1,
        8,
    ]
    assert _sample("optimizer_runs", state="SUCCEEDED") == 1 and _sample("optimizer_runs", state="RUNNING") == 0
    assert (
        REGISTRY.get_sample_value("optimizer_run_best_train_accuracy", {"run_id": run.run_id}) is None
    )  # gone when it ended


@pytest.mark.optimizer(llm={"timeout_s": 0.5})
@pytest.mark.parametrize(
    "fault",
    [
        Fail(429, {"retry-after": "0.01"}),
        Fail(500),
        Fail(503),
        Delay(1.0, Reply("- too late {}")),
        Drop(),
        TRUNCATED_JSON,
        EMPTY_CHOICES,
        NOT_UTF8,
        GARBAGE,
    ],
    ids=["429", "500", "503", "timeout", "connection-reset", "truncated-json", "empty-choices", "not-utf8", "garbage"],
)
async def test_llm_fault_matrix_each_fault_is_retried_and_the_run_finishes(optimizer, fault):
    optimizer.llm.plan(fault)
    run, _ = await optimizer.run_to_end(restarts=1)
    assert (run.state, run.stop_reason) == (pb.RUN_STATE_SUCCEEDED, "finished")
    c = run.counters
    assert (c.iterations_done, c.llm_calls, c.llm_errors) == (4, 4, 1)
    assert c.templates_scored == 6 + 4 * 2  # the retried question still brought its templates
    first_call = [s.answered for s in optimizer.llm.seen if s.call_id.endswith("/0/0/0")]
    assert len(first_call) == 2 and first_call[-1] == "reply"


async def test_a_run_with_the_same_spec_asks_afresh_and_replaying_is_explicit(optimizer):
    first, _ = await optimizer.run_to_end(seed=7)
    asked = len(optimizer.llm.seen)
    independent, _ = await optimizer.run_to_end(seed=7)  # another trial of the same spec: not the first one's replies
    assert (independent.counters.llm_calls, independent.counters.llm_cache_hits) == (8, 0)
    assert len(optimizer.llm.seen) == asked + 8
    replay, _ = await optimizer.run_to_end(seed=7, replay_run_id=first.run_id)
    assert len(optimizer.llm.seen) == asked + 8  # not one new LLM request
    assert (replay.counters.llm_calls, replay.counters.llm_cache_hits, replay.counters.llm_prompt_tokens) == (0, 8, 0)
    assert [b.template for b in replay.best] == [b.template for b in first.best]
    code, details = await _status_of(
        optimizer.stub.StartRun(pb.StartRunRequest(spec=small_spec(replay_run_id="f" * 32)))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "no run" in details
