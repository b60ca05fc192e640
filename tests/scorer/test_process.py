"""The scorer as a real process: start-up errors, feature cache across restarts, SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

import grpc

from promptclimb.scorer.v1 import scorer_pb2, scorer_pb2_grpc
from tests.procs import REPO, start_scorer, stop_process


def events(log_path) -> list[dict]:
    out = []
    for line in log_path.read_text().splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def test_feature_cache_is_reused_across_restarts(tiny_clip_dir, image_task_dir, tmp_path):
    cache = tmp_path / "cache"
    for run in ("first", "second"):
        log_path = tmp_path / f"{run}.log"
        process, address = start_scorer(tiny_clip_dir, {"shapes": image_task_dir}, cache, log_path)
        with grpc.insecure_channel(address) as channel:
            reply = scorer_pb2_grpc.ScorerStub(channel).Score(scorer_pb2.ScoreRequest(task_id="shapes", templates=["{}"]))
        assert reply.results[0].total == 1 * 4  # default 1 shot
        assert stop_process(process) == 0
        kinds = [e["event"] for e in events(log_path)]
        if run == "first":
            assert kinds.count("image_features_computed") == 2 and "image_features_loaded" not in kinds
        else:
            assert kinds.count("image_features_loaded") == 2 and "image_features_computed" not in kinds


def test_sigterm_lets_in_flight_calls_finish(tiny_clip_dir, image_task_dir, tmp_path):
    # a 1.5 s batching delay keeps the call in flight while SIGTERM arrives
    process, address = start_scorer(
        tiny_clip_dir, {"shapes": image_task_dir}, tmp_path / "cache", tmp_path / "scorer.log", "--max-batch-delay-ms", "1500"
    )
    outcome = {}

    def call():
        with grpc.insecure_channel(address) as channel:
            stub = scorer_pb2_grpc.ScorerStub(channel)
            outcome["reply"] = stub.Score(scorer_pb2.ScoreRequest(task_id="shapes", templates=["slow {}"]), timeout=30)

    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    caller.join(30)
    assert outcome["reply"].results[0].total == 4
    assert stop_process(process) == 0
    kinds = [e["event"] for e in events(tmp_path / "scorer.log")]
    assert kinds.index("shutdown_requested") < kinds.index("grpc_server_stopped")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scorer_service", *args], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})


def test_missing_model_directory_is_named(image_task_dir, tmp_path):
    result = run_cli("--model", str(tmp_path / "no-such-model"), "--task", f"t={image_task_dir}", "--port", "0", "--metrics-port", "0")
    assert result.returncode == 2
    assert f"model directory {tmp_path / 'no-such-model'} does not exist" in result.stderr


def test_unreachable_hub_id_is_named(image_task_dir):
    result = run_cli("--model", "openai/clip-vit-base-patch32", "--task", f"t={image_task_dir}", "--port", "0", "--metrics-port", "0")
    assert result.returncode == 2
    assert "cannot load CLIP model from Hugging Face hub id 'openai/clip-vit-base-patch32' (offline=True)" in result.stderr


def test_unreadable_model_directory_is_named(image_task_dir, tmp_path):
    (tmp_path / "empty-model").mkdir()
    result = run_cli("--model", str(tmp_path / "empty-model"), "--task", f"t={image_task_dir}", "--port", "0", "--metrics-port", "0")
    assert result.returncode == 2
    assert f"cannot load CLIP model from local directory {tmp_path / 'empty-model'}" in result.stderr


def test_missing_dataset_is_named(tiny_clip_dir, tmp_path):
    result = run_cli("--model", str(tiny_clip_dir), "--task", f"t={tmp_path / 'nothing'}", "--port", "0", "--metrics-port", "0")
    assert result.returncode == 2
    assert f"dataset directory {tmp_path / 'nothing'} does not exist" in result.stderr


def test_bad_flags_are_refused():
    result = run_cli("--task", "no-equals-sign")
    assert result.returncode == 2 and "--task wants ID=DIR" in result.stderr
    result = run_cli()
    assert result.returncode == 2 and "at least one --task" in result.stderr
