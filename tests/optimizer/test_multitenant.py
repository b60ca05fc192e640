"""The optimizer as shared infrastructure: runs belong to their owner, test accuracy only for the test right,
LLM spend bounded by the service, and a spent scorer budget that stops a run at once (resumable once raised)."""

from __future__ import annotations

import json
import re
import signal
import time
import urllib.request

import grpc
import pytest

from optimizer_service.config import ScorerSettings
from optimizer_service.prices import Price
from optimizer_service.report import write_report
from optimizer_service.spec import RunLimits
from promptclimb.optimizer.v1 import optimizer_pb2 as pb
from promptclimb_common.errors import details_of
from tests.optimizer.conftest import TASK, open_optimizer, small_spec
from tests.procs import await_until, log_events, scorer_service, start_scorer, stop_process

TOKENS = [
    {"name": "alice", "token": "alice-secret", "rights": ["run"]},
    {"name": "bob", "token": "bob-secret", "rights": ["run"]},
    {"name": "carol", "token": "carol-secret", "rights": ["run", "test"]},
    {"name": "root", "token": "root-secret", "rights": ["run", "admin"]},
]


def as_(name: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {name}-secret"),)


async def refusal(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def run_as(optimizer, name: str, **spec) -> tuple[pb.Run, list[pb.RunEvent]]:
    run_id = (await optimizer.stub.StartRun(pb.StartRunRequest(spec=small_spec(**spec)), metadata=as_(name))).run_id
    events = [e async for e in optimizer.stub.WatchRun(pb.WatchRunRequest(run_id=run_id), metadata=as_(name))]
    return await optimizer.stub.GetRun(pb.GetRunRequest(run_id=run_id), metadata=as_(name)), events


async def _first(stream):
    async for item in stream:
        return item
    raise AssertionError("the stream ended before its first item")


@pytest.mark.optimizer(tokens=TOKENS)
async def test_runs_belong_to_their_owner_and_admins_see_all(optimizer):
    stub = optimizer.stub
    run, _ = await run_as(optimizer, "alice", restarts=1, resets=1, iterations=1)
    assert run.state == pb.RUN_STATE_SUCCEEDED and run.owner == "alice"
    for call in (
        stub.GetRun(pb.GetRunRequest(run_id=run.run_id), metadata=as_("bob")),
        stub.CancelRun(pb.CancelRunRequest(run_id=run.run_id), metadata=as_("bob")),
        stub.ResumeRun(pb.ResumeRunRequest(run_id=run.run_id), metadata=as_("bob")),
        _first(stub.WatchRun(pb.WatchRunRequest(run_id=run.run_id), metadata=as_("bob"))),
    ):
        details = details_of(await refusal(call))
        assert (details.code, details.reason) == (grpc.StatusCode.NOT_FOUND, "RUN_NOT_FOUND")
    assert list((await stub.ListRuns(pb.ListRunsRequest(), metadata=as_("bob"))).runs) == []
    replay = details_of(
        await refusal(stub.StartRun(pb.StartRunRequest(spec=small_spec(replay_run_id=run.run_id)), metadata=as_("bob")))
    )
    assert replay.code == grpc.StatusCode.INVALID_ARGUMENT and replay.fields == ("spec.replay_run_id",)
    assert [r.run_id for r in (await stub.ListRuns(pb.ListRunsRequest(), metadata=as_("alice"))).runs] == [run.run_id]
    assert [r.owner for r in (await stub.ListRuns(pb.ListRunsRequest(), metadata=as_("root"))).runs] == ["alice"]
    assert (await stub.GetRun(pb.GetRunRequest(run_id=run.run_id), metadata=as_("root"))).run_id == run.run_id


def _test_numbers(run: pb.Run) -> list[float]:
    numbers = [b.test_accuracy for b in [*run.best, run.selected] if b.HasField("test_accuracy")]
    return numbers + ([run.ensemble.test_accuracy] if run.ensemble.HasField("test_accuracy") else [])


@pytest.mark.optimizer(tokens=TOKENS)  # the service's scorer token has the scorer's test right
async def test_a_run_only_caller_gets_no_test_number_by_any_path(optimizer, tmp_path):
    given = [
        "a {}",
        "the {}",
        "a photo of a {}.",
        "{} here",
        "art of a {}",
        "my {}",
        "one {}",
        "some {}",
        "big {}",
        "{}",
    ]
    spec = {
        "initial_pool": pb.INITIAL_POOL_GIVEN,
        "initial_templates": given,
        "initial_pool_size": 0,
        "restarts": 1,
        "max_scored_templates": 10,
        "report_top": 50,
    }
    run, events = await run_as(optimizer, "alice", **spec)
    assert run.state == pb.RUN_STATE_SUCCEEDED and len(run.best) == 10 and run.counters.llm_calls == 0
    assert _test_numbers(run) == []
    ended = [e.run_ended for e in events if e.HasField("run_ended")]
    assert ended and not any(b.HasField("test_accuracy") for b in [*ended[0].best, ended[0].selected])
    assert not ended[0].ensemble.HasField("test_accuracy")
    listed = (await optimizer.stub.ListRuns(pb.ListRunsRequest(), metadata=as_("alice"))).runs
    assert [_test_numbers(r) for r in listed] == [[]]
    # The scorer was never asked for the test split: nothing was measured to hide.
    assert optimizer.store.test_accuracies(run.run_id) == {} and optimizer.store.ensemble(run.run_id)[2] is None
    (tmp_path / "report").mkdir()
    write_report(tmp_path / "report", run, optimizer.store.candidates(run.run_id))
    assert "test_accuracy" not in (tmp_path / "report" / "result.json").read_text()
    # An admin without the test right sees alice's run, and still no test number.
    assert _test_numbers(await optimizer.stub.GetRun(pb.GetRunRequest(run_id=run.run_id), metadata=as_("root"))) == []

    tested, tested_events = await run_as(optimizer, "carol", **spec)  # a test right of her own
    assert len(_test_numbers(tested)) == 10 + 1 + 1  # the best 10, the selection (the best 1st), the ensemble
    assert any(b.HasField("test_accuracy") for e in tested_events if e.HasField("run_ended") for b in e.run_ended.best)


@pytest.mark.optimizer(
    limits=RunLimits(allowed_models=frozenset({"cheap-model"}), max_llm_calls=3, max_llm_tokens=10_000),
    llm={"price": Price(1000.0, 1000.0)},
)
async def test_the_service_bounds_llm_spend(optimizer):
    stub = optimizer.stub
    refused = details_of(await refusal(stub.StartRun(pb.StartRunRequest(spec=small_spec(llm_model="paid-model")))))
    assert (refused.code, refused.reason, refused.fields) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "MODEL_NOT_ALLOWED",
        ("spec.llm_model",),
    )
    assert "cheap-model" in refused.message and "scripted-model" in refused.message
    above = details_of(await refusal(stub.StartRun(pb.StartRunRequest(spec=small_spec(max_llm_calls=4)))))
    assert above.fields == ("spec.max_llm_calls",) and "ceiling of 3" in above.message
    run, _ = await optimizer.run_to_end(restarts=1)  # the spec sets no limit: the service's ceiling applies
    assert (run.state, run.stop_reason, run.counters.llm_calls) == (pb.RUN_STATE_SUCCEEDED, "max_llm_calls", 3)
    assert (run.spec.max_llm_calls, run.spec.max_llm_tokens) == (3, 10_000)
    # 52 tokens a call at $1000 per million: $0.052 a call, so a $0.1 ceiling stops after the second call.
    costly, _ = await optimizer.run_to_end(restarts=1, llm_model="cheap-model", max_llm_cost_usd=0.1)
    assert (costly.stop_reason, costly.counters.llm_calls, costly.spec.llm_model) == (
        "max_llm_cost_usd",
        2,
        "cheap-model",
    )


@pytest.mark.optimizer(limits=RunLimits(max_llm_cost_usd=1.0, priced=False))
async def test_a_cost_limit_without_prices_is_refused(optimizer):
    refused = details_of(
        await refusal(optimizer.stub.StartRun(pb.StartRunRequest(spec=small_spec(max_llm_cost_usd=0.5))))
    )
    assert refused.fields == ("spec.max_llm_cost_usd",) and "LLM model has no price" in refused.message


async def test_a_spent_scorer_budget_stops_the_run_at_once_and_it_resumes_once_raised(
    tiny_clip_dir, image_task_dir, llm, tmp_path
):
    tokens = tmp_path / "scorer-tokens.json"

    def grant(budget: int) -> None:
        tokens.write_text(
            json.dumps(
                {
                    "tokens": [
                        {"name": "optimizer", "token": "budget-token", "rights": ["score"], "evaluation_budget": budget}
                    ]
                }
            )
        )

    grant(8)
    process, address = start_scorer(
        tiny_clip_dir,
        {TASK: image_task_dir},
        tmp_path / "cache",
        tmp_path / "scorer.log",
        "--shots",
        "3",
        "--tokens-file",
        str(tokens),
    )
    try:
        patient = ScorerSettings(address=address, token="budget-token", deadline_s=10.0, grace_s=60.0)
        async with open_optimizer(patient, llm, tmp_path / "state") as optimizer:
            started = time.monotonic()
            run, _ = await optimizer.run_to_end(restarts=1, resets=1, iterations=3, ensemble_size=1)
            assert time.monotonic() - started < 20  # not the 60 s grace: a spent budget is not retried
            assert run.state == pb.RUN_STATE_FAILED
            assert run.stop_reason.startswith("evaluation_budget_spent:") and "ResumeRun" in run.stop_reason
            # The budget is the optimizer's scorer token's, shared by every caller: its name and usage are not told.
            assert "'optimizer'" not in run.stop_reason and "of 8" not in run.stop_reason
            assert run.counters.templates_scored <= 8

            grant(100)
            process.send_signal(signal.SIGHUP)  # the scorer rereads its tokens without a restart
            await await_until(
                lambda: "tokens_reloaded" in {e["event"] for e in log_events(tmp_path / "scorer.log")},
                10,
                "the scorer's tokens_reloaded",
            )
            await optimizer.stub.ResumeRun(pb.ResumeRunRequest(run_id=run.run_id))
            async for _ in optimizer.stub.WatchRun(pb.WatchRunRequest(run_id=run.run_id)):
                pass
            resumed = await optimizer.stub.GetRun(pb.GetRunRequest(run_id=run.run_id))
            assert (resumed.state, resumed.stop_reason) == (pb.RUN_STATE_SUCCEEDED, "finished")
            assert resumed.counters.iterations_done == 3
    finally:
        stop_process(process, signal.SIGTERM)


async def test_the_scorer_client_retries_a_rate_limit_after_the_delay_the_scorer_names(
    tiny_clip_dir, image_task_dir, llm, tmp_path
):
    tokens = tmp_path / "scorer-tokens.json"
    tokens.write_text(
        json.dumps(
            {
                "tokens": [
                    {
                        "name": "optimizer",
                        "token": "paced-token",
                        "rights": ["score"],
                        "requests_per_second": 2,
                        "burst": 1,
                    }
                ]
            }
        )
    )
    scorer = scorer_service(
        tiny_clip_dir,
        {TASK: image_task_dir},
        tmp_path / "cache",
        tmp_path / "scorer.log",
        "--shots",
        "3",
        "--tokens-file",
        str(tokens),
        metrics=True,
    )
    process, address = scorer.process, scorer.address
    try:
        settings = ScorerSettings(address=address, token="paced-token", deadline_s=10.0, grace_s=30.0)
        async with open_optimizer(settings, llm, tmp_path / "state") as optimizer:
            started = time.monotonic()
            run, _ = await optimizer.run_to_end(restarts=1, resets=1, iterations=3, ensemble_size=1)
            elapsed = time.monotonic() - started
        metrics = urllib.request.urlopen(scorer.metrics_url, timeout=5).read().decode()
    finally:
        stop_process(process, signal.SIGTERM)
    assert (run.state, run.stop_reason) == (pb.RUN_STATE_SUCCEEDED, "finished")
    refused = sum(
        float(v)
        for v in re.findall(
            r'^grpc_server_handled_total\{.*grpc_code="RESOURCE_EXHAUSTED".*\} (\S+)$', metrics, re.MULTILINE
        )
    )
    # ListTasks twice, 1 + 3 train Score calls and 1 on test (refused: no test right), at 2 a second after a burst of 1:
    # at least 2.5 s of waits. Each retry waits the scorer's RetryInfo delay, so about one refusal per admitted call,
    # not a burst of early retries.
    assert elapsed >= 2.5 and 1 <= refused <= 2 * 7, (elapsed, refused)
