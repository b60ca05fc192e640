"""The optimizer's API conventions: StartRun returns the Run and is idempotent by request_id, across a restart too;
ListRuns pages newest first and filters by state; times are Timestamps."""

from __future__ import annotations

import grpc

from promptclimb.optimizer.v1 import optimizer_pb2 as pb
from promptclimb.scorer.v1 import scorer_pb2, scorer_pb2_grpc
from tests.optimizer.conftest import SCORER_TOKENS, TASK, open_optimizer, small_spec
from tests.optimizer.test_scorer_restart import watch_to_end
from tests.optimizer.test_service import _status_of

TINY = {"restarts": 1, "resets": 1, "iterations": 1}


async def _scorer_digest(scorer) -> str:
    async with grpc.aio.insecure_channel(scorer.address) as channel:
        task = await scorer_pb2_grpc.ScorerStub(channel).GetTask(
            scorer_pb2.GetTaskRequest(task_id=TASK),
            metadata=(("authorization", f"Bearer {SCORER_TOKENS['optimizer'][0]}"),),
        )
    return task.model_digest


async def test_start_run_returns_the_run_pinned_to_the_scorers_model(optimizer, scorer):
    run = await optimizer.stub.StartRun(pb.StartRunRequest(spec=small_spec(**TINY, label="pinned")))
    assert run.state in (pb.RUN_STATE_PENDING, pb.RUN_STATE_RUNNING) and run.spec.label == "pinned"
    assert run.model_digest == await _scorer_digest(scorer)
    assert run.create_time.seconds > 0 and run.update_time.ToNanoseconds() >= run.create_time.ToNanoseconds()
    ended = await watch_to_end(optimizer.stub, run.run_id)
    assert ended.state == pb.RUN_STATE_SUCCEEDED and ended.model_digest == run.model_digest
    events = [e async for e in optimizer.stub.WatchRun(pb.WatchRunRequest(run_id=run.run_id))]
    times = [e.time.ToNanoseconds() for e in events]
    assert (
        times == sorted(times)
        and run.create_time.ToNanoseconds() <= times[0] <= times[-1] <= ended.update_time.ToNanoseconds()
    )


async def test_a_repeated_request_id_returns_the_same_run_also_after_a_restart(scorer, llm, tmp_path):
    spec = small_spec(**TINY)
    request = pb.StartRunRequest(spec=spec, request_id="7f1c0e5a-retry")
    async with open_optimizer(scorer.settings(), llm, tmp_path / "state") as optimizer:
        first = await optimizer.stub.StartRun(request)
        again = await optimizer.stub.StartRun(request)
        assert again.run_id == first.run_id
        await watch_to_end(optimizer.stub, first.run_id)
    async with open_optimizer(scorer.settings(), llm, tmp_path / "state") as restarted:
        after_restart = await restarted.stub.StartRun(request)
        assert (after_restart.run_id, after_restart.state) == (first.run_id, pb.RUN_STATE_SUCCEEDED)
        assert [r.run_id for r in (await restarted.stub.ListRuns(pb.ListRunsRequest())).runs] == [first.run_id]
        code, details = await _status_of(
            restarted.stub.StartRun(pb.StartRunRequest(spec=small_spec(**TINY, seed=9), request_id="7f1c0e5a-retry"))
        )
        assert code == grpc.StatusCode.ALREADY_EXISTS and first.run_id in details and "another spec" in details
        for bad in ("x" * 65, "no spaces", "ünïcode"):
            code, details = await _status_of(restarted.stub.StartRun(pb.StartRunRequest(spec=spec, request_id=bad)))
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "request_id" in details
        fresh = await restarted.stub.StartRun(pb.StartRunRequest(spec=spec))  # no request_id: always a new run
        assert fresh.run_id != first.run_id


async def test_list_runs_pages_newest_first_and_filters_by_state(optimizer):
    stub = optimizer.stub
    finished = [(await optimizer.run_to_end(**TINY, label=str(i)))[0].run_id for i in range(3)]
    cancelled = await stub.StartRun(pb.StartRunRequest(spec=small_spec(iterations=50)))
    await stub.CancelRun(pb.CancelRunRequest(run_id=cancelled.run_id))
    newest_first = [cancelled.run_id, *reversed(finished)]

    seen, token = [], ""
    for _ in range(3):
        page = await stub.ListRuns(pb.ListRunsRequest(page_size=3, page_token=token))
        seen += [r.run_id for r in page.runs]
        token = page.next_page_token
        if not token:
            break
    assert seen == newest_first and not token

    succeeded = await stub.ListRuns(pb.ListRunsRequest(page_size=2, states=[pb.RUN_STATE_SUCCEEDED]))
    assert [r.run_id for r in succeeded.runs] == newest_first[1:3] and succeeded.next_page_token
    rest = await stub.ListRuns(
        pb.ListRunsRequest(page_size=2, page_token=succeeded.next_page_token, states=[pb.RUN_STATE_SUCCEEDED])
    )
    assert [r.run_id for r in rest.runs] == newest_first[3:] and rest.next_page_token == ""
    ended = await stub.ListRuns(pb.ListRunsRequest(states=[pb.RUN_STATE_CANCELLED, pb.RUN_STATE_FAILED]))
    assert [r.run_id for r in ended.runs] == [cancelled.run_id]

    for request, fragment in [
        (pb.ListRunsRequest(page_token=succeeded.next_page_token), "another filter"),
        (pb.ListRunsRequest(page_token="garbage"), "not one this service issued"),
        (pb.ListRunsRequest(page_size=-5), "page_size"),
        (pb.ListRunsRequest(states=[pb.RUN_STATE_UNSPECIFIED]), "not a run state"),
        (pb.ListRunsRequest(states=[42]), "not a run state"),  # type: ignore[list-item]  # no such state, on purpose
    ]:
        code, details = await _status_of(stub.ListRuns(request))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and fragment in details, (request, details)
