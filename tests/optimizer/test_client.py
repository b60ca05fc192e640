"""promptclimb.client's Optimizer against the real service (real scorer, scripted LLM), with a bearer token."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from promptclimb.client import CallError, Optimizer, SyncOptimizer
from promptclimb.optimizer.v1 import optimizer_pb2 as pb
from tests.optimizer.conftest import small_spec


@pytest.mark.optimizer(tokens=[{"name": "ops", "token": "ops-secret", "rights": ["run"]}])
async def test_a_run_started_watched_and_read_through_the_client(optimizer):
    address = f"127.0.0.1:{optimizer.port}"
    async with Optimizer(address, token="ops-secret", deadline_s=30) as client:
        run_id = (
            await client.start_run(pb.StartRunRequest(spec=small_spec(restarts=1, resets=1, iterations=2)))
        ).run_id
        events = [event async for event in client.watch_run(pb.WatchRunRequest(run_id=run_id))]
        run = await client.get_run(pb.GetRunRequest(run_id=run_id))
        listed = await client.list_runs()
        with pytest.raises(CallError) as unknown:
            await client.get_run(pb.GetRunRequest(run_id="nosuchrun"))
    assert run.state == pb.RUN_STATE_SUCCEEDED and run.counters.iterations_done == 2
    assert events[-1].run_ended.state == pb.RUN_STATE_SUCCEEDED
    assert [r.run_id for r in listed.runs] == [run_id]
    assert unknown.value.code == grpc.StatusCode.NOT_FOUND and unknown.value.attempts == 1
    async with Optimizer(address, token="wrong") as stranger:
        with pytest.raises(CallError) as refused:
            await stranger.list_runs()
    assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.optimizer(tokens=[{"name": "ops", "token": "ops-secret", "rights": ["run"]}])
async def test_the_sync_client_starts_watches_and_reads_a_run(optimizer):
    """Called from a plain thread (a script's), while this test's loop serves the optimizer."""
    address = f"127.0.0.1:{optimizer.port}"

    def script() -> tuple[pb.Run, list[pb.RunEvent], pb.RunEvent]:
        with SyncOptimizer(address, token="ops-secret", deadline_s=30) as client:
            run_id = client.start_run(pb.StartRunRequest(spec=small_spec(restarts=1, resets=1, iterations=2))).run_id
            events = list(client.watch_run(pb.WatchRunRequest(run_id=run_id)))
            stream = client.watch_run(pb.WatchRunRequest(run_id=run_id))
            first = next(stream)
            stream.close()  # leaving early closes the stream on the client's loop
            return client.get_run(pb.GetRunRequest(run_id=run_id)), events, first

    run, events, first = await asyncio.to_thread(script)
    assert run.state == pb.RUN_STATE_SUCCEEDED and run.counters.iterations_done == 2
    assert events[-1].run_ended.state == pb.RUN_STATE_SUCCEEDED
    assert first == events[0]
