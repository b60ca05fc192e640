"""Property-based fuzzing of every Optimizer RPC against the real service process.

Hostile and random input (unicode, control characters, huge strings, format
strings, out-of-range knobs and enums, made-up run ids, bad tokens) must get a
documented status, never INTERNAL, and never take the service down.
"""

from __future__ import annotations

import itertools
import json
import os
import signal

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from promptclimb.optimizer.v1 import optimizer_pb2 as pb
from promptclimb.optimizer.v1 import optimizer_pb2_grpc
from tests.optimizer.conftest import SCORER_TOKENS, TASK
from tests.optimizer.scripted_llm import ScriptedLLM
from tests.procs import optimizer_service, stop_process, wait_healthy

TOKEN = "fuzz-token-1"
HOSTILE = [
    "",
    "{}",
    "{0.__class__.__init__.__globals__}",
    "{:>999999999}",
    "a" * 5000,
    "\x00\x07\u202e",
    "../../etc/passwd",
    "' OR 1=1 --",
    "\ud7ff\uffff",
    TASK,
]
EXAMPLES = int(os.environ.get("PROMPTCLIMB_FUZZ_EXAMPLES", "120"))  # per test; the reliability run raises it
AUTH_ERRORS = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}

texts = st.one_of(st.sampled_from(HOSTILE), st.text(max_size=300))
ints = st.one_of(st.integers(-3, 40), st.integers(-(2**31), 2**31 - 1))
knobs = st.one_of(st.integers(0, 2), ints)  # often valid, so that runs start too
floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(0, 3))
metadata = st.sampled_from(
    [
        (),
        (("authorization", f"Bearer {TOKEN}"),),
        (("authorization", "Bearer wrong"),),
        (("authorization", "Basic abc"),),
        (("authorization", "Bearer " + "x" * 4000),),
    ]
)


@st.composite
def specs(draw) -> pb.RunSpec:
    spec = pb.RunSpec(
        task_id=draw(st.one_of(st.just(TASK), texts)),
        llm_model=draw(texts),
        label=draw(texts),
        initial_pool=draw(st.integers(-2, 6)),
        initial_templates=draw(st.lists(texts, max_size=5)),
        feedback=draw(st.integers(-2, 6)),
        conversation=draw(st.integers(-2, 6)),
        max_llm_calls=draw(knobs),
        max_llm_tokens=draw(knobs),
        max_scored_templates=draw(knobs),
        max_wall_time=Duration(
            seconds=draw(st.integers(-(1 << 40), 1 << 40)), nanos=draw(st.integers(-(10**9), 10**9))
        ),
        seed=draw(ints),
        max_llm_cost_usd=draw(floats),
        hand_engineered_dataset=draw(st.one_of(st.sampled_from(["", "oxford_pets", "imagenet"]), texts)),
        preset=draw(st.integers(-2, 4)),
        replay_run_id=draw(st.one_of(st.just(""), texts)),
        **{
            name: draw(knobs)
            for name in (
                "initial_pool_size",
                "restarts",
                "resets",
                "iterations",
                "top_k",
                "templates_per_call",
                "report_top",
                "ensemble_size",
            )
        },
    )
    if draw(st.booleans()):
        spec.temperature = draw(floats)
    if draw(st.booleans()):
        spec.show_accuracies = draw(st.booleans())
    return spec


@pytest.fixture(scope="module")
def service(scorer, tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    tokens = root / "tokens.json"
    tokens.write_text(json.dumps({"tokens": [{"name": "fuzzer", "token": TOKEN, "rights": ["run"]}]}))
    with ScriptedLLM() as llm:
        service = optimizer_service(
            root / "state", scorer.address, llm.url, tokens, root / "service.log", SCORER_TOKENS["optimizer"][0]
        )
        try:
            with grpc.insecure_channel(service.address) as channel:
                yield optimizer_pb2_grpc.OptimizerStub(channel), service.process, service.address, root / "service.log"
        finally:
            stop_process(service.process, signal.SIGTERM)


def status(call, *args, **kwargs) -> grpc.StatusCode:
    try:
        result = call(*args, timeout=10, **kwargs)
        if hasattr(result, "__iter__") and not hasattr(result, "ListFields"):
            list(itertools.islice(result, 3))  # a stream: read a little, then stop
            result.cancel()
        return grpc.StatusCode.OK
    except grpc.RpcError as err:
        return err.code()


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(spec=specs(), request_id=st.one_of(st.just(""), st.sampled_from(["retry-1", "retry-2"]), texts), meta=metadata)
@example(
    spec=pb.RunSpec(task_id=TASK, restarts=1, resets=1, iterations=1),
    request_id="",
    meta=(("authorization", f"Bearer {TOKEN}"),),
)
def test_start_run_answers_every_spec_with_a_documented_status(service, spec, request_id, meta):
    stub = service[0]
    try:
        reply = stub.StartRun(pb.StartRunRequest(spec=spec, request_id=request_id), metadata=meta, timeout=10)
    except grpc.RpcError as err:
        refusal = err
    else:
        assert meta and TOKEN in meta[0][1]
        if reply.state in (pb.RUN_STATE_PENDING, pb.RUN_STATE_RUNNING):  # a repeated request_id may return an ended run
            status(stub.CancelRun, pb.CancelRunRequest(run_id=reply.run_id), metadata=meta)
        return
    assert refusal.code() in AUTH_ERRORS | {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ALREADY_EXISTS,
    }, refusal


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    run_id=texts,
    after=ints,
    meta=metadata,
    rpc=st.sampled_from(["GetRun", "WatchRun", "CancelRun", "ResumeRun", "ListRuns"]),
    states=st.lists(st.integers(-2, 8), max_size=4),
    view=st.integers(-2, 4),
)
def test_run_rpcs_answer_any_id_with_a_documented_status(service, run_id, after, meta, rpc, states, view):
    stub = service[0]
    request = {
        "GetRun": pb.GetRunRequest(run_id=run_id),
        "WatchRun": pb.WatchRunRequest(run_id=run_id, after_sequence=after),
        "CancelRun": pb.CancelRunRequest(run_id=run_id),
        "ResumeRun": pb.ResumeRunRequest(run_id=run_id),
        "ListRuns": pb.ListRunsRequest(page_size=after, page_token=run_id, states=states, view=view),
    }[rpc]
    code = status(getattr(stub, rpc), request, metadata=meta)
    allowed = AUTH_ERRORS | {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
    }
    assert code in allowed


def test_the_service_survived_the_fuzzing(service):
    stub, process, address, log = service
    assert process.poll() is None
    wait_healthy(address, process, timeout=5)
    runs = stub.ListRuns(pb.ListRunsRequest(), metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=10).runs
    assert runs  # valid specs (at least the explicit example) started runs: the accepting path ran too
    logged = log.read_text()
    assert '"rpc_failed"' not in logged  # the interceptor logs every INTERNAL it had to produce
    assert TOKEN not in logged and SCORER_TOKENS["optimizer"][0] not in logged  # tokens are never logged
