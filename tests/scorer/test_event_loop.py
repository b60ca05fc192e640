"""A big Score call leaves the event loop free, and a cancelled one leaves the scorer's threads.

The big call is 256 fresh templates x 1,000 classes: tokenizing its 256,000 prompts alone takes the scorer
seconds (about 12 here), encoding them a minute more, and none of it may stall the calls beside it. The test
watches the calls beside it for a while, then cancels it: the scorer must drop the rest of its work rather
than go on for nobody. (The encoder's side of dropping it is shown in test_batcher.)
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from promptclimb.scorer.v1 import scorer_pb2, scorer_pb2_grpc
from scorer_service.batcher import TextEncodeBatcher
from scorer_service.config import TaskSource
from scorer_service.datasets import build_task, load_image_folder
from scorer_service.factory import load_clip
from scorer_service.scoring import Abandoned, Candidates, TemplateScorer, TextEmbeddingCache
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
    """Calls sent one after another until `until` is set: each one's latency."""

    latencies: list[float] = field(default_factory=list)

    async def run(self, call, until: asyncio.Event) -> None:
        while not until.is_set():
            started = time.perf_counter()
            await call()
            self.latencies.append(time.perf_counter() - started)


def score_requests_seen() -> float:
    return REGISTRY.get_sample_value("scorer_token_requests_total", {"token": "anonymous", "split": "train"}) or 0.0


def prompts_encoded() -> float:
    return REGISTRY.get_sample_value("scorer_batch_prompts_sum") or 0.0


WATCH_SECONDS = 2.0  # how long the calls beside the big one are watched: a small part of its tokenizing alone


def abandoned_prompts() -> float:
    return REGISTRY.get_sample_value("scorer_abandoned_prompts_total") or 0.0


@dataclass
class Observed:
    """What the calls beside the big one saw, and what the scorer did once it was cancelled."""

    fresh: scorer_pb2.ScoreResponse
    later: scorer_pb2.ScoreResponse
    big_pending_at_cancel: bool
    probes: tuple[Probe, Probe]
    watched_seconds: float
    big_prompts_abandoned: float
    prompts_encoded: float


async def watch_a_big_call_then_cancel_it(channel) -> Observed:
    stub = scorer_pb2_grpc.ScorerStub(channel)
    health: Any = health_pb2_grpc.HealthStub(channel)  # types-grpcio-health-checking declares no methods on it
    cached = scorer_pb2.ScoreRequest(task_id="shapes", templates=["a cached photo of a {}."])
    await stub.Score(cached)  # its prompts are in the text cache from now on

    seen, encoded_before, abandoned_before = score_requests_seen(), prompts_encoded(), abandoned_prompts()
    big_templates = [f"a photo {i} of a {{}}." for i in range(BIG_TEMPLATES)]
    big_request = scorer_pb2.ScoreRequest(task_id="many", templates=big_templates)
    big = stub.Score(big_request, timeout=900)
    big_task = asyncio.ensure_future(big)
    while score_requests_seen() == seen:  # the server has taken the big call in and is tokenizing it
        await asyncio.sleep(0.001)
    started = time.perf_counter()
    watched = asyncio.Event()

    async def fresh_call_then_watch() -> scorer_pb2.ScoreResponse:
        fresh_request = scorer_pb2.ScoreRequest(task_id="shapes", templates=["a fresh photo of a {}."])
        fresh: scorer_pb2.ScoreResponse = await stub.Score(fresh_request, timeout=900)
        await asyncio.sleep(max(0.0, WATCH_SECONDS - (time.perf_counter() - started)))
        watched.set()
        return fresh

    probes = Probe(), Probe()
    fresh, _, _ = await asyncio.gather(
        fresh_call_then_watch(),
        probes[0].run(lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=900), watched),
        probes[1].run(lambda: stub.Score(cached, timeout=900), watched),
    )
    watched_seconds = time.perf_counter() - started
    big_pending = not big_task.done()
    big.cancel()
    with pytest.raises(asyncio.CancelledError):
        await big_task
    async with asyncio.timeout(60):  # the scorer counts what it dropped once its thread has stopped
        while abandoned_prompts() == abandoned_before:
            await asyncio.sleep(0.01)
    later_request = scorer_pb2.ScoreRequest(task_id="shapes", templates=["a later photo of a {}."])
    later = await stub.Score(later_request, timeout=900)
    return Observed(
        fresh,
        later,
        big_pending,
        probes,
        watched_seconds,
        abandoned_prompts() - abandoned_before,
        prompts_encoded() - encoded_before,
    )


async def test_calls_beside_a_big_request_answer_and_cancelling_it_drops_its_work(
    base_config, many_classes_dir, tmp_path
):
    config = replace(
        base_config,
        tasks=(*base_config.tasks, TaskSource("many", many_classes_dir)),
        shots=1,
        max_candidates_per_request=BIG_TEMPLATES,
        max_templates_per_request=BIG_TEMPLATES,
        max_queued_prompts=BIG_TEMPLATES * BIG_CLASSES,
        cache_dir=tmp_path / "features",
        state_dir=tmp_path / "state",
    )
    seen = None
    async for _, channel in serve_scorer(config):
        seen = await watch_a_big_call_then_cancel_it(channel)
    assert seen is not None

    # A small call that needs the encoder, sent while the big one was being tokenized, did not wait for it.
    assert seen.big_pending_at_cancel
    assert seen.fresh.results[0].total == 4 and not seen.fresh.results[0].error  # shapes: 4 classes, 1 shot
    for probe in seen.probes:  # health checks, then Score calls answered from the text cache
        assert len(probe.latencies) >= 5, (len(probe.latencies), seen.watched_seconds)
        # No call waited for a slice of the big one's work: each answered in a small part of the time watched.
        assert max(probe.latencies) < seen.watched_seconds / 4, (max(probe.latencies), seen.watched_seconds)
    # Cancelled, the big call's remaining prompts were dropped, neither tokenized nor encoded.
    big_prompts = BIG_TEMPLATES * BIG_CLASSES
    assert seen.big_prompts_abandoned > big_prompts / 2, seen.big_prompts_abandoned
    assert seen.prompts_encoded + seen.big_prompts_abandoned <= big_prompts + 3 * 4, seen  # 3 small calls beside
    assert seen.later.results[0].total == 4 and not seen.later.results[0].error


def test_tokenizing_stops_at_the_next_template_once_its_call_is_abandoned(tiny_clip_dir, image_task_dir):
    task = build_task("shapes", load_image_folder(image_task_dir), shots=1, seed=0)
    encoder = load_clip(str(tiny_clip_dir))
    batcher = TextEncodeBatcher(encoder.encode_ids, max_batch_prompts=256, max_delay_s=0, max_queued_prompts=1024)
    scorer = TemplateScorer(encoder, batcher, TextEmbeddingCache(1 << 20), max_template_bytes=1024)
    abandoned = threading.Event()
    abandoned.set()
    try:
        with pytest.raises(Abandoned, match="stopped after 0 of 2 templates"):
            scorer._plan(task, Candidates(["a {}.", "a photo of a {}."]), abandoned)
        assert scorer._plan(task, Candidates(["a {}."]), threading.Event()).problems == {"a {}.": None}
    finally:
        scorer.close()
