"""A model rollout under a run: two scorers with different models behind one address (a round-robin
channel over both, as behind a Kubernetes Service). The run is pinned to the digest it started on, so
it stops with the mismatch instead of mixing accuracies of two models, and resumes once every scorer
serves its model again."""

from __future__ import annotations

import asyncio
import itertools
import re

import grpc

from optimizer_service.config import ScorerSettings
from promptclimb.optimizer.v1 import optimizer_pb2 as pb
from promptclimb.scorer.v1 import scorer_pb2, scorer_pb2_grpc
from testbed.random_clip import build_random_clip
from tests.optimizer.conftest import TASK, open_optimizer, small_spec
from tests.optimizer.scripted_llm import ScriptedLLM, invented_templates
from tests.optimizer.test_scorer_restart import ScorerOnFixedPort, watch_to_end
from tests.procs import held_port


async def _digest(address: str) -> str:
    async with grpc.aio.insecure_channel(address) as channel:
        return (await scorer_pb2_grpc.ScorerStub(channel).GetTask(scorer_pb2.GetTaskRequest(task_id=TASK))).model_digest


async def test_a_pinned_run_stops_when_the_model_behind_its_address_changes(tiny_clip_dir, image_task_dir, tmp_path):
    new_model = build_random_clip(tmp_path / "new-model", "tiny", seed=1)
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    with held_port() as old_port, held_port() as new_port:
        await _roll_out(tiny_clip_dir, new_model, image_task_dir, tmp_path, old_port, new_port)


async def _roll_out(tiny_clip_dir, new_model, image_task_dir, tmp_path, old_port, new_port):
    old = ScorerOnFixedPort(old_port, tiny_clip_dir, image_task_dir, tmp_path / "old")
    new = ScorerOnFixedPort(new_port, new_model, image_task_dir, tmp_path / "new")
    await asyncio.gather(old.start(), new.start())
    digests = {old.address: await _digest(old.address), new.address: await _digest(new.address)}
    assert digests[old.address] != digests[new.address]
    one_address = ScorerSettings(address=f"ipv4:{old.address},{new.address}", deadline_s=10.0, grace_s=10.0)
    try:
        with ScriptedLLM(default=invented_templates(itertools.count())) as llm:
            async with open_optimizer(one_address, llm, tmp_path / "state") as optimizer:
                started = await optimizer.stub.StartRun(
                    pb.StartRunRequest(spec=small_spec(restarts=1, resets=1, iterations=6))
                )
                pinned = started.model_digest
                assert pinned in digests.values()
                other = next(d for d in digests.values() if d != pinned)

                stopped = await watch_to_end(optimizer.stub, started.run_id)
                assert stopped.state == pb.RUN_STATE_FAILED
                assert stopped.stop_reason.startswith("scorer model changed:")
                assert f"model_digest {pinned} was pinned" in stopped.stop_reason
                assert f"model_digest {other}" in stopped.stop_reason
                assert "resume the run" in stopped.stop_reason
                assert stopped.counters.iterations_done < 6

                # the rollout is rolled back: the replica with the other model comes back with the pinned one
                replaced = old if digests[old.address] == other else new
                replaced.kill()
                replaced.args[replaced.args.index("--model") + 1] = str(
                    tiny_clip_dir if pinned == digests[old.address] else new_model
                )
                await replaced.start()
                assert await _digest(replaced.address) == pinned
                await optimizer.stub.ResumeRun(pb.ResumeRunRequest(run_id=started.run_id))
                resumed = await watch_to_end(optimizer.stub, started.run_id)
        assert (resumed.state, resumed.stop_reason) == (pb.RUN_STATE_SUCCEEDED, "finished")
        assert resumed.counters.iterations_done == 6 and resumed.model_digest == pinned
        assert re.fullmatch(r"[0-9a-f]{32}", pinned)
    finally:
        old.kill()
        new.kill()
