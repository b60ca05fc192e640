"""The fairness row of `make reliability`: one hostile owner against one normal owner, on the same real services.

The scorer (tiny random CLIP) and the optimizer (scripted LLM, each reply after
0.5 s) run as processes on loopback with their shipped share defaults
(--max-concurrent-rpcs 256, --max-rpcs-per-owner 64, --max-streams-per-owner
16, --max-runs-per-owner 20, --run-max-scored-templates 2000,
--owner-max-scored-templates 20000, fair active-run slots). Each of the
normal owner's four clients starts a small run, then loops over ListRuns,
GetRun of its run and a Score of two templates, and a probe checks health every 0.2 s; their success
rate and p99 latency are measured alone, then beside the hostile owner, who at
once opens WatchRun streams (300 tries), starts runs (150 tries) and scores
with 32 clients of 16 fresh templates each, for the whole phase.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from promptclimb.optimizer.v1 import optimizer_pb2 as pb
from promptclimb.optimizer.v1 import optimizer_pb2_grpc
from promptclimb.scorer.v1 import scorer_pb2, scorer_pb2_grpc
from promptclimb_common.channels import bearer_metadata
from promptclimb_common.errors import details_of
from testbed.random_clip import build_random_clip
from tests.fixtures import write_image_folder
from tests.optimizer.scripted_llm import Delay, ScriptedLLM, invented_templates
from tests.procs import optimizer_service, scorer_service, stop_process

TASK = "fair"
SECRETS = {"optimizer": "fair-optimizer-secret", "normal": "fair-normal-secret", "hostile": "fair-hostile-secret"}
STREAM_TRIES, RUN_TRIES, SCORING_CLIENTS = 300, 150, 32
SMALL_RUN = pb.RunSpec(
    task_id=TASK,
    initial_pool_size=4,
    restarts=1,
    resets=1,
    iterations=1,
    templates_per_call=2,
    max_scored_templates=100,
)
LONG_RUN = pb.RunSpec(task_id=TASK, initial_pool_size=4, restarts=16, resets=10, iterations=100)


@dataclass
class Tally:
    """The normal owner's calls: latencies of successes, codes of failures, and the health probe's answers."""

    latencies: list[float] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)
    health: Counter[str] = field(default_factory=Counter)

    def summary(self) -> str:
        calls = len(self.latencies) + sum(self.failures.values())
        ordered = sorted(self.latencies)
        p99 = 1000 * ordered[int(0.99 * (len(ordered) - 1))] if ordered else float("nan")
        failed = f" (failed: {dict(self.failures)})" if self.failures else ""
        return (
            f"{calls} calls, success {100 * len(self.latencies) / max(calls, 1):.1f}%{failed}, p99 {p99:.0f} ms, "
            f"health {self.health['SERVING']}/{sum(self.health.values())} SERVING"
        )


async def timed(tally: Tally, call: Awaitable[Message]) -> Message | None:
    started = time.perf_counter()
    try:
        reply = await call
    except grpc.aio.AioRpcError as err:
        tally.failures[f"{err.code().name} {details_of(err).reason}".strip()] += 1
        return None
    tally.latencies.append(time.perf_counter() - started)
    return reply


async def normal_owner(optimizer_address: str, scorer_address: str, seconds: float) -> Tally:
    tally = Tally()
    me = bearer_metadata(SECRETS["normal"])
    fresh = itertools.count()
    async with (
        grpc.aio.insecure_channel(optimizer_address) as optimizer_channel,
        grpc.aio.insecure_channel(scorer_address) as scorer_channel,
    ):
        optimizer = optimizer_pb2_grpc.OptimizerStub(optimizer_channel)
        scorer = scorer_pb2_grpc.ScorerStub(scorer_channel)
        health: Any = health_pb2_grpc.HealthStub(optimizer_channel)  # typeshed's HealthStub declares no methods
        deadline = time.perf_counter() + seconds

        async def client() -> None:
            started = await timed(
                tally, optimizer.StartRun(pb.StartRunRequest(spec=SMALL_RUN), metadata=me, timeout=10)
            )
            run_id = started.run_id if isinstance(started, pb.Run) else ""
            while time.perf_counter() < deadline:
                await timed(tally, optimizer.ListRuns(pb.ListRunsRequest(page_size=10), metadata=me, timeout=10))
                if run_id:
                    await timed(tally, optimizer.GetRun(pb.GetRunRequest(run_id=run_id), metadata=me, timeout=10))
                templates = [f"a normal photo {next(fresh)} of a {{}}.", "a photo of a {}."]
                request = scorer_pb2.ScoreRequest(task_id=TASK, templates=templates)
                await timed(tally, scorer.Score(request, metadata=bearer_metadata(SECRETS["normal"]), timeout=30))

        async def probe() -> None:
            while time.perf_counter() < deadline:
                try:
                    reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=2)
                    tally.health[health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)] += 1
                except grpc.aio.AioRpcError as err:
                    tally.health[err.code().name] += 1
                await asyncio.sleep(0.2)

        await asyncio.gather(*(client() for _ in range(4)), probe())
    return tally


async def hostile_owner(optimizer_address: str, scorer_address: str, stop: asyncio.Event) -> Counter[str]:
    """Streams, runs and scoring at once until `stop`; returns what it got (accepted, and refusals by reason)."""
    outcomes: Counter[str] = Counter()
    me = bearer_metadata(SECRETS["hostile"])
    fresh = itertools.count()

    def refused(what: str, err: grpc.aio.AioRpcError) -> None:
        outcomes[f"{what} refused {details_of(err).reason or err.code().name}"] += 1

    async with (
        grpc.aio.insecure_channel(optimizer_address) as optimizer_channel,
        grpc.aio.insecure_channel(scorer_address) as scorer_channel,
    ):
        optimizer = optimizer_pb2_grpc.OptimizerStub(optimizer_channel)
        scorer = scorer_pb2_grpc.ScorerStub(scorer_channel)
        first = await optimizer.StartRun(pb.StartRunRequest(spec=LONG_RUN), metadata=me, timeout=10)

        async def hold_stream() -> None:
            call = optimizer.WatchRun(pb.WatchRunRequest(run_id=first.run_id), metadata=me)
            try:
                await call.read()
                outcomes["streams held"] += 1
                await stop.wait()
            except grpc.aio.AioRpcError as err:
                refused("stream", err)
            finally:
                call.cancel()

        async def start_runs() -> None:
            for _ in range(RUN_TRIES):
                try:
                    await optimizer.StartRun(pb.StartRunRequest(spec=LONG_RUN), metadata=me, timeout=10)
                    outcomes["runs started"] += 1
                except grpc.aio.AioRpcError as err:
                    refused("run", err)

        async def score() -> None:
            while not stop.is_set():
                templates = [f"hostile {next(fresh)} of a {{}}." for _ in range(16)]
                try:
                    await scorer.Score(scorer_pb2.ScoreRequest(task_id=TASK, templates=templates), metadata=me)
                    outcomes["scores answered"] += 1
                except grpc.aio.AioRpcError as err:
                    refused("score", err)

        await asyncio.gather(
            *(hold_stream() for _ in range(STREAM_TRIES)), start_runs(), *(score() for _ in range(SCORING_CLIENTS))
        )
    return outcomes


async def with_hostile(optimizer_address: str, scorer_address: str, seconds: float) -> tuple[Tally, Counter[str]]:
    stop = asyncio.Event()
    hostile = asyncio.create_task(hostile_owner(optimizer_address, scorer_address, stop))
    await asyncio.sleep(2)  # the hostile owner's streams and runs are in place first
    tally = await normal_owner(optimizer_address, scorer_address, seconds)
    stop.set()
    return tally, await hostile


def tokens_file(path: Path, rights: list[str]) -> Path:
    entries = [{"name": name, "token": secret, "rights": rights} for name, secret in SECRETS.items()]
    path.write_text(json.dumps({"tokens": entries}))
    return path


def fairness_row(seconds: float) -> str:
    work = Path(tempfile.mkdtemp(prefix="promptclimb-fairness-"))
    model = build_random_clip(work / "model", "tiny")
    data = write_image_folder(work / "data", per_class=6)
    scorer = scorer_service(
        model,
        {TASK: data},
        work / "cache",
        work / "scorer.log",
        "--tokens-file",
        str(tokens_file(work / "s.json", ["score"])),
    )
    answer = invented_templates(itertools.count())
    with ScriptedLLM(default=lambda body: Delay(0.5, answer(body))) as llm:
        optimizer = optimizer_service(
            work / "state",
            scorer.address,
            llm.url,
            tokens_file(work / "o.json", ["run"]),
            work / "optimizer.log",
            SECRETS["optimizer"],
        )
        try:
            alone = asyncio.run(normal_owner(optimizer.address, scorer.address, seconds))
            beside, hostile = asyncio.run(with_hostile(optimizer.address, scorer.address, seconds))
        finally:
            stop_process(optimizer.process)
            stop_process(scorer.process)
    got = ", ".join(f"{what} {count}" for what, count in sorted(hostile.items()))
    return (
        f"| fairness: one hostile owner (WatchRun streams x{STREAM_TRIES}, StartRun x{RUN_TRIES}, Score "
        f"{SCORING_CLIENTS} clients x 16 templates) vs one normal owner (4 clients), {seconds:.0f} s each | "
        f"normal alone: {alone.summary()}; beside the hostile owner: {beside.summary()}; the hostile owner got: "
        f"{got} | normal success 100%, health always SERVING, the hostile owner held to its shares |"
    )
