"""The scorer's error model: rich details a client can act on, and nothing charged for what was not answered."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import grpc
import pytest
from prometheus_client import REGISTRY

from promptclimb.scorer.v1 import scorer_pb2, scorer_pb2_grpc
from promptclimb_common.auth import AuthConfigError, parse_tokens
from promptclimb_common.errors import details_of
from scorer_service.app import ScorerApp
from tests.procs import await_until

TEAM = (("authorization", "Bearer t-secret"),)


async def refusal(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


@pytest.fixture
def budget_tokens(tmp_path):
    path = tmp_path / "tokens.json"
    path.write_text(
        json.dumps(
            {
                "tokens": [
                    {"name": "team", "token": "t-secret", "rights": ["score"], "evaluation_budget": 6},
                    {"name": "reader", "token": "r-secret", "rights": ["score"]},
                ]
            }
        )
    )
    return path


async def test_refused_failed_and_invalid_work_is_not_charged(base_config, budget_tokens, tmp_path):
    # A queue of 4 class prompts (one template of the 4 classes) and a long batching window: while one call
    # waits in the queue, every other call that needs the encoder finds it full.
    config = replace(
        base_config,
        tokens_file=str(budget_tokens),
        state_dir=tmp_path / "state",
        max_queued_prompts=4,
        max_batch_delay_ms=1500,
    )
    app = ScorerApp(config)
    port = await app.start()
    quota = app.quota
    assert quota is not None
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = scorer_pb2_grpc.ScorerStub(channel)
            first = asyncio.ensure_future(
                stub.Score(scorer_pb2.ScoreRequest(task_id="shapes", templates=["queued {}"]), metadata=TEAM)
            )
            await await_until(
                lambda: REGISTRY.get_sample_value("scorer_queued_prompts"), 10, "the first call in the queue"
            )
            for attempt in range(5):
                busy = details_of(
                    await refusal(
                        stub.Score(
                            scorer_pb2.ScoreRequest(task_id="shapes", templates=[f"busy {attempt} {{}}"]), metadata=TEAM
                        )
                    )
                )
                assert (busy.code, busy.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "QUEUE_FULL")
                assert busy.retryable and busy.retry_after_s == 1.0
            assert (await first).results[0].total == 8
            assert await quota.used("team") == 1  # the five refusals cost nothing

            # More class prompts than the queue can ever hold: INVALID_ARGUMENT naming the bound, not "retry".
            too_large = details_of(
                await refusal(
                    stub.Score(scorer_pb2.ScoreRequest(task_id="shapes", templates=["one {}", "two {}"]), metadata=TEAM)
                )
            )
            assert (too_large.code, too_large.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_TOO_LARGE")
            assert too_large.fields == ("templates",) and too_large.metadata["limit"] == "4" and not too_large.retryable
            assert "the encoder queue holds at most 4" in too_large.message

            # An invalid template is answered with its reason and not charged.
            reply = await stub.Score(
                scorer_pb2.ScoreRequest(task_id="shapes", templates=["no placeholder"]), metadata=TEAM
            )
            assert reply.results[0].error_reason == scorer_pb2.TEMPLATE_ERROR_REASON_NO_PLACEHOLDER
            assert await quota.used("team") == 1

            for index in range(5):  # the rest of the budget
                await stub.Score(scorer_pb2.ScoreRequest(task_id="shapes", templates=[f"t{index} {{}}"]), metadata=TEAM)
            spent = details_of(
                await refusal(
                    stub.Score(scorer_pb2.ScoreRequest(task_id="shapes", templates=["late {}"]), metadata=TEAM)
                )
            )
            assert (spent.code, spent.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "EVALUATION_BUDGET_SPENT")
            assert spent.quota_subjects == ("token:team",) and not spent.retryable and spent.retry_after_s is None
            assert await quota.used("team") == 6

            forbidden = details_of(
                await refusal(
                    stub.Score(
                        scorer_pb2.ScoreRequest(task_id="shapes", templates=["{}"], split=scorer_pb2.SPLIT_TEST),
                        metadata=TEAM,
                    )
                )
            )
            assert (forbidden.code, forbidden.reason) == (grpc.StatusCode.PERMISSION_DENIED, "TEST_SPLIT_FORBIDDEN")
            missing = details_of(await refusal(stub.ListTasks(scorer_pb2.ListTasksRequest())))
            assert (missing.code, missing.reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_MISSING")
            unknown = details_of(
                await refusal(stub.Score(scorer_pb2.ScoreRequest(task_id="nope", templates=["{}"]), metadata=TEAM))
            )
            assert (unknown.code, unknown.reason) == (grpc.StatusCode.NOT_FOUND, "TASK_NOT_FOUND")
            empty = details_of(await refusal(stub.Score(scorer_pb2.ScoreRequest(task_id="shapes"), metadata=TEAM)))
            assert (empty.reason, empty.fields) == ("INVALID_FIELD", ("templates",))
    finally:
        await app.stop()


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        ("a photo", "NO_PLACEHOLDER"),
        ("{} and {}", "SEVERAL_PLACEHOLDERS"),
        ("{x} {}", "STRAY_BRACE"),
        ("  ", "EMPTY"),
        ("tab\t{}", "BAD_CHARACTER"),
        ("x" * 2000 + "{}", "TOO_LARGE"),
        ("{}" + " very" * 80, "EXCEEDS_CONTEXT"),
    ],
)
async def test_each_invalid_template_carries_a_machine_readable_reason(open_scorer, template, reason):
    _, stub, _ = open_scorer
    reply = await stub.Score(
        scorer_pb2.ScoreRequest(
            task_id="shapes",
            templates=["a {}", template],
            ensembles=[scorer_pb2.TemplateEnsemble(templates=["a {}", template]), scorer_pb2.TemplateEnsemble()],
        )
    )
    good, bad = reply.results
    assert good.error_reason == scorer_pb2.TEMPLATE_ERROR_REASON_UNSPECIFIED and not good.error
    assert scorer_pb2.TemplateErrorReason.Name(bad.error_reason) == f"TEMPLATE_ERROR_REASON_{reason}" and bad.error
    member, empty = reply.ensemble_results
    assert member.error_reason == scorer_pb2.TEMPLATE_ERROR_REASON_INVALID_MEMBER
    assert empty.error_reason == scorer_pb2.TEMPLATE_ERROR_REASON_EMPTY_ENSEMBLE


async def test_a_repeated_ensemble_member_is_not_a_weight(open_scorer):
    # With repeats as weights, a pair's ensemble would move between its members' counts as the repeats change
    # (it did for several of these pairs); deduplicated, every weighting of a pair is the pair.
    _, stub, _ = open_scorer
    candidates = [
        "{}",
        "a {}",
        "the {}",
        "a photo of a {}.",
        "art of the {}",
        "a blurry {}",
        "{} in the wild",
        "many {}",
    ]

    async def ensemble_correct(*ensembles: list[str]) -> list[int]:
        reply = await stub.Score(
            scorer_pb2.ScoreRequest(
                task_id="shapes", ensembles=[scorer_pb2.TemplateEnsemble(templates=e) for e in ensembles]
            )
        )
        assert not any(r.error for r in reply.ensemble_results)
        return [r.correct for r in reply.ensemble_results]

    for a, b in [(a, b) for a in candidates for b in candidates if a < b]:
        counts = await ensemble_correct([a, b], [a] * 4 + [b]) + await ensemble_correct([a] * 8 + [b], [a, b, b, b])
        assert len(set(counts)) == 1, (a, b, counts)


def test_a_token_file_with_a_repeated_name_or_token_is_refused():
    with pytest.raises(AuthConfigError, match="repeats the name 'a'"):
        parse_tokens(json.dumps({"tokens": [{"name": "a", "token": "x1"}, {"name": "a", "token": "x2"}]}), "t.json")
    with pytest.raises(AuthConfigError, match="token 'b' has the same token as another entry"):
        parse_tokens(json.dumps({"tokens": [{"name": "a", "token": "same"}, {"name": "b", "token": "same"}]}), "t.json")


async def test_a_case_or_whitespace_variant_of_a_member_is_not_a_weight(open_scorer):
    # CLIP's tokenizer lowercases and collapses whitespace: "A  PHOTO of a {}" is "a photo of a {}" to the model.
    # Deduplicated by strings, such variants weight a member again; deduplicated by token ids, they cannot.
    _, stub, _ = open_scorer
    candidates = ["{}", "a {}", "the {}", "a photo of a {}.", "art of the {}", "a blurry {}", "{} in the wild"]

    def variants(template: str) -> list[str]:
        return [template.upper().replace("{}", "{}"), template.replace(" ", "  "), f" {template} ", template.title()]

    for a, b in [(a, b) for a in candidates for b in candidates if a < b]:
        reply = await stub.Score(
            scorer_pb2.ScoreRequest(
                task_id="shapes",
                ensembles=[
                    scorer_pb2.TemplateEnsemble(templates=[a, b]),
                    scorer_pb2.TemplateEnsemble(templates=[a, *variants(a), b]),
                    scorer_pb2.TemplateEnsemble(templates=[a, b, *variants(b)]),
                ],
            )
        )
        assert not any(r.error for r in reply.ensemble_results)
        counts = [r.correct for r in reply.ensemble_results]
        assert len(set(counts)) == 1, (a, b, counts)
