"""One owner cannot starve another: each has a share of the optimizer's calls, streams, runs and scoring, health always
answers, a revoked token's streams end at once, and no refusal names another tenant."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import cast

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from optimizer_service.climb import Counters
from optimizer_service.fair_slots import FairSlots
from optimizer_service.spec import OwnerShares, RunLimits, RunSettings
from promptclimb.optimizer.v1 import optimizer_pb2 as pb
from promptclimb_common.auth import parse_tokens
from promptclimb_common.errors import details_of
from tests.optimizer.conftest import TASK, small_spec
from tests.optimizer.scripted_llm import Delay, Reply
from tests.optimizer.test_multitenant import TOKENS, as_, refusal
from tests.procs import await_until

SLOW_LLM = {"timeout_s": 60.0}


def hold_the_llm(optimizer, calls: int = 40) -> None:
    """Every LLM call waits a minute: runs stay RUNNING or PENDING, and their streams open, for the test."""
    optimizer.llm.plan(*[Delay(60, Reply("a photo of a {}.")) for _ in range(calls)])


async def start(optimizer, name: str, **spec) -> str:
    reply: pb.Run = await optimizer.stub.StartRun(pb.StartRunRequest(spec=small_spec(**spec)), metadata=as_(name))
    return reply.run_id


async def health(optimizer) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{optimizer.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply: health_pb2.HealthCheckResponse = await stub.Check(  # type: ignore[attr-defined]  # typeshed's HealthStub declares no methods
            health_pb2.HealthCheckRequest(), timeout=2
        )
        return reply.status


def read_to_end(call) -> asyncio.Future:
    """A task that reads the stream to its end: None, or the status that ended it."""

    async def drain() -> grpc.aio.AioRpcError | None:
        try:
            async for _ in call:
                pass
        except grpc.aio.AioRpcError as err:
            return err
        return None

    return asyncio.ensure_future(drain())


@contextlib.asynccontextmanager
async def streams_of(optimizer, owner: str, run_id: str, count: int) -> AsyncIterator[list[asyncio.Future]]:
    """`count` WatchRun streams of `owner`, open (each holds its slot) until the block ends; yields their readers."""
    calls = [optimizer.stub.WatchRun(pb.WatchRunRequest(run_id=run_id), metadata=as_(owner)) for _ in range(count)]
    readers = [read_to_end(call) for call in calls]
    try:
        await await_until(
            lambda: optimizer.service.shares.in_progress(owner) >= count, 10, f"{count} streams of {owner}"
        )
        yield readers
    finally:
        for call in calls:
            call.cancel()
        await asyncio.gather(*readers, return_exceptions=True)


@pytest.mark.optimizer(
    tokens=TOKENS,
    llm=SLOW_LLM,
    serving={"max_concurrent_rpcs": 12, "max_rpcs_per_owner": 6, "max_streams_per_owner": 4},
)
async def test_one_owner_cannot_take_every_slot_and_health_always_answers(optimizer):
    hold_the_llm(optimizer)
    run_id = await start(optimizer, "alice")
    async with streams_of(optimizer, "alice", run_id, 4):
        refused = details_of(
            await refusal(optimizer.stub.WatchRun(pb.WatchRunRequest(run_id=run_id), metadata=as_("alice")).read())
        )
        assert (refused.code, refused.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "OWNER_SHARE_REACHED")
        assert refused.retry_after_s is not None and refused.metadata["scope"] == "owner_streams"
        assert "bob" not in refused.message and "alice" not in refused.message  # own figures only, no token names
        # Bob is served beside her, and so is the liveness probe.
        assert list((await optimizer.stub.ListRuns(pb.ListRunsRequest(), metadata=as_("bob"))).runs) == []
        assert (await start(optimizer, "bob")) != run_id
        assert await health(optimizer) == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.optimizer(tokens=TOKENS, llm=SLOW_LLM, serving={"max_concurrent_rpcs": 6, "max_rpcs_per_owner": 0})
async def test_health_answers_when_every_service_slot_is_taken(optimizer):
    hold_the_llm(optimizer)
    run_id = await start(optimizer, "alice")
    async with streams_of(optimizer, "alice", run_id, 6):
        full = details_of(await refusal(optimizer.stub.ListRuns(pb.ListRunsRequest(), metadata=as_("bob"))))
        assert (full.code, full.metadata.get("scope")) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "total")
        assert await health(optimizer) == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.optimizer(tokens=TOKENS, llm=SLOW_LLM)
async def test_a_revoked_tokens_open_streams_end_at_once(optimizer):
    hold_the_llm(optimizer)
    alice_run, bob_run = await start(optimizer, "alice"), await start(optimizer, "bob")
    async with streams_of(optimizer, "alice", alice_run, 3) as alice, streams_of(optimizer, "bob", bob_run, 1) as bob:
        without_alice = [t for t in TOKENS if t["name"] != "alice"]
        # What SIGHUP does: reread the tokens, then end the calls whose token is gone.
        optimizer.service.reload(
            lambda: optimizer.auth.reload(parse_tokens(json.dumps({"tokens": without_alice}), "t"))
        )
        ended = await asyncio.wait_for(asyncio.gather(*alice), 2)
        assert {e.code() if e else None for e in ended} == {grpc.StatusCode.UNAUTHENTICATED}
        assert not bob[0].done()  # bob's token is current: his stream stays
        assert optimizer.service.shares.in_progress("alice") == 0


@pytest.mark.optimizer(tokens=TOKENS, llm=SLOW_LLM, shares=OwnerShares(max_runs=2))
async def test_an_owner_has_a_share_of_the_waiting_runs(optimizer):
    hold_the_llm(optimizer)
    for _ in range(2):
        await start(optimizer, "alice")
    refused = details_of(await refusal(start(optimizer, "alice")))
    assert (refused.code, refused.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_RUNS")
    assert refused.metadata == {"limit": "2", "scope": "owner"} and refused.retry_after_s is not None
    assert await start(optimizer, "bob")  # the next user is not refused


@pytest.mark.optimizer(
    tokens=TOKENS,
    llm=SLOW_LLM,
    limits=RunLimits(max_scored_templates=10),
    shares=OwnerShares(max_scored_templates=25),
)
async def test_scored_templates_have_a_run_ceiling_and_an_owner_share(optimizer):
    hold_the_llm(optimizer)
    above = details_of(await refusal(start(optimizer, "alice", max_scored_templates=11)))
    assert above.code == grpc.StatusCode.INVALID_ARGUMENT and above.fields == ("spec.max_scored_templates",)
    first = await start(optimizer, "alice")  # 0 takes the ceiling
    run = await optimizer.stub.GetRun(pb.GetRunRequest(run_id=first), metadata=as_("alice"))
    assert run.spec.max_scored_templates == 10
    await start(optimizer, "alice", max_scored_templates=10)
    spent = details_of(await refusal(start(optimizer, "alice", max_scored_templates=10)))
    assert (spent.code, spent.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "OWNER_BUDGET_SPENT")
    assert spent.quota_subjects == ("owner:alice",) and spent.retry_after_s is None
    assert "20 of 25" in spent.message and "bob" not in spent.message
    assert await start(optimizer, "alice", max_scored_templates=5)  # what is left of her share
    assert await start(optimizer, "bob")  # his share is his own


async def test_list_runs_is_a_summary_by_default_and_the_full_runs_on_request(optimizer):
    """Twenty runs of 256 one-kilobyte templates each: a full page would pass the 4 MiB message limit."""
    templates = [f"a photo of a {{}}, number {i}: " + "x" * 990 for i in range(256)]
    spec = small_spec(initial_pool=pb.INITIAL_POOL_GIVEN, initial_templates=templates, initial_pool_size=256)
    settings = RunSettings.from_proto(spec, "scripted-model", RunLimits()).to_json()
    for i in range(20):
        await optimizer.store.create_run(f"bigrun{i}", settings, Counters().to_json(), "PENDING", owner="anonymous")
    page = await optimizer.stub.ListRuns(pb.ListRunsRequest(page_size=20))
    assert len(page.runs) == 20 and page.ByteSize() < 64 * 1024
    assert all(r.spec.task_id == TASK and not r.spec.initial_templates and len(r.best) <= 1 for r in page.runs)
    full = await optimizer.stub.ListRuns(pb.ListRunsRequest(page_size=20, view=pb.RUN_VIEW_FULL))
    assert len(full.runs) == 10 and full.next_page_token  # a full page holds at most 10 runs
    assert list(full.runs[0].spec.initial_templates) == templates
    rest = await optimizer.stub.ListRuns(
        pb.ListRunsRequest(page_size=20, view=pb.RUN_VIEW_FULL, page_token=full.next_page_token)
    )
    assert len(rest.runs) == 10 and not rest.next_page_token
    unknown = details_of(await refusal(optimizer.stub.ListRuns(pb.ListRunsRequest(view=cast(pb.RunView, 7)))))
    assert unknown.code == grpc.StatusCode.INVALID_ARGUMENT and unknown.fields == ("view",)


async def test_a_freed_run_slot_goes_to_the_owner_with_the_fewest_active_runs():
    """Alice queued three runs before Bob's one: with one slot, Bob's run goes second, not fourth."""
    slots, order, release = FairSlots(1), [], {}

    async def run(owner: str, name: str) -> None:
        async with slots.slot(owner):
            order.append(name)
            release[name] = asyncio.Event()
            await release[name].wait()

    tasks = [asyncio.create_task(run("alice", f"alice-{i}")) for i in range(3)]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(run("bob", "bob-0")))
    cancelled = asyncio.create_task(run("carol", "carol-0"))  # leaves the queue before its turn
    for _ in range(4):
        await await_until(lambda: order and not release[order[-1]].is_set(), 5, "a run holding the slot")
        if not cancelled.done():
            cancelled.cancel()
        release[order[-1]].set()
        await asyncio.sleep(0.01)
    await asyncio.gather(*tasks)
    assert order == ["alice-0", "bob-0", "alice-1", "alice-2"]
    assert slots.active("alice") == slots.active("bob") == 0
