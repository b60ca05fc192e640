"""One quota across replicas: two real scorer processes share a token's budget and rate through a real redis-server.

The figures of the budget test (replicas, clients, budget, scored, over-spend) go
to the file named by $PROMPTCLIMB_QUOTA_FIGURES when it is set (`make
reliability` reads them into the README's Guarantees).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import grpc
import pytest

from promptclimb.scorer.v1 import scorer_pb2, scorer_pb2_grpc
from promptclimb_common.errors import details_of
from tests.procs import start_redis, start_scorer, stop_process

REPLICAS, CLIENTS, BUDGET = 2, 16, 60
RATE, BURST, RATE_WINDOW_S = 4.0, 4.0, 3.0
SHARED = (("authorization", "Bearer shared-secret"),)
PACED = (("authorization", "Bearer paced-secret"),)


@pytest.fixture(scope="module")
def replicas(tiny_clip_dir, image_task_dir, tmp_path_factory):
    """Two scorer processes on one Redis, with a budgeted token and a rate-limited one."""
    root = tmp_path_factory.mktemp("shared-quota")
    redis_process, url = start_redis(root / "redis")
    tokens = root / "tokens.json"
    tokens.write_text(
        json.dumps(
            {
                "tokens": [
                    {"name": "shared", "token": "shared-secret", "rights": ["score"], "evaluation_budget": BUDGET},
                    {
                        "name": "paced",
                        "token": "paced-secret",
                        "rights": ["score"],
                        "requests_per_second": RATE,
                        "burst": BURST,
                    },
                ]
            }
        )
    )
    started = []
    try:
        for index in range(REPLICAS):
            started.append(
                start_scorer(
                    tiny_clip_dir,
                    {"shapes": image_task_dir},
                    root / f"cache-{index}",
                    root / f"scorer-{index}.log",
                    "--tokens-file",
                    str(tokens),
                    "--quota-store",
                    url,
                )
            )
        yield [address for _, address in started]
    finally:
        for process, _ in started:
            stop_process(process, signal.SIGTERM)
        stop_process(redis_process, signal.SIGTERM)


async def test_many_clients_on_two_replicas_never_spend_more_than_the_budget(replicas):
    channels = [grpc.aio.insecure_channel(address) for address in replicas]
    stubs = [scorer_pb2_grpc.ScorerStub(channel) for channel in channels]
    scored, refusals = 0, []

    async def client(index: int) -> None:
        nonlocal scored
        for call in range(BUDGET):
            stub = stubs[(index + call) % REPLICAS]  # every client alternates between the replicas
            try:
                request = scorer_pb2.ScoreRequest(task_id="shapes", templates=[f"c{index} n{call} {{}}"])
                reply = await stub.Score(request, metadata=SHARED, timeout=30)
            except grpc.aio.AioRpcError as err:
                refusals.append(details_of(err).reason)
                return
            scored += sum(1 for r in reply.results if not r.error)

    try:
        await asyncio.gather(*(client(i) for i in range(CLIENTS)))
    finally:
        for channel in channels:
            await channel.close()
    assert scored == BUDGET  # every evaluation of the budget was used, and not one more
    assert refusals == ["EVALUATION_BUDGET_SPENT"] * CLIENTS
    figures = {
        "replicas": REPLICAS,
        "clients": CLIENTS,
        "budget": BUDGET,
        "scored": scored,
        "over_spend": scored - BUDGET,
    }
    if os.environ.get("PROMPTCLIMB_QUOTA_FIGURES"):
        Path(os.environ["PROMPTCLIMB_QUOTA_FIGURES"]).write_text(json.dumps(figures))


async def test_a_token_rate_holds_across_both_replicas(replicas):
    channels = [grpc.aio.insecure_channel(address) for address in replicas]
    stubs = [scorer_pb2_grpc.ScorerStub(channel) for channel in channels]
    admitted, limited = 0, 0
    deadline = time.monotonic() + RATE_WINDOW_S
    started = time.monotonic()
    try:
        call = 0
        while time.monotonic() < deadline:
            try:
                await stubs[call % REPLICAS].Score(
                    scorer_pb2.ScoreRequest(task_id="shapes", templates=["{}"]), metadata=PACED, timeout=30
                )
                admitted += 1
            except grpc.aio.AioRpcError as err:
                details = details_of(err)
                assert details.reason == "RATE_LIMITED" and details.retry_after_s is not None
                assert 0 < details.retry_after_s <= 1 / RATE + 0.01
                limited += 1
            call += 1
    finally:
        for channel in channels:
            await channel.close()
    elapsed = time.monotonic() - started
    # One bucket for both replicas: at most the burst plus the rate over the window (per-replica buckets would
    # admit about twice that).
    assert BURST <= admitted <= BURST + RATE * elapsed + 1, (admitted, elapsed)
    assert limited > admitted
