"""The scorer goes away under a run: within the grace period the run rides it out; past it, the run fails resumably."""

from __future__ import annotations

import asyncio
import itertools
import signal
import subprocess

import pytest

from optimizer_service.config import ScorerSettings
from promptclimb.optimizer.v1 import optimizer_pb2 as pb
from promptclimb.optimizer.v1 import optimizer_pb2_grpc
from tests.optimizer.conftest import TASK, open_optimizer, small_spec
from tests.optimizer.scripted_llm import Delay, ScriptedLLM, invented_templates
from tests.procs import held_port, start_service, stop_process


class ScorerOnFixedPort:
    """The real scorer, restartable on the same address: a port held for as long as the test runs (see held_port)."""

    def __init__(self, port: int, model_dir, task_dir, root) -> None:
        self.port = port
        self.address = f"127.0.0.1:{self.port}"
        self.args = [
            "scorer_service",
            "--model",
            str(model_dir),
            "--task",
            f"{TASK}={task_dir}",
            "--shots",
            "3",
            "--cache-dir",
            str(root / "cache"),
            "--state-dir",
            str(root / "scorer-state"),
        ]
        self.log = root / "scorer.log"
        self.process: subprocess.Popen | None = None

    async def start(self) -> None:
        service = await asyncio.to_thread(start_service, self.args, self.log, port=self.port)
        self.process = service.process

    def kill(self) -> None:
        if self.process is not None:
            stop_process(self.process, signal.SIGKILL)


async def until_first_iteration(stub, run_id: str) -> None:
    async for event in stub.WatchRun(pb.WatchRunRequest(run_id=run_id)):
        if event.HasField("iteration_done"):
            return


@pytest.fixture
def restartable_scorer(tiny_clip_dir, image_task_dir, tmp_path):
    with held_port() as port:
        scorer = ScorerOnFixedPort(port, tiny_clip_dir, image_task_dir, tmp_path)
        try:
            yield scorer
        finally:
            scorer.kill()


async def watch_to_end(stub: optimizer_pb2_grpc.OptimizerAsyncStub, run_id: str, after: int = 0) -> pb.Run:
    async for _ in stub.WatchRun(pb.WatchRunRequest(run_id=run_id, after_sequence=after)):
        pass
    return await stub.GetRun(pb.GetRunRequest(run_id=run_id))


async def test_scorer_restart_within_grace_and_past_it(restartable_scorer, tmp_path):
    scorer = restartable_scorer
    await scorer.start()
    invent = invented_templates(itertools.count())
    spec = small_spec(restarts=1, resets=1, iterations=4)
    with ScriptedLLM(default=lambda body: Delay(0.2, invent(body))) as llm:
        patient = ScorerSettings(address=scorer.address, deadline_s=10.0, grace_s=60.0)
        async with open_optimizer(patient, llm, tmp_path / "patient") as optimizer:
            run_id = (await optimizer.stub.StartRun(pb.StartRunRequest(spec=spec))).run_id
            await until_first_iteration(optimizer.stub, run_id)
            scorer.kill()
            await scorer.start()
            run = await watch_to_end(optimizer.stub, run_id)
        assert (run.state, run.stop_reason) == (pb.RUN_STATE_SUCCEEDED, "finished")
        assert run.counters.iterations_done == 4 and run.counters.templates_scored == 6 + 4 * 2

        # the deadline outlasts the channel's longest reconnect backoff (5 s), so the resumed
        # run's first call waits for the restarted scorer instead of giving up before reconnecting
        hasty = ScorerSettings(address=scorer.address, deadline_s=7.0, grace_s=0.5)
        async with open_optimizer(hasty, llm, tmp_path / "hasty") as optimizer:
            run_id = (await optimizer.stub.StartRun(pb.StartRunRequest(spec=spec))).run_id
            await until_first_iteration(optimizer.stub, run_id)
            scorer.kill()
            failed = await watch_to_end(optimizer.stub, run_id)
            assert failed.state == pb.RUN_STATE_FAILED
            assert f"scorer at {scorer.address} unavailable for over" in failed.stop_reason
            await scorer.start()
            await optimizer.stub.ResumeRun(pb.ResumeRunRequest(run_id=run_id))
            resumed = await watch_to_end(optimizer.stub, run_id, after=0)
        assert (resumed.state, resumed.stop_reason) == (pb.RUN_STATE_SUCCEEDED, "finished")
        assert resumed.counters.iterations_done == 4
        assert resumed.counters.templates_scored == 6 + 4 * 2  # the scorer's outage lost no candidate for good
