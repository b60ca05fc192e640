"""SIGKILL the optimizer service mid-run, restart it: the run finishes, nothing finished is asked again or lost."""

from __future__ import annotations

import itertools
import os
import signal
import sqlite3
import time
from collections.abc import Callable

import grpc

from promptclimb.optimizer.v1 import optimizer_pb2 as pb
from promptclimb.optimizer.v1 import optimizer_pb2_grpc
from tests.optimizer.conftest import SCORER_TOKENS, small_spec
from tests.optimizer.scripted_llm import Delay, ScriptedLLM, invented_templates
from tests.procs import start_service, stop_process

ENDED = (pb.RUN_STATE_SUCCEEDED, pb.RUN_STATE_FAILED, pb.RUN_STATE_CANCELLED)
# Iterations done (of 16) after which the service is killed; the reliability run sets five, e.g. "1,4,7,10,13".
KILL_POINTS = [int(n) for n in os.environ.get("PROMPTCLIMB_KILL_POINTS", "3,9").split(",")]


def start_optimizer(state_dir, scorer_address: str, llm_url: str, log_path):
    service = start_service(
        [
            "optimizer_service",
            "serve",
            "--state-dir",
            str(state_dir),
            "--scorer",
            scorer_address,
            "--llm-base-url",
            llm_url,
            "--llm-model",
            "scripted-model",
            "--llm-backoff-initial-s",
            "0.01",
            "--scorer-grace-s",
            "10",
        ],
        log_path,
        env={"OPENAI_API_KEY": "placeholder", "SCORER_TOKEN": SCORER_TOKENS["optimizer"][0]},
        timeout=60,
    )
    return service.process, service.address  # a new port at each start: the clients follow the address


def wait_for(
    stub: optimizer_pb2_grpc.OptimizerStub, run_id: str, predicate: Callable[[pb.Run], bool], timeout: float = 90.0
) -> pb.Run:
    deadline = time.monotonic() + timeout
    run: pb.Run | None = None
    while time.monotonic() < deadline:
        run = stub.GetRun(pb.GetRunRequest(run_id=run_id), timeout=5)
        if predicate(run):
            return run
        if run.state in ENDED:
            raise AssertionError(f"run ended early: {pb.RunState.Name(run.state)} ({run.stop_reason})")
        time.sleep(0.05)
    raise TimeoutError(f"run {run_id} did not get there: {run}")


def iterations_done(at_least: int) -> Callable[[pb.Run], bool]:
    return lambda run: run.counters.iterations_done >= at_least


def snapshot(state_dir, run_id: str) -> tuple[set[str], set[tuple]]:
    """What the killed process had committed: finished LLM calls and scored candidates."""
    db = sqlite3.connect(state_dir / "optimizer.sqlite3")
    try:
        calls = {row[0] for row in db.execute("SELECT llm_call FROM steps WHERE run_id = ?", (run_id,))}
        candidates = set(db.execute("SELECT sequence, template, accuracy FROM candidates WHERE run_id = ?", (run_id,)))
    finally:
        db.close()
    return calls, candidates


def test_sigkill_mid_run_then_restart(scorer, tmp_path):
    invent = invented_templates(itertools.count())
    state_dir = tmp_path / "state"
    with ScriptedLLM(default=lambda body: Delay(0.25, invent(body))) as llm:
        process = None
        try:
            process, address = start_optimizer(state_dir, scorer.address, llm.url, tmp_path / "service.log")
            with grpc.insecure_channel(address) as channel:
                stub = optimizer_pb2_grpc.OptimizerStub(channel)
                run_id = stub.StartRun(pb.StartRunRequest(spec=small_spec(iterations=4)), timeout=30).run_id
            kills: list[tuple[int, set[str]]] = []  # (requests the LLM had seen at the kill, calls finished by then)
            scored_before: set[tuple] = set()
            for kill_after in KILL_POINTS:
                with grpc.insecure_channel(address) as channel:
                    wait_for(optimizer_pb2_grpc.OptimizerStub(channel), run_id, iterations_done(kill_after))
                stop_process(process, signal.SIGKILL)
                finished, scored = snapshot(state_dir, run_id)
                assert scored >= scored_before  # nothing committed before an earlier kill was lost
                kills.append((len(llm.seen), finished))
                scored_before = scored
                process, address = start_optimizer(state_dir, scorer.address, llm.url, tmp_path / "service.log")

            with grpc.insecure_channel(address) as channel:
                stub = optimizer_pb2_grpc.OptimizerStub(channel)
                run = wait_for(stub, run_id, lambda r: r.state in ENDED)
                events = list(stub.WatchRun(pb.WatchRunRequest(run_id=run_id), timeout=30))
            stop_process(process, signal.SIGTERM)
        finally:
            if process is not None and process.poll() is None:  # a failed assertion must not leave it running
                stop_process(process, signal.SIGKILL)

    assert (run.state, run.stop_reason) == (pb.RUN_STATE_SUCCEEDED, "finished")
    assert run.counters.iterations_done == run.counters.iterations_total == 16
    for requests_at_kill, finished in kills:
        assert min(KILL_POINTS) <= len(finished) < 16  # the kill really came mid-run
        asked_again = {s.call_id for s in llm.seen[requests_at_kill:]} & finished
        assert asked_again == set(), "the LLM was asked again for an iteration finished before the kill"
    final_calls, final_scored = snapshot(state_dir, run_id)
    assert len(final_calls) == 16
    assert scored_before <= final_scored  # no scored candidate went missing
    from_events = {
        (e.candidate_scored.candidate_sequence, e.candidate_scored.template, e.candidate_scored.train_accuracy)
        for e in events
        if e.HasField("candidate_scored")
    }
    assert from_events == final_scored
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
