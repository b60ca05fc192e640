"""Property-based fuzzing of every Scorer RPC against the real server process.

Random unicode, control characters, huge strings, format-string attacks, empty
and over-limit lists (nested ones too: ensembles and class prompt sets, empty
entries included), unknown splits and tasks, with and without tokens: every
reply is a documented status, every OK reply is well formed, the server stays
healthy, and no token ever reaches its log. `PROMPTCLIMB_FUZZ_EXAMPLES` sets the
examples per test (the reliability run raises it).
"""

from __future__ import annotations

import json
import os

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from promptclimb.scorer.v1 import scorer_pb2, scorer_pb2_grpc
from tests.procs import start_scorer, stop_process

EXAMPLES = int(os.environ.get("PROMPTCLIMB_FUZZ_EXAMPLES", "100"))
TOKENS = {"client": "fuzz-client-token-0123456789", "admin": "fuzz-admin-token-9876543210"}
MAX_TEMPLATES = 16
DOCUMENTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
ATTACKS = [
    "{:>999999999}{}",
    "{0.__class__.__init__.__globals__}{}",
    "{}{}{}",
    "{" * 64,
    "}{}",
    "{{}}",
    "{!r}",
    "{0}",
    "%s %d {}",
    "\x00{}",
    "\u202e{}",
    "{}" + "\u0301" * 500,
    "a photo of a {}.",
    "{}",
    "",
]
metadata = st.sampled_from(
    [
        (),
        (("authorization", f"Bearer {TOKENS['client']}"),),
        (("authorization", f"Bearer {TOKENS['admin']}"),),
        (("authorization", "Bearer wrong"),),
        (("authorization", TOKENS["client"]),),
        (("authorization", "Bearer "),),
    ]
)
template = st.one_of(
    st.sampled_from(ATTACKS),
    st.text(max_size=60).map(lambda t: t + "{}"),
    st.text(max_size=200),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=900, max_size=1500),
    st.builds(lambda a, b: f"{a}{{}}{b}", st.text(max_size=20), st.text(max_size=20)),
)


@pytest.fixture(scope="module")
def fuzz_scorer(tiny_clip_dir, image_task_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("fuzz")
    tokens = work / "tokens.json"
    tokens.write_text(
        json.dumps(
            {
                "tokens": [
                    {"name": "client", "token": TOKENS["client"], "rights": ["score"]},
                    {"name": "admin", "token": TOKENS["admin"], "rights": ["score", "test"]},
                ]
            }
        )
    )
    log_path = work / "scorer.log"
    process, address = start_scorer(
        tiny_clip_dir,
        {"shapes": image_task_dir},
        work / "cache",
        log_path,
        "--tokens-file",
        str(tokens),
        "--max-templates-per-request",
        str(MAX_TEMPLATES),
        "--max-candidates-per-request",
        str(MAX_TEMPLATES),
        "--max-message-bytes",
        "65536",
        "--log-level",
        "DEBUG",
    )
    channel = grpc.insecure_channel(address)
    yield scorer_pb2_grpc.ScorerStub(channel), channel
    healthy = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)  # type: ignore[attr-defined]  # typeshed's HealthStub declares no methods
    channel.close()
    assert stop_process(process) == 0
    assert healthy.status == health_pb2.HealthCheckResponse.SERVING
    logged = log_path.read_text(errors="replace")
    assert "rpc_failed" not in logged  # no request reached the INTERNAL path
    for token in TOKENS.values():
        assert token not in logged


def call(rpc, request, md):
    try:
        return grpc.StatusCode.OK, rpc(request, metadata=md, timeout=30)
    except grpc.RpcError as err:
        return err.code(), None


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    task_id=st.one_of(st.sampled_from(["shapes", "", "nope", "SHAPES", "shapes\x00"]), st.text(max_size=300)),
    templates=st.lists(template, max_size=MAX_TEMPLATES + 4),
    split=st.one_of(st.sampled_from([0, 1, 2]), st.integers(-(2**31), 2**31 - 1)),
    md=metadata,
)
def test_score_answers_only_documented_statuses(fuzz_scorer, task_id, templates, split, md):
    stub, _ = fuzz_scorer
    code, reply = call(stub.Score, scorer_pb2.ScoreRequest(task_id=task_id, templates=templates, split=split), md)
    assert code in DOCUMENTED, code
    if code == grpc.StatusCode.OK:
        assert task_id == "shapes" and 1 <= len(templates) <= MAX_TEMPLATES and split in (0, 1, 2)
        assert [r.template for r in reply.results] == templates
        for result in reply.results:
            assert result.error or (result.total > 0 and 0 <= result.accuracy <= 1 and result.correct <= result.total)
            if result.error:
                assert result.total == 0 and result.accuracy == 0
    if code == grpc.StatusCode.PERMISSION_DENIED:
        assert split == 2


