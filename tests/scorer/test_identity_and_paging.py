"""The scorer's contract beyond Score: its model's identity (digest, version, pinning), GetTask and ListTasks pages."""

from __future__ import annotations

import re
from dataclasses import replace

import grpc
import pytest_asyncio

from promptclimb.scorer.v1 import scorer_pb2, scorer_pb2_grpc
from scorer_service.app import ScorerApp
from scorer_service.config import TaskSource
from scorer_service.factory import load_clip
from scorer_service.identity import weights_digest
from tests.scorer.test_service import expect_status


async def test_the_model_digest_is_the_feature_cache_identity_and_comes_with_every_answer(open_scorer, tiny_clip_dir):
    _, stub, _ = open_scorer
    task = await stub.GetTask(scorer_pb2.GetTaskRequest(task_id="shapes"))
    assert task.model_digest == weights_digest(load_clip(str(tiny_clip_dir), "cpu", "auto"))
    assert re.fullmatch(r"[0-9a-f]{32}", task.model_digest)
    assert task.model_version == f"{tiny_clip_dir.name}@{task.model_digest[:12]}"  # the default: name and digest
    (listed,) = (await stub.ListTasks(scorer_pb2.ListTasksRequest())).tasks
    assert listed == task
    reply = await stub.Score(scorer_pb2.ScoreRequest(task_id="shapes", templates=["a {}"]))
    assert (reply.model_digest, reply.model_version) == (task.model_digest, task.model_version)


async def test_a_pinned_digest_scores_only_on_that_model(open_scorer):
    _, stub, _ = open_scorer
    digest = (await stub.GetTask(scorer_pb2.GetTaskRequest(task_id="shapes"))).model_digest
    pinned = await stub.Score(scorer_pb2.ScoreRequest(task_id="shapes", templates=["a {}"], model_digest=digest))
    assert pinned.results[0].total == 8 and pinned.model_digest == digest
    other = "f" * 32
    await expect_status(
        stub.Score(scorer_pb2.ScoreRequest(task_id="shapes", templates=["a {}"], model_digest=other)),
        grpc.StatusCode.FAILED_PRECONDITION,
        f"model_digest {other} was pinned",
        f"this server scores with model_digest {digest}",
    )


async def test_get_task_names_the_known_tasks_when_it_has_none_by_that_id(open_scorer):
    _, stub, _ = open_scorer
    await expect_status(
        stub.GetTask(scorer_pb2.GetTaskRequest(task_id="nope")), grpc.StatusCode.NOT_FOUND, "'nope'", "shapes"
    )


@pytest_asyncio.fixture(scope="module")
async def three_task_scorer(base_config, image_task_dir):
    """Tasks c, a, b (in that order on the command line) and an operator-set model version."""
    tasks = tuple(TaskSource(task_id, image_task_dir) for task_id in "cab")
    app = ScorerApp(replace(base_config, tasks=tasks, model_version="tiny-2026-12"))
    port = await app.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield scorer_pb2_grpc.ScorerStub(channel)
    await channel.close()
    await app.stop()


async def test_list_tasks_pages_by_task_id(three_task_scorer):
    stub = three_task_scorer
    first = await stub.ListTasks(scorer_pb2.ListTasksRequest(page_size=2))
    assert [t.task_id for t in first.tasks] == ["a", "b"] and first.next_page_token
    second = await stub.ListTasks(scorer_pb2.ListTasksRequest(page_size=2, page_token=first.next_page_token))
    assert [t.task_id for t in second.tasks] == ["c"] and second.next_page_token == ""
    everything = await stub.ListTasks(scorer_pb2.ListTasksRequest())
    assert [t.task_id for t in everything.tasks] == ["a", "b", "c"] and everything.next_page_token == ""
    assert {t.model_version for t in everything.tasks} == {"tiny-2026-12"}


async def test_list_tasks_refuses_a_bad_page_request(three_task_scorer):
    stub = three_task_scorer
    await expect_status(
        stub.ListTasks(scorer_pb2.ListTasksRequest(page_size=-1)), grpc.StatusCode.INVALID_ARGUMENT, "page_size"
    )
    await expect_status(
        stub.ListTasks(scorer_pb2.ListTasksRequest(page_token="not-a-token")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "page_token is not one this service issued",
    )
