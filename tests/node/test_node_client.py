"""A Node client (tests/node/call_both_services.cjs) calls both services from the committed protos alone.

The scorer is the real process (tiny random CLIP), the optimizer the real service on loopback with
the scripted LLM; the Node script uses @grpc/grpc-js and @grpc/proto-loader as `make node-tools`
installs them, and nothing generated.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal

from optimizer_service.config import ScorerSettings
from tests.conftest import prerequisite
from tests.optimizer.conftest import open_optimizer
from tests.optimizer.scripted_llm import ScriptedLLM
from tests.procs import REPO, start_scorer, stop_process

SCRIPT = REPO / "tests" / "node" / "call_both_services.cjs"
NODE_MODULES = REPO / "tools" / "node" / "node_modules"
TASK = "shapes"


@prerequisite(
    missing=shutil.which("node") is None or not (NODE_MODULES / "@grpc" / "grpc-js").is_dir(),
    why="node and tools/node/node_modules (make node-tools)",
)
async def test_a_node_client_calls_both_services_from_the_protos(tiny_clip_dir, image_task_dir, tmp_path):
    process, scorer_address = start_scorer(
        tiny_clip_dir, {TASK: image_task_dir}, tmp_path / "cache", tmp_path / "scorer.log", "--model-version", "tiny-v1"
    )
    try:
        with ScriptedLLM() as llm:
            settings = ScorerSettings(address=scorer_address, deadline_s=30.0, grace_s=5.0)
            async with open_optimizer(settings, llm, tmp_path / "state") as optimizer:
                node = await asyncio.create_subprocess_exec(
                    "node",
                    str(SCRIPT),
                    scorer_address,
                    f"127.0.0.1:{optimizer.port}",
                    TASK,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                )
                stdout, stderr = await asyncio.wait_for(node.communicate(), 120)
    finally:
        stop_process(process, signal.SIGTERM)
    assert node.returncode == 0, stderr.decode()
    seen = json.loads(stdout)

    scorer = seen["scorer"]
    assert scorer["listed"] == [TASK] and scorer["next_page_token"] == ""
    task = scorer["task"]
    assert task["task_id"] == TASK and len(task["class_names"]) == 4
    assert len(task["model_digest"]) == 32 and task["model_version"] == "tiny-v1"
    assert scorer["response_model_digest"] == task["model_digest"]
    good, bad = scorer["results"]
    assert 0 <= good["accuracy"] <= 1 and good["error"] == ""
    assert bad["accuracy"] == 0 and "{}" in bad["error"]
    assert scorer["wrong_pin_status"] == "FAILED_PRECONDITION"
    named, empty_class = scorer["class_prompt_set_results"]
    assert named["error_reason"] == "TEMPLATE_ERROR_REASON_UNSPECIFIED" and named["total"] == 4  # 4 classes, 1 shot
    assert named["class_total"] == [1, 1, 1, 1] and sum(named["class_correct"]) == named["correct"]
    assert empty_class["error_reason"] == "TEMPLATE_ERROR_REASON_EMPTY_CLASS" and empty_class["class_total"] == []

    run = seen["optimizer"]
    assert run["repeated_run_id"] == run["started"]["run_id"]  # the request_id made StartRun idempotent
    assert run["started"]["model_digest"] == task["model_digest"] and run["started"]["state"] in (
        "RUN_STATE_PENDING",
        "RUN_STATE_RUNNING",
    )
    assert run["event_kinds"][-1] == "run_ended" and "iteration_done" in run["event_kinds"]
    assert min(run["event_times"]) >= run["run"]["create_time_seconds"] > 0
    final = run["run"]
    assert (final["state"], final["stop_reason"]) == ("RUN_STATE_SUCCEEDED", "finished")
    assert final["best"] and final["model_digest"] == task["model_digest"]
    assert (
        final["show_accuracies"] is False and final["max_wall_time_seconds"] == 600
    )  # presence and Duration came through
    assert final["active_time_seconds"] > 0
    assert run["succeeded_run_ids"] == [run["started"]["run_id"]] and run["failed_run_ids"] == []
