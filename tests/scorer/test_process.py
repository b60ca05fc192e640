"""The scorer as a real process: start-up errors, feature cache across restarts, SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

import grpc
import pytest

from promptclimb.scorer.v1 import scorer_pb2, scorer_pb2_grpc
from tests.procs import REPO, log_events, scorer_service, scraped, start_scorer, stop_process, wait_until


def test_feature_cache_is_reused_across_restarts(tiny_clip_dir, image_task_dir, tmp_path):
    cache = tmp_path / "cache"
    for run in ("first", "second"):
        log_path = tmp_path / f"{run}.log"
        process, address = start_scorer(tiny_clip_dir, {"shapes": image_task_dir}, cache, log_path)
        with grpc.insecure_channel(address) as channel:
            reply = scorer_pb2_grpc.ScorerStub(channel).Score(
                scorer_pb2.ScoreRequest(task_id="shapes", templates=["{}"])
            )
        assert reply.results[0].total == 1 * 4  # default 1 shot
        assert stop_process(process) == 0
        kinds = [e["event"] for e in log_events(log_path)]
        if run == "first":
            assert kinds.count("image_features_computed") == 2 and "image_features_loaded" not in kinds
        else:
            assert kinds.count("image_features_loaded") == 2 and "image_features_computed" not in kinds


def test_sigterm_lets_in_flight_calls_finish(tiny_clip_dir, image_task_dir, tmp_path):
    # a 1.5 s batching delay keeps the call in flight while SIGTERM arrives
    scorer = scorer_service(
        tiny_clip_dir,
        {"shapes": image_task_dir},
        tmp_path / "cache",
        tmp_path / "scorer.log",
        "--max-batch-delay-ms",
        "1500",
        metrics=True,
    )
    process, address = scorer.process, scorer.address
    outcome = {}

    def call():
        with grpc.insecure_channel(address) as channel:
            stub = scorer_pb2_grpc.ScorerStub(channel)
            outcome["reply"] = stub.Score(scorer_pb2.ScoreRequest(task_id="shapes", templates=["slow {}"]), timeout=30)

    caller = threading.Thread(target=call)
    caller.start()
    wait_until(
        lambda: scraped(scorer.metrics_url, "scorer_queued_prompts"), 10, "the call waiting in the batching window"
    )
    process.send_signal(signal.SIGTERM)
    caller.join(30)
    assert outcome["reply"].results[0].total == 4
    assert stop_process(process) == 0
    kinds = [e["event"] for e in log_events(tmp_path / "scorer.log")]
    assert kinds.index("shutdown_requested") < kinds.index("grpc_server_stopped")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "scorer_service", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )


def test_missing_model_directory_is_named(image_task_dir, tmp_path):
    result = run_cli(
        "--model",
        str(tmp_path / "no-such-model"),
        "--task",
        f"t={image_task_dir}",
        "--port",
        "0",
        "--metrics-port",
        "0",
    )
    assert result.returncode == 2
    assert f"model directory {tmp_path / 'no-such-model'} does not exist" in result.stderr


def test_unreachable_hub_id_is_named(image_task_dir):
    result = run_cli(
        "--model", "openai/clip-vit-base-patch32", "--task", f"t={image_task_dir}", "--port", "0", "--metrics-port", "0"
    )
    assert result.returncode == 2
    assert (
        "cannot load the model from Hugging Face hub id 'openai/clip-vit-base-patch32' (offline=True)" in result.stderr
    )


def test_unreadable_model_directory_is_named(image_task_dir, tmp_path):
    (tmp_path / "empty-model").mkdir()
    result = run_cli(
        "--model", str(tmp_path / "empty-model"), "--task", f"t={image_task_dir}", "--port", "0", "--metrics-port", "0"
    )
    assert result.returncode == 2
    assert f"cannot load the model from local directory {tmp_path / 'empty-model'}" in result.stderr


def test_missing_dataset_is_named(tiny_clip_dir, tmp_path):
    result = run_cli(
        "--model", str(tiny_clip_dir), "--task", f"t={tmp_path / 'nothing'}", "--port", "0", "--metrics-port", "0"
    )
    assert result.returncode == 2
    assert f"dataset directory {tmp_path / 'nothing'} does not exist" in result.stderr


def test_bad_flags_are_refused():
    result = run_cli("--task", "no-equals-sign")
    assert result.returncode == 2 and "--task wants ID=DIR" in result.stderr
    result = run_cli()
    assert result.returncode == 2 and "at least one --task" in result.stderr


def blocked_dir(tmp_path, name: str):
    """A directory path under a regular file: unwritable even for root, which ignores permission bits."""
    blocker = tmp_path / f"{name}-blocker"
    blocker.write_text("a file where a directory should be")
    return blocker / name


@pytest.mark.parametrize(("flag", "env"), [("--state-dir", "SCORER_STATE_DIR"), ("--cache-dir", "SCORER_CACHE_DIR")])
def test_an_unwritable_path_fails_at_once_naming_its_flag(image_task_dir, tmp_path, flag, env):
    # The model does not exist either: only a check made before loading anything reports the path.
    path = blocked_dir(tmp_path, flag.strip("-"))
    others = {"--state-dir": tmp_path / "state", "--cache-dir": tmp_path / "cache"}
    others[flag] = path
    started = time.monotonic()
    result = run_cli(
        "--model",
        str(tmp_path / "no-such-model"),
        "--task",
        f"t={image_task_dir}",
        "--port",
        "0",
        "--metrics-port",
        "0",
        *(str(x) for pair in others.items() for x in pair),
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 2
    assert f"{flag} {path} ({path}) is not writable: Not a directory" in result.stderr
    assert f"Mount a writable volume there, or point {flag} (env {env}) at a writable directory" in result.stderr
    assert "model directory" not in result.stderr
    assert elapsed < 5, f"took {elapsed:.1f} s"  # no torch import before the check (that alone takes 2-8 s here)


def test_an_unwritable_evaluation_ledger_fails_before_the_model_loads(image_task_dir, tmp_path):
    state = tmp_path / "state"
    (state / "evaluations.sqlite").mkdir(parents=True)  # the ledger's file name taken by a directory
    result = run_cli(
        "--model",
        str(tmp_path / "no-such-model"),
        "--task",
        f"t={image_task_dir}",
        "--port",
        "0",
        "--metrics-port",
        "0",
        "--state-dir",
        str(state),
        "--cache-dir",
        str(tmp_path / "cache"),
    )
    assert result.returncode == 2
    assert (
        f"--state-dir {state} ({state}) is not writable: its evaluation ledger evaluations.sqlite cannot be written"
        in result.stderr
    )
    assert "model directory" not in result.stderr


def test_tokens_rotate_on_sighup_and_a_broken_file_keeps_the_current_ones(tiny_clip_dir, image_task_dir, tmp_path):
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({"tokens": [{"name": "team", "token": "old-secret", "rights": ["score"]}]}))
    log_path = tmp_path / "scorer.log"
    process, address = start_scorer(
        tiny_clip_dir, {"shapes": image_task_dir}, tmp_path / "cache", log_path, "--tokens-file", str(tokens)
    )
    request = scorer_pb2.ScoreRequest(task_id="shapes", templates=["{}"])

    def code_with(token: str) -> grpc.StatusCode:
        with grpc.insecure_channel(address) as channel:
            try:
                scorer_pb2_grpc.ScorerStub(channel).Score(request, metadata=(("authorization", f"Bearer {token}"),))
            except grpc.RpcError as err:
                return err.code()
            return grpc.StatusCode.OK

    def hang_up_and_wait(event: str, count: int) -> None:
        process.send_signal(signal.SIGHUP)
        wait_until(
            lambda: sum(1 for e in log_events(log_path) if e["event"] == event) >= count, 10, f"{event} #{count}"
        )

    try:
        assert code_with("old-secret") == grpc.StatusCode.OK
        tokens.write_text(json.dumps({"tokens": [{"name": "team", "token": "new-secret", "rights": ["score"]}]}))
        hang_up_and_wait("tokens_reloaded", 1)
        assert code_with("new-secret") == grpc.StatusCode.OK
        assert code_with("old-secret") == grpc.StatusCode.UNAUTHENTICATED
        tokens.write_text(json.dumps({"tokens": [{"name": "a", "token": "x"}, {"name": "a", "token": "y"}]}))
        hang_up_and_wait("tokens_not_reloaded", 1)
        assert code_with("new-secret") == grpc.StatusCode.OK  # still serving, with the tokens it had
        assert process.poll() is None
    finally:
        stop_process(process)
    assert "new-secret" not in log_path.read_text() and "old-secret" not in log_path.read_text()


def test_a_token_file_with_a_repeated_token_is_refused_at_start(image_task_dir, tmp_path):
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({"tokens": [{"name": "a", "token": "same"}, {"name": "b", "token": "same"}]}))
    result = run_cli(
        "--model",
        str(tmp_path / "no-such-model"),
        "--task",
        f"t={image_task_dir}",
        "--port",
        "0",
        "--metrics-port",
        "0",
        "--state-dir",
        str(tmp_path / "state"),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--tokens-file",
        str(tokens),
    )
    assert result.returncode == 2
    assert "token 'b' has the same token as another entry" in result.stderr