prompt = st.one_of(template, st.text(max_size=40))
prompt_set = st.lists(st.lists(prompt, max_size=4), min_size=0, max_size=6)  # the task has 4 classes


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    templates=st.lists(template, max_size=3),
    ensembles=st.lists(st.lists(template, max_size=4), max_size=MAX_TEMPLATES + 2),
    sets=st.lists(prompt_set, max_size=4),
    split=st.sampled_from([0, 1, 2]),
    per_class=st.booleans(),
    md=metadata,
)
def test_nested_candidates_answer_only_documented_statuses(
    fuzz_scorer, templates, ensembles, sets, split, per_class, md
):
    """Ensembles (empty ones too) and class prompt sets with any number of classes and prompts."""
    stub, _ = fuzz_scorer
    request = scorer_pb2.ScoreRequest(
        task_id="shapes",
        templates=templates,
        ensembles=[scorer_pb2.TemplateEnsemble(templates=e) for e in ensembles],
        class_prompt_sets=[
            scorer_pb2.ClassPromptSet(classes=[scorer_pb2.ClassPrompts(prompts=c) for c in s]) for s in sets
        ],
        split=split,
        per_class_accuracy=per_class,
    )
    code, reply = call(stub.Score, request, md)
    assert code in DOCUMENTED, code
    if code != grpc.StatusCode.OK:
        return
    assert len(templates) + len(ensembles) + len(sets) <= MAX_TEMPLATES
    assert all(len(s) == 4 for s in sets) and not (per_class and split == 2)
    assert len(reply.results) == len(templates) and len(reply.ensemble_results) == len(ensembles)
    assert len(reply.class_prompt_set_results) == len(sets)
    for result in [*reply.results, *reply.ensemble_results, *reply.class_prompt_set_results]:
        if result.error:
            assert result.total == 0 and result.accuracy == 0 and not result.class_accuracies
        else:
            assert result.total > 0 and 0 <= result.accuracy <= 1 and result.correct <= result.total
            assert len(result.class_accuracies) == (4 if per_class else 0)
            assert sum(c.correct for c in result.class_accuracies) == (result.correct if per_class else 0)


@settings(
    max_examples=max(10, EXAMPLES // 10), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(md=metadata)
def test_list_tasks_answers_only_documented_statuses(fuzz_scorer, md):
    stub, _ = fuzz_scorer
    code, reply = call(stub.ListTasks, scorer_pb2.ListTasksRequest(), md)
    assert code in {grpc.StatusCode.OK, grpc.StatusCode.UNAUTHENTICATED}
    if code == grpc.StatusCode.OK:
        assert [t.task_id for t in reply.tasks] == ["shapes"]


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    templates=st.lists(template, max_size=4),
    ensembles=st.lists(st.lists(template, max_size=6), max_size=6),
    model_digest=st.one_of(st.just(""), st.text(max_size=80)),
    md=metadata,
)
def test_score_answers_nested_ensembles_and_pins_with_documented_statuses(
    fuzz_scorer, templates, ensembles, model_digest, md
):
    """The nested lists (ensembles and their members) and the model pin, beside templates."""
    stub, _ = fuzz_scorer
    request = scorer_pb2.ScoreRequest(
        task_id="shapes",
        templates=templates,
        ensembles=[scorer_pb2.TemplateEnsemble(templates=members) for members in ensembles],
        model_digest=model_digest,
    )
    code, reply = call(stub.Score, request, md)
    assert code in DOCUMENTED | {grpc.StatusCode.FAILED_PRECONDITION}, code
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        assert model_digest
    if code == grpc.StatusCode.OK:
        assert [r.template for r in reply.results] == templates
        assert [list(r.templates) for r in reply.ensemble_results] == ensembles
        for result in [*reply.results, *reply.ensemble_results]:
            assert result.error or (result.total > 0 and 0 <= result.accuracy <= 1)


@settings(
    max_examples=max(10, EXAMPLES // 5), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    page_size=st.one_of(st.integers(-3, 3), st.integers(-(2**31), 2**31 - 1)),
    page_token=st.one_of(st.just(""), st.text(max_size=200)),
    md=metadata,
)
def test_list_tasks_answers_any_page_with_a_documented_status(fuzz_scorer, page_size, page_token, md):
    stub, _ = fuzz_scorer
    code, _reply = call(stub.ListTasks, scorer_pb2.ListTasksRequest(page_size=page_size, page_token=page_token), md)
    assert code in {grpc.StatusCode.OK, grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT}
