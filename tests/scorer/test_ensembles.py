"""Prompt ensembles through the Score RPC: accuracy against plain transformers, errors, limits, budget."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import grpc
import torch
from PIL import Image
from transformers import CLIPModel, CLIPProcessor

from promptclimb.scorer.v1 import scorer_pb2, scorer_pb2_grpc
from scorer_service.app import ScorerApp
from scorer_service.config import TaskSource
from tests.fixtures import write_coop_dataset
from tests.scorer.conftest import bearer
from tests.scorer.test_service import expect_status

ENSEMBLES = [
    ["a photo of a {}.", "itap of a {}", "a blurry photo of the {}."],
    ["{}", "a close-up of the {}, seen from above and far away"],
    ["a photo of a {}."],
]


@torch.no_grad()
def reference_ensemble_accuracy(model_dir: Path, image_root: Path, templates: list[str]) -> tuple[int, int]:
    """Independent ensemble accuracy as in the CLIP authors' notebook: per class, mean of the
    normalised prompt embeddings (padded to 77 tokens, fp32), renormalised; argmax over classes."""
    model = CLIPModel.from_pretrained(model_dir).eval()
    processor = CLIPProcessor.from_pretrained(model_dir)
    folders = sorted(p for p in image_root.iterdir() if p.is_dir())
    class_embeddings = []
    for folder in folders:
        prompts = [t.replace("{}", folder.name.replace("_", " ")) for t in templates]
        tokens = processor(text=prompts, return_tensors="pt", padding="max_length", max_length=77)
        text = model.get_text_features(**tokens)
        text = getattr(text, "pooler_output", text)
        text = text / text.norm(dim=-1, keepdim=True)
        mean = text.mean(dim=0)
        class_embeddings.append(mean / mean.norm())
    weights = torch.stack(class_embeddings)
    correct = total = 0
    for label, folder in enumerate(folders):
        images = [Image.open(p).convert("RGB") for p in sorted(folder.iterdir())]
        features = model.get_image_features(**processor(images=images, return_tensors="pt"))
        features = getattr(features, "pooler_output", features)
        features = features / features.norm(dim=-1, keepdim=True)
        correct += int(((features @ weights.T).argmax(dim=-1) == label).sum())
        total += len(images)
    return correct, total


async def test_ensemble_accuracy_matches_plain_transformers(locked_scorer, tiny_clip_dir, image_task_dir):
    _, stub, _ = locked_scorer
    request = scorer_pb2.ScoreRequest(
        task_id="shapes",
        templates=["a photo of a {}."],
        split=scorer_pb2.SPLIT_TEST,
        ensembles=[scorer_pb2.TemplateEnsemble(templates=e) for e in ENSEMBLES],
    )
    reply = await stub.Score(request, metadata=bearer("admin"))
    assert [list(r.templates) for r in reply.ensemble_results] == ENSEMBLES
    for ensemble, result in zip(ENSEMBLES, reply.ensemble_results, strict=True):
        correct, total = reference_ensemble_accuracy(tiny_clip_dir, image_task_dir / "test", ensemble)
        assert (result.correct, result.total, result.error) == (correct, total, ""), ensemble
        assert result.accuracy == correct / total
    # a one-member ensemble is its template
    pair, single = reply.ensemble_results[2], reply.results[0]
    assert (pair.correct, pair.total) == (single.correct, single.total)


async def test_invalid_ensembles_get_errors_and_the_rest_is_scored(open_scorer):
    _, stub, _ = open_scorer
    reply = await stub.Score(
        scorer_pb2.ScoreRequest(
            task_id="shapes",
            templates=["{}"],
            ensembles=[
                scorer_pb2.TemplateEnsemble(templates=[]),
                scorer_pb2.TemplateEnsemble(templates=["a {}", "no placeholder"]),
                scorer_pb2.TemplateEnsemble(templates=["a {}", "the {}"]),
            ],
        )
    )
    empty, bad, good = reply.ensemble_results
    assert empty.error == "ensemble has no templates" and empty.accuracy == 0
    assert bad.error.startswith("ensemble member 1 ('no placeholder'): template has no '{}'")
    assert good.error == "" and good.total == 8
    assert reply.results[0].error == "" and reply.results[0].total == 8


async def test_ensemble_members_count_against_the_request_limit(open_scorer):
    _, stub, _ = open_scorer
    triple = scorer_pb2.TemplateEnsemble(templates=["{}", "a {}", "the {}"])
    single = scorer_pb2.TemplateEnsemble(templates=["{}"])
    too_many = scorer_pb2.ScoreRequest(
        task_id="shapes", templates=[f"{i} {{}}" for i in range(10)], ensembles=[triple, triple, single]
    )
    await expect_status(
        stub.Score(too_many),
        grpc.StatusCode.INVALID_ARGUMENT,
        "17 templates in one request (ensemble members included)",
        "limit is 16",
    )
    at_limit = await stub.Score(
        scorer_pb2.ScoreRequest(
            task_id="shapes",
            templates=["{}"],
            ensembles=[scorer_pb2.TemplateEnsemble(templates=[f"{i} {{}}" for i in range(15)])],
        )
    )
    assert at_limit.results[0].total == 8 and at_limit.ensemble_results[0].total == 8
    only_ensembles = await stub.Score(
        scorer_pb2.ScoreRequest(task_id="shapes", ensembles=[scorer_pb2.TemplateEnsemble(templates=["{}", "a {}"])])
    )
    assert not only_ensembles.results and only_ensembles.ensemble_results[0].total == 8


async def test_ensemble_is_one_evaluation_of_the_budget_on_a_coop_task(base_config, tmp_path):
    tokens = tmp_path / "tokens.json"
    entry = {"name": "team", "token": "t-secret", "rights": ["score"], "evaluation_budget": 3}
    tokens.write_text(json.dumps({"tokens": [entry]}))
    coop = write_coop_dataset(tmp_path / "dtd", "dtd")
    config = replace(
        base_config,
        tokens_file=str(tokens),
        state_dir=tmp_path / "state",
        tasks=(TaskSource("dtd", coop, "dtd"),),
        shots=1,
    )
    app = ScorerApp(config)
    port = await app.start()
    team = (("authorization", "Bearer t-secret"),)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = scorer_pb2_grpc.ScorerStub(channel)
            (task,) = (await stub.ListTasks(scorer_pb2.ListTasksRequest(), metadata=team)).tasks
            assert list(task.class_names) == ["red apple", "green leaf", "blue sky", "black cat"]
            reply = await stub.Score(
                scorer_pb2.ScoreRequest(
                    task_id="dtd",
                    templates=["{}"],
                    ensembles=[
                        scorer_pb2.TemplateEnsemble(templates=["a {}", "the {}", "my {}"]),
                        scorer_pb2.TemplateEnsemble(templates=["x {}", "y {}"]),
                    ],
                ),
                metadata=team,
            )
            assert [r.total for r in reply.ensemble_results] == [4, 4]
            await expect_status(
                stub.Score(
                    scorer_pb2.ScoreRequest(task_id="dtd", ensembles=[scorer_pb2.TemplateEnsemble(templates=["{}"])]),
                    metadata=team,
                ),
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "3 of 3 templates used, this request needs 1",
            )
    finally:
        await app.stop()
