"""The scorer's accuracy equals a plain transformers forward pass on the same data."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from transformers import CLIPModel, CLIPProcessor

from promptclimb.scorer.v1 import scorer_pb2
from tests.scorer.conftest import bearer

TEMPLATES = ["a photo of a {}.", "{}", "an image showing the {} up close", "itap of a {}"]


def reference_accuracy(model_dir: Path, image_root: Path, template: str) -> tuple[int, int]:
    """Independent zero-shot accuracy: padded to 77 tokens, fp32, full CLIP forward."""
    model = CLIPModel.from_pretrained(model_dir).eval()
    processor = CLIPProcessor.from_pretrained(model_dir)
    folders = sorted(p for p in image_root.iterdir() if p.is_dir())
    prompts = [template.replace("{}", f.name.replace("_", " ")) for f in folders]
    correct = total = 0
    for label, folder in enumerate(folders):
        images = [Image.open(p).convert("RGB") for p in sorted(folder.iterdir())]
        inputs = processor(text=prompts, images=images, return_tensors="pt", padding="max_length", max_length=77)
        with torch.no_grad():
            logits = model(**inputs).logits_per_image
        correct += int((logits.argmax(dim=-1) == label).sum())
        total += len(images)
    return correct, total


async def test_test_split_accuracy_matches_plain_forward_pass(locked_scorer, tiny_clip_dir, image_task_dir):
    _, stub, _ = locked_scorer
    reply = await stub.Score(
        scorer_pb2.ScoreRequest(task_id="shapes", templates=TEMPLATES, split=scorer_pb2.SPLIT_TEST),
        metadata=bearer("admin"),
    )
    assert [r.template for r in reply.results] == TEMPLATES
    assert reply.split == scorer_pb2.SPLIT_TEST
    for result in reply.results:
        correct, total = reference_accuracy(tiny_clip_dir, image_task_dir / "test", result.template)
        assert (result.correct, result.total) == (correct, total), result.template
        assert result.accuracy == correct / total
        assert result.error == ""


async def test_train_split_is_the_few_shot_sample(open_scorer):
    _, stub, _ = open_scorer
    reply = await stub.Score(scorer_pb2.ScoreRequest(task_id="shapes", templates=["{}"]))
    # 4 classes x 2 shots
    assert reply.results[0].total == 8
    assert reply.split == scorer_pb2.SPLIT_TRAIN
