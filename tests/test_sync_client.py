"""promptclimb.client's blocking clients, called as a notebook calls them: from a thread that runs an event loop.

The scorer is a real one in a child process (a server on the test's own loop could not answer while the
test blocks that loop, as a notebook cell blocks its kernel's).
"""

from __future__ import annotations

import asyncio
import signal
import threading

import grpc
import pytest

from promptclimb.client import CallError, Scorer, SyncScorer
from promptclimb.scorer.v1 import scorer_pb2
from tests.procs import start_scorer, stop_process


@pytest.fixture(scope="module")
def scorer_address(tiny_clip_dir, image_task_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("sync-client")
    process, address = start_scorer(
        tiny_clip_dir, {"shapes": image_task_dir}, work / "cache", work / "scorer.log", "--shots", "2"
    )
    yield address
    assert stop_process(process, signal.SIGTERM) == 0, (work / "scorer.log").read_text()[-3000:]


def test_asyncio_run_fails_inside_a_running_loop_where_the_sync_client_works(scorer_address):
    """The notebook's case: `asyncio.run` refuses to start inside the kernel's running loop; SyncScorer answers."""

    async def cell() -> scorer_pb2.ScoreResponse:
        async def with_the_async_client() -> scorer_pb2.ListTasksResponse:
            async with Scorer(scorer_address) as scorer:
                return await scorer.list_tasks()

        with pytest.raises(RuntimeError, match="cannot be called from a running event loop"):
            asyncio.run(with_the_async_client())
        with SyncScorer(scorer_address, deadline_s=30) as scorer:
            assert [t.task_id for t in scorer.list_tasks().tasks] == ["shapes"]
            return scorer.score(scorer_pb2.ScoreRequest(task_id="shapes", templates=["a photo of a {}.", "{}"]))

    reply = asyncio.run(cell())
    assert [(r.template, r.total) for r in reply.results] == [("a photo of a {}.", 8), ("{}", 8)]


def test_the_sync_client_raises_the_async_clients_errors_and_closes_its_thread(scorer_address):
    before = threading.active_count()
    scorer = SyncScorer(scorer_address)
    with pytest.raises(CallError) as caught:
        scorer.get_task(scorer_pb2.GetTaskRequest(task_id="nope"))
    assert caught.value.code == grpc.StatusCode.NOT_FOUND and caught.value.method == "GetTask"
    assert scorer.score(scorer_pb2.ScoreRequest(task_id="shapes", templates=["{}"])).results[0].total == 8
    scorer.close()
    assert threading.active_count() == before
