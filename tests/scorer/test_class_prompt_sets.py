"""Class prompt sets (per-class prompts) through the Score RPC: accuracy against plain transformers to the image,
per-class accuracy, per-candidate errors, every bound's refusal, and the budget."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace

import grpc
import pytest
import pytest_asyncio
import torch
from PIL import Image
from transformers import CLIPModel, CLIPProcessor

from promptclimb.scorer.v1 import scorer_pb2, scorer_pb2_grpc
from promptclimb_common.errors import details_of
from scorer_service.app import ScorerApp
from scorer_service.datasets import LabeledImage, build_task, load_image_folder
from tests.scorer.conftest import bearer, serve_scorer

CLASSES = ["black cat", "blue sky", "green leaf", "red apple"]  # the shapes task, label order
SETS = [
    # names, descriptions, no class name at all, braces as plain text, a repeat and case/space variants
    [["a black cat"], ["the blue sky", "a clear sky"], ["a green leaf.", "foliage", "a leaf {}"], ["an apple"]],
    [
        ["cat", "CAT", "  cat  ", "a photo of a cat"],
        ["sky"],
        ["leaf", "leaf", "green"],
        ["red apple", "a fruit", "Red  Apple"],
    ],
    [["{}"], ["x"], ["y"], ["z"]],
]


def as_request_sets(sets: Sequence[Sequence[Sequence[str]]]) -> list[scorer_pb2.ClassPromptSet]:
    return [scorer_pb2.ClassPromptSet(classes=[scorer_pb2.ClassPrompts(prompts=c) for c in s]) for s in sets]


@torch.no_grad()
def reference_counts(model_dir, images: Sequence[LabeledImage], prompt_set) -> list[int]:
    """Per-class correct counts, independently: every prompt padded to 77 tokens in fp32, each class the mean of
    its normalised prompts (those that tokenize alike counted once), renormalised; argmax over classes."""
    model = CLIPModel.from_pretrained(model_dir).eval()
    processor = CLIPProcessor.from_pretrained(model_dir)
    class_embeddings = []
    for prompts in prompt_set:
        distinct = {tuple(processor.tokenizer(p)["input_ids"]): p for p in reversed(prompts)}
        tokens = processor(text=list(distinct.values()), return_tensors="pt", padding="max_length", max_length=77)
        text = model.get_text_features(**tokens)
        text = getattr(text, "pooler_output", text)
        mean = (text / text.norm(dim=-1, keepdim=True)).mean(dim=0)
        class_embeddings.append(mean / mean.norm())
    weights = torch.stack(class_embeddings)
    pixels = processor(images=[Image.open(i.path).convert("RGB") for i in images], return_tensors="pt")
    features = model.get_image_features(**pixels)
    features = getattr(features, "pooler_output", features)
    predictions = (features / features.norm(dim=-1, keepdim=True) @ weights.T).argmax(dim=-1).tolist()
    counts = [0] * len(prompt_set)
    for image, predicted in zip(images, predictions, strict=True):
        counts[image.label] += predicted == image.label
    return counts


async def test_class_prompt_sets_match_plain_transformers_to_the_image(
    locked_scorer, base_config, tiny_clip_dir, image_task_dir
):
    _, stub, _ = locked_scorer
    task = build_task("shapes", load_image_folder(image_task_dir), base_config.shots, base_config.seed)
    assert list(task.class_names) == CLASSES
    train = await stub.Score(
        scorer_pb2.ScoreRequest(task_id="shapes", class_prompt_sets=as_request_sets(SETS), per_class_accuracy=True),
        metadata=bearer("client"),
    )
    test = await stub.Score(
        scorer_pb2.ScoreRequest(task_id="shapes", class_prompt_sets=as_request_sets(SETS), split=scorer_pb2.SPLIT_TEST),
        metadata=bearer("admin"),
    )
    assert not train.results and not train.ensemble_results and len(train.class_prompt_set_results) == len(SETS)
    for prompt_set, on_train, on_test in zip(
        SETS, train.class_prompt_set_results, test.class_prompt_set_results, strict=True
    ):
        train_counts = reference_counts(tiny_clip_dir, task.splits["train"], prompt_set)
        assert [c.correct for c in on_train.class_accuracies] == train_counts, prompt_set
        assert [c.total for c in on_train.class_accuracies] == [2, 2, 2, 2]  # 2 shots
        assert [c.accuracy for c in on_train.class_accuracies] == [c / 2 for c in train_counts]
        assert (on_train.correct, on_train.total, on_train.error) == (sum(train_counts), 8, "")
        test_counts = reference_counts(tiny_clip_dir, task.splits["test"], prompt_set)
        assert (on_test.correct, on_test.total) == (sum(test_counts), 12), prompt_set
        assert not on_test.class_accuracies  # not asked for (and never given on test)


async def test_a_set_of_one_filled_template_is_that_template_and_per_class_accuracy_covers_every_kind(open_scorer):
    _, stub, _ = open_scorer
    template = "a photo of a {}."
    reply = await stub.Score(
        scorer_pb2.ScoreRequest(
            task_id="shapes",
            templates=[template],
            ensembles=[scorer_pb2.TemplateEnsemble(templates=[template, template.upper()])],
            class_prompt_sets=as_request_sets([[[template.replace("{}", c)] for c in CLASSES]]),
            per_class_accuracy=True,
        )
    )
    (single,), (ensemble,), (prompt_set,) = reply.results, reply.ensemble_results, reply.class_prompt_set_results
    per_class = [(c.correct, c.total) for c in single.class_accuracies]
    assert len(per_class) == 4 and sum(c for c, _ in per_class) == single.correct
    for other in (ensemble, prompt_set):
        assert (other.correct, other.total) == (single.correct, single.total)
        assert [(c.correct, c.total) for c in other.class_accuracies] == per_class


async def test_invalid_sets_get_their_reason_and_the_rest_is_scored(open_scorer):
    _, stub, _ = open_scorer
    good = [["cat"], ["sky"], ["leaf"], ["apple"]]
    sets = [
        [["cat"], [], ["leaf"], ["apple"]],
        [["cat"], ["sky"], ["leaf", "   "], ["apple"]],
        [["cat"], ["sky"], ["leaf"], ["x" * 1025]],
        [["cat"], ["sky\x00"], ["leaf"], ["apple"]],
        [["cat " * 80], ["sky"], ["leaf"], ["apple"]],
        good,
    ]
    reply = await stub.Score(scorer_pb2.ScoreRequest(task_id="shapes", class_prompt_sets=as_request_sets(sets)))
    results = reply.class_prompt_set_results
    assert [scorer_pb2.TemplateErrorReason.Name(r.error_reason) for r in results] == [
        "TEMPLATE_ERROR_REASON_EMPTY_CLASS",
        *["TEMPLATE_ERROR_REASON_INVALID_PROMPT"] * 4,
        "TEMPLATE_ERROR_REASON_UNSPECIFIED",
    ]
    assert results[0].error == "class 1 ('blue sky') has no prompts"
    assert results[1].error == "class 2 ('green leaf') prompt 1: prompt is empty"
    assert results[2].error == "class 3 ('red apple') prompt 0: prompt is 1025 bytes; the limit is 1024"
    assert "U+0000" in results[3].error
    assert results[4].error.startswith("class 0 ('black cat') prompt 0 ('cat cat")
    assert results[4].error.endswith("tokens; the model reads at most 77")
    assert all(r.accuracy == 0 and r.total == 0 for r in results[:-1])
    assert results[-1].total == 8 and not results[-1].error


async def test_per_class_accuracy_is_never_given_on_test(locked_scorer):
    _, stub, _ = locked_scorer
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Score(
            scorer_pb2.ScoreRequest(
                task_id="shapes", templates=["{}"], split=scorer_pb2.SPLIT_TEST, per_class_accuracy=True
            ),
            metadata=bearer("admin"),
        )
    refused = details_of(caught.value)
    assert (refused.code, refused.reason, refused.fields) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_FIELD",
        ("per_class_accuracy",),
    )


@pytest_asyncio.fixture(scope="module")
async def bounded_scorer(base_config, tmp_path_factory):
    """Small bounds: 3 prompts per class, 8 per set, 12 per request, 20 to encode."""
    config = replace(
        base_config,
        max_prompts_per_class=3,
        max_prompts_per_candidate=8,
        max_prompts_per_request=12,
        max_queued_prompts=20,
        state_dir=tmp_path_factory.mktemp("bounded-state"),
    )
    async for _, channel in serve_scorer(config):
        yield scorer_pb2_grpc.ScorerStub(channel)


@pytest.mark.parametrize(
    ("sets", "field", "limit", "fragment"),
    [
        ([[["a", "b", "c", "d"], ["s"], ["l"], ["p"]]], "class_prompt_sets[0].classes[0].prompts", "3", "4 prompts"),
        ([[["a"], [""] * 4, ["l"], ["p"]]], "class_prompt_sets[0].classes[1].prompts", "3", "4 prompts"),
        (
            [[["c"], ["s"], ["l"], ["p"]], [["a", "b", "c"], ["a", "b", "c"], ["a", "b"], ["p"]]],
            "class_prompt_sets[1]",
            "8",
            "class prompt set 1 has 9 prompts",
        ),
        ([[["a", "b", "c"], ["s"], ["l"], ["p"]]] * 2, "class_prompt_sets", "12", "12"),
    ],
)
async def test_every_prompt_bound_is_a_refusal_naming_its_list(bounded_scorer, sets, field, limit, fragment):
    if field == "class_prompt_sets":  # 2 x 6 = 12 prompts fit; 13 do not
        assert (
            await bounded_scorer.Score(
                scorer_pb2.ScoreRequest(task_id="shapes", class_prompt_sets=as_request_sets(sets))
            )
        ).class_prompt_set_results
        sets = [*sets, [["x"], [], [], []]]
        fragment = "13 prompts in the request's class prompt sets"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await bounded_scorer.Score(scorer_pb2.ScoreRequest(task_id="shapes", class_prompt_sets=as_request_sets(sets)))
    refused = details_of(caught.value)
    assert (refused.code, refused.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_TOO_LARGE")
    assert refused.fields == (field,) and refused.metadata["limit"] == limit
    assert fragment in refused.message and f"the limit is {limit}" in refused.message


async def test_prompts_to_encode_count_templates_and_sets_together(bounded_scorer):
    # 4 templates x 4 classes + 5 set prompts = 21 > 20 the encoder queue holds.
    request = scorer_pb2.ScoreRequest(
        task_id="shapes",
        templates=["a {}", "b {}", "c {}", "d {}"],
        class_prompt_sets=as_request_sets([[["a", "b"], ["s"], ["l"], ["p"]]]),
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await bounded_scorer.Score(request)
    refused = details_of(caught.value)
    assert (refused.reason, refused.metadata["limit"]) == ("REQUEST_TOO_LARGE", "20")
    assert "21 class prompts to encode" in refused.message


@pytest.mark.parametrize("count", [0, 3, 5, 100_000])
async def test_a_set_without_one_entry_per_class_is_refused(open_scorer, count):
    _, stub, _ = open_scorer
    prompt_set = scorer_pb2.ClassPromptSet(classes=[scorer_pb2.ClassPrompts()] * count)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Score(scorer_pb2.ScoreRequest(task_id="shapes", class_prompt_sets=[prompt_set]), timeout=5)
    refused = details_of(caught.value)
    assert (refused.code, refused.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD")
    assert refused.fields == ("class_prompt_sets[0].classes",)
    assert f"has {count} classes; the task has 4" in refused.message


async def test_a_set_costs_one_evaluation_and_an_invalid_one_nothing(base_config, tmp_path):
    tokens = tmp_path / "tokens.json"
    tokens.write_text(
        json.dumps({"tokens": [{"name": "team", "token": "t-secret", "rights": ["score"], "evaluation_budget": 3}]})
    )
    app = ScorerApp(replace(base_config, tokens_file=str(tokens), state_dir=tmp_path / "state"))
    port = await app.start()
    team = (("authorization", "Bearer t-secret"),)
    big = [["cat", "a cat", "kitty"], ["sky", "the sky"], ["leaf"], ["apple", "fruit"]]
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = scorer_pb2_grpc.ScorerStub(channel)
            reply = await stub.Score(
                scorer_pb2.ScoreRequest(
                    task_id="shapes", class_prompt_sets=as_request_sets([big, big, [[], [], [], []]])
                ),
                metadata=team,
            )
            assert [bool(r.error) for r in reply.class_prompt_set_results] == [False, False, True]
            assert app.quota is not None and await app.quota.used("team") == 2
            reply = await stub.Score(
                scorer_pb2.ScoreRequest(task_id="shapes", class_prompt_sets=as_request_sets([big])), metadata=team
            )
            assert await app.quota.used("team") == 3
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Score(
                    scorer_pb2.ScoreRequest(task_id="shapes", class_prompt_sets=as_request_sets([big])), metadata=team
                )
            assert details_of(caught.value).reason == "EVALUATION_BUDGET_SPENT"
    finally:
        await app.stop()


async def test_per_class_accuracy_is_given_on_val(base_config, tmp_path):
    # 3 train images per class: 2 shots for train, 1 for val.
    config = replace(base_config, val_shots=1, state_dir=tmp_path / "state", cache_dir=tmp_path / "cache")
    async for _, channel in serve_scorer(config):
        stub = scorer_pb2_grpc.ScorerStub(channel)
        reply = await stub.Score(
            scorer_pb2.ScoreRequest(
                task_id="shapes",
                split=scorer_pb2.SPLIT_VAL,
                class_prompt_sets=as_request_sets([SETS[0]]),
                per_class_accuracy=True,
            )
        )
        (result,) = reply.class_prompt_set_results
        assert [c.total for c in result.class_accuracies] == [1, 1, 1, 1] and result.total == 4
        assert sum(c.correct for c in result.class_accuracies) == result.correct
