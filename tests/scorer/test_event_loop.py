"""A big Score call leaves the event loop free: health checks and small calls answer while it is scored.

The big call is 256 fresh templates x 1,000 classes: tokenizing its 256,000 prompts, encoding them and
computing the accuracies take the scorer many seconds, none of which may stall the calls beside it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, replace

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from promptclimb.scorer.v1 import scorer_pb2, scorer_pb2_grpc
from scorer_service.config import TaskSource
from tests.fixtures import write_image_folder
from tests.scorer.conftest import serve_scorer

BIG_TEMPLATES, BIG_CLASSES = 256, 1000


@pytest.fixture(scope="module")
def many_classes_dir(tmp_path_factory):
    """1,000 classes, one train and one test image each."""
    classes = tuple(f"class number {i}" for i in range(BIG_CLASSES))
    return write_image_folder(tmp_path_factory.mktemp("many-classes"), classes=classes, per_class=2, size=8)


@dataclass
class Probe:
    """Calls sent one after another until `busy` ends: each one's latency and when it was answered."""

    latencies: list[float] = field(default_factory=list)
    answered_at: list[float] = field(default_factory=list)

    async def run(self, call, busy: asyncio.Future) -> None:
        while not busy.done():
            started = time.perf_counter()
            await call()
            self.latencies.append(time.perf_counter() - started)
            self.answered_at.append(time.perf_counter())

    def answered_before(self, moment: float) -> list[float]:
        return [latency for latency, at in zip(self.latencies, self.answered_at, strict=True) if at < moment]


def score_requests_seen() -> float:
    return REGISTRY.get_sample_value("scorer_token_requests_total", {"token": "anonymous", "split": "train"}) or 0.0


async def test_health_and_small_calls_answer_while_a_big_request_is_scored(base_config, many_classes_dir, tmp_path):
    config = replace(base_config, tasks=(*base_config.tasks, TaskSource("many", many_classes_dir)), shots=1,
                     max_templates_per_request=BIG_TEMPLATES, max_queued_prompts=BIG_TEMPLATES * BIG_CLASSES,
                     cache_dir=tmp_path / "features", state_dir=tmp_path / "state")
    async for _, channel in serve_scorer(config):
        stub, health = scorer_pb2_grpc.ScorerStub(channel), health_pb2_grpc.HealthStub(channel)
        cached = scorer_pb2.ScoreRequest(task_id="shapes", templates=["a cached photo of a {}."])
        await stub.Score(cached)  # its prompts are in the text cache from now on

        seen = score_requests_seen()
        big_request = scorer_pb2.ScoreRequest(task_id="many", templates=[f"a photo {i} of a {{}}." for i in range(BIG_TEMPLATES)])
        started = time.perf_counter()
        big = asyncio.ensure_future(stub.Score(big_request, timeout=900))
        finished_at: dict[str, float] = {}
        big.add_done_callback(lambda _: finished_at.setdefault("big", time.perf_counter()))
        while score_requests_seen() == seen:  # the server has taken the big call in and is scoring it
            await asyncio.sleep(0.001)

        async def fresh_call():
            fresh_request = scorer_pb2.ScoreRequest(task_id="shapes", templates=["a fresh photo of a {}."])
            reply = await stub.Score(fresh_request, timeout=900)
            finished_at["fresh"] = time.perf_counter()
            return reply

        health_probe, score_probe = Probe(), Probe()
        fresh, _, _ = await asyncio.gather(
            fresh_call(),
            health_probe.run(lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=900), big),
            score_probe.run(lambda: stub.Score(cached, timeout=900), big),
        )
        reply = await big
        big_seconds = finished_at["big"] - started

    assert [(r.error, r.total) for r in reply.results] == [("", BIG_CLASSES)] * BIG_TEMPLATES
    assert fresh.results[0].total == 4 and not fresh.results[0].error  # shapes: 4 classes, 1 shot
    # A small call that needs the encoder, sent while the big one was being tokenized, did not wait for it.
    assert finished_at["fresh"] < finished_at["big"]
    for probe in (health_probe, score_probe):
        during = probe.answered_before(finished_at["big"])
        assert len(during) >= 5, (len(during), big_seconds)
        # No call waited for a slice of the big one's work: each answered in a small part of its time.
        assert max(during) < big_seconds / 10, (max(during), big_seconds)
