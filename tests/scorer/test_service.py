"""The Scorer over gRPC: status codes, per-template errors, auth, health, reflection."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY

from promptclimb.scorer.v1 import scorer_pb2, scorer_pb2_grpc
from promptclimb_common.errors import details_of
from scorer_service.app import ScorerApp
from tests.procs import await_until
from tests.scorer.conftest import bearer


def sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def expect_status(call, code: grpc.StatusCode, *fragments: str) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    details = caught.value.details() or ""
    assert caught.value.code() == code, details
    for fragment in fragments:
        assert fragment in details
    return details


async def test_list_tasks_describes_task(open_scorer, tiny_clip_dir):
    _, stub, _ = open_scorer
    reply = await stub.ListTasks(scorer_pb2.ListTasksRequest())
    (task,) = reply.tasks
    assert task.task_id == "shapes"
    assert list(task.class_names) == ["black cat", "blue sky", "green leaf", "red apple"]
    assert task.num_classes == 4
    assert {(s.split, s.num_images) for s in task.splits} == {(scorer_pb2.SPLIT_TRAIN, 8), (scorer_pb2.SPLIT_TEST, 12)}
    assert task.model_name == str(tiny_clip_dir)
    assert (task.shots, task.seed, task.context_length) == (2, 1, 77)


async def test_health_and_reflection_are_served(open_scorer):
    _, _, channel = open_scorer
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "promptclimb.scorer.v1.Scorer"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))  # type: ignore[attr-defined]  # typeshed's HealthStub declares no methods
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    replies = reflection.ServerReflectionInfo(iter([request]))  # type: ignore[operator]  # typeshed leaves it untyped
    names = [s.name async for reply in replies for s in reply.list_services_response.service]
    assert "promptclimb.scorer.v1.Scorer" in names
    assert "grpc.health.v1.Health" in names


async def test_request_level_errors(open_scorer):
    _, stub, _ = open_scorer
    await expect_status(
        stub.Score(scorer_pb2.ScoreRequest(task_id="nope", templates=["{}"])),
        grpc.StatusCode.NOT_FOUND,
        "'nope'",
        "shapes",
    )
    await expect_status(
        stub.Score(scorer_pb2.ScoreRequest(task_id="shapes")), grpc.StatusCode.INVALID_ARGUMENT, "no templates"
    )
    seventeen = scorer_pb2.ScoreRequest(task_id="shapes", templates=[f"{i} {{}}" for i in range(17)])
    await expect_status(stub.Score(seventeen), grpc.StatusCode.INVALID_ARGUMENT, "17 candidates", "limit is 16")
    await expect_status(
        stub.Score(scorer_pb2.ScoreRequest(task_id="shapes", templates=["{}"], split=7)),  # type: ignore[arg-type]  # no such split, on purpose
        grpc.StatusCode.INVALID_ARGUMENT,
        "unknown split 7",
    )
    # over the message size limit: refused by gRPC before it reaches the servicer
    await expect_status(
        stub.Score(scorer_pb2.ScoreRequest(task_id="shapes", templates=["x" * 300_000 + "{}"])),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )
    reply = await stub.Score(scorer_pb2.ScoreRequest(task_id="shapes", templates=["{}"]))  # still serving
    assert reply.results[0].total == 8


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("a photo of a cat", "no '{}'"),
        ("{} and {}", "2 '{}' placeholders"),
        ("{0.__class__.__init__.__globals__} {}", "brace besides"),
        ("{:>999999999} {}", "brace besides"),
        ("{} {name}", "brace besides"),
        ("{}" + " very" * 80, "the model reads at most 77"),
        ("x" * 2000 + "{}", "bytes; the limit is 1024"),
        ("tab\there {}", "U+0009"),
        ("nul\x00 {}", "U+0000"),
        ("   ", "empty"),
    ],
)
async def test_invalid_template_gets_an_error_and_others_are_scored(open_scorer, template, problem):
    _, stub, _ = open_scorer
    reply = await stub.Score(scorer_pb2.ScoreRequest(task_id="shapes", templates=["a photo of a {}.", template]))
    good, bad = reply.results
    assert good.error == "" and good.total == 8
    assert problem in bad.error
    assert bad.template == template and bad.total == 0 and bad.accuracy == 0


async def test_unicode_templates_are_scored(open_scorer):
    _, stub, _ = open_scorer
    templates = ["一张{}的照片", "ein Foto von {} 🐈", "{} — ⟨close-up⟩"]
    reply = await stub.Score(scorer_pb2.ScoreRequest(task_id="shapes", templates=templates))
    assert [r.error for r in reply.results] == ["", "", ""]
    assert [r.template for r in reply.results] == templates


async def test_auth_required_when_tokens_configured(locked_scorer):
    _, stub, channel = locked_scorer
    request = scorer_pb2.ScoreRequest(task_id="shapes", templates=["{}"])
    await expect_status(stub.Score(request), grpc.StatusCode.UNAUTHENTICATED, "authorization: Bearer")
    await expect_status(
        stub.Score(request, metadata=(("authorization", "Bearer wrong"),)), grpc.StatusCode.UNAUTHENTICATED
    )
    await expect_status(stub.ListTasks(scorer_pb2.ListTasksRequest()), grpc.StatusCode.UNAUTHENTICATED)
    reply = await stub.Score(request, metadata=bearer("client"))
    assert reply.results[0].total == 8
    health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())  # type: ignore[attr-defined]  # typeshed's HealthStub declares no methods
    assert health.status == health_pb2.HealthCheckResponse.SERVING


async def test_test_split_needs_the_test_right(open_scorer, locked_scorer):
    test_request = scorer_pb2.ScoreRequest(task_id="shapes", templates=["{}"], split=scorer_pb2.SPLIT_TEST)
    _, open_stub, _ = open_scorer
    await expect_status(open_stub.Score(test_request), grpc.StatusCode.PERMISSION_DENIED, "'test' right")
    _, stub, _ = locked_scorer
    await expect_status(
        stub.Score(test_request, metadata=bearer("client")), grpc.StatusCode.PERMISSION_DENIED, "'client'"
    )
    reply = await stub.Score(test_request, metadata=bearer("admin"))
    assert reply.results[0].total == 12


async def test_rate_limit_per_token(locked_scorer):
    _, stub, _ = locked_scorer
    request = scorer_pb2.ScoreRequest(task_id="shapes", templates=["{}"])
    for _ in range(2):  # the burst
        await stub.Score(request, metadata=bearer("throttled"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Score(request, metadata=bearer("throttled"))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "rate limit of token 'throttled'" in (caught.value.details() or "")
    details = details_of(caught.value)
    assert details.reason == "RATE_LIMITED" and details.domain == "promptclimb.dev"
    assert (details.retry_after_s or 0) > 0 and details.retryable
    await stub.Score(request, metadata=bearer("client"))  # other tokens unaffected


async def test_repeated_templates_hit_the_text_cache(open_scorer):
    _, stub, _ = open_scorer
    request = scorer_pb2.ScoreRequest(task_id="shapes", templates=["a cached {} template"])
    first = await stub.Score(request)
    hits, misses = sample("scorer_text_cache_hits_total"), sample("scorer_text_cache_misses_total")
    second = await stub.Score(request)
    assert second.results[0].correct == first.results[0].correct
    assert sample("scorer_text_cache_hits_total") - hits == 4  # one per class
    assert sample("scorer_text_cache_misses_total") == misses


async def test_concurrent_calls_share_encoder_batches(open_scorer):
    _, stub, _ = open_scorer
    batches = sample("scorer_batch_requests_count")
    merged = sample("scorer_batch_requests_sum")
    calls = [
        stub.Score(scorer_pb2.ScoreRequest(task_id="shapes", templates=[f"fresh concurrent {i} {{}}"]))
        for i in range(8)
    ]
    replies = await asyncio.gather(*calls)
    assert all(r.results[0].total == 8 for r in replies)
    new_batches = sample("scorer_batch_requests_count") - batches
    assert sample("scorer_batch_requests_sum") - merged == 8  # every call went through the batcher once
    assert new_batches < 8  # ... but in fewer encoder batches than calls


async def test_on_cpu_calls_merge_only_up_to_one_encoder_chunk(open_scorer):
    _, stub, _ = open_scorer
    batches, prompts = sample("scorer_batch_requests_count"), sample("scorer_batch_prompts_sum")
    calls = [
        stub.Score(scorer_pb2.ScoreRequest(task_id="shapes", templates=[f"chunk {i} {j} {{}}" for j in range(16)]))
        for i in range(8)
    ]  # 8 calls x 16 templates x 4 classes = 2 chunks of prompts
    await asyncio.gather(*calls)
    assert sample("scorer_batch_prompts_sum") - prompts == 8 * 16 * 4
    assert 2 <= sample("scorer_batch_requests_count") - batches < 8


async def test_a_message_that_is_not_valid_protobuf_is_invalid_argument(open_scorer):
    _, stub, channel = open_scorer
    # field 2 (templates) holding bytes that are not UTF-8: a client's bug, not the server's
    raw = channel.unary_unary(
        "/promptclimb.scorer.v1.Scorer/Score", request_serializer=None, response_deserializer=None
    )
    details = await expect_status(
        raw(b"\x12\x03\xff\xfe{"), grpc.StatusCode.INVALID_ARGUMENT, "not a valid Score message"
    )
    assert "request id" not in details
    reply = await stub.Score(scorer_pb2.ScoreRequest(task_id="shapes", templates=["{}"]))
    assert reply.results[0].total == 8


async def test_calls_beyond_the_concurrency_bound_are_refused_not_queued(base_config):
    # a long batching window keeps the first call in flight while the second arrives
    app = ScorerApp(replace(base_config, max_concurrent_rpcs=1, max_batch_delay_ms=1000))
    port = await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = scorer_pb2_grpc.ScorerStub(channel)
            bound_one = scorer_pb2.ScoreRequest(task_id="shapes", templates=["bound one {}"])
            first = asyncio.ensure_future(stub.Score(bound_one))
            await await_until(lambda: sample("scorer_queued_prompts"), 10, "the first call waiting for the encoder")
            await expect_status(
                stub.Score(scorer_pb2.ScoreRequest(task_id="shapes", templates=["bound two {}"])),
                grpc.StatusCode.RESOURCE_EXHAUSTED,
            )
            assert (await first).results[0].total == 8
    finally:
        await app.stop()
