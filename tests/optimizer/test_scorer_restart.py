"""The scorer goes away under a run: within the grace period the run rides it out; past it, the run fails resumably."""

from __future__ import annotations

import asyncio
import itertools
import signal

from optimizer_service.config import ScorerSettings
from promptclimb.optimizer.v1 import optimizer_pb2 as pb
from tests.optimizer.conftest import TASK, open_optimizer, small_spec
from tests.optimizer.scripted_llm import Delay, ScriptedLLM, invented_templates
from tests.procs import free_port, start_process, stop_process, wait_healthy


class ScorerOnFixedPort:
    """The real scorer, restartable on the same address."""

    def __init__(self, model_dir, task_dir, root) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.args = ["scorer_service", "--model", str(model_dir), "--task", f"{TASK}={task_dir}", "--shots", "3",
                     "--host", "127.0.0.1", "--port", str(self.port), "--metrics-port", "0", "--cache-dir", str(root / "cache"),
                     "--state-dir", str(root / "scorer-state")]
        self.log = root / "scorer.log"
        self.process = None

    async def start(self) -> None:
        self.process = start_process(self.args, self.log)
        await asyncio.to_thread(wait_healthy, self.address, self.process)

    def kill(self) -> None:
        stop_process(self.process, signal.SIGKILL)


async def until_first_iteration(stub, run_id: str) -> None:
    async for event in stub.WatchRun(pb.WatchRunRequest(run_id=run_id)):
        if event.HasField("iteration_done"):
            return


async def watch_to_end(stub, run_id: str, after: int = 0) -> pb.Run:
    async for _ in stub.WatchRun(pb.WatchRunRequest(run_id=run_id, after_sequence=after)):
        pass
    return await stub.GetRun(pb.GetRunRequest(run_id=run_id))


async def test_scorer_restart_within_grace_and_past_it(tiny_clip_dir, image_task_dir, tmp_path):
    scorer = ScorerOnFixedPort(tiny_clip_dir, image_task_dir, tmp_path)
    await scorer.start()
    invent = invented_templates(itertools.count())
    spec = small_spec(restarts=1, resets=1, iterations=4)
    try:
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
    finally:
        scorer.kill()
