"""Every transformers dual encoder with get_text_features/get_image_features loads and encodes as its plain forward.

Each family is a tiny random checkpoint written in the Hugging Face layout and
loaded by the scorer's factory, and its embeddings are compared with the model's
own forward on inputs prepared the way the family is used: CLIP with the padding
masked, SigLIP and SigLIP2 padded to their maximum length with no mask (they were
trained so; the end of the padding is what they pool), ALIGN with the padding
masked. The tokenizer is CLIP's BPE for all (the encoders do not care which);
the weights are random, so nothing here is an accuracy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import (
    AlignConfig,
    AlignModel,
    AutoImageProcessor,
    AutoModel,
    AutoTokenizer,
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    EfficientNetImageProcessorPil,
    PreTrainedModel,
    Siglip2Config,
    Siglip2ImageProcessorPil,
    Siglip2Model,
    SiglipConfig,
    SiglipImageProcessorPil,
    SiglipModel,
)

from promptclimb.scorer.v1 import scorer_pb2, scorer_pb2_grpc
from scorer_service.factory import ModelLoadError, load_clip
from testbed.tokenizer import clip_tokenizer
from tests.scorer.conftest import bearer, serve_scorer

TEMPLATES = ["a photo of a {}.", "a blurry photo of the {} in the wild.", "{} on a table", "a {}"]
CLASSES = ["black cat", "red apple", "an unusually long class name with many words"]
TEXT_LENGTH = 64  # SigLIP's and ALIGN's processors pad to 64 tokens


def text_config(vocab: dict[str, int]) -> dict:
    return {
        "vocab_size": len(vocab),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": TEXT_LENGTH,
        "pad_token_id": vocab["<|endoftext|>"],
        "bos_token_id": vocab["<|startoftext|>"],
        "eos_token_id": vocab["<|endoftext|>"],
    }


VIT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "patch_size": 8}


def clip(vocab: dict[str, int]) -> tuple[PreTrainedModel, object]:
    config = CLIPConfig(
        text_config={**text_config(vocab), "max_position_embeddings": 77},
        vision_config={**VIT, "image_size": 32},
        projection_dim=16,
    )
    return CLIPModel(config), CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


def siglip(vocab: dict[str, int]) -> tuple[PreTrainedModel, object]:
    config = SiglipConfig(text_config=text_config(vocab), vision_config={**VIT, "image_size": 32})
    return SiglipModel(config), SiglipImageProcessorPil(size={"height": 32, "width": 32})


def siglip2(vocab: dict[str, int]) -> tuple[PreTrainedModel, object]:
    config = Siglip2Config(text_config=text_config(vocab), vision_config={**VIT, "num_patches": 16})
    return Siglip2Model(config), Siglip2ImageProcessorPil(patch_size=8, max_num_patches=16)


def align(vocab: dict[str, int]) -> tuple[PreTrainedModel, object]:
    config = AlignConfig(
        # BERT's default initialisation (0.02) leaves a tiny tower's first-token output nearly the same for every
        # prompt; wider weights make prompts differ, so padding that leaked into the embedding would show.
        text_config={**text_config(vocab), "initializer_range": 0.5},
        # EfficientNet scaled by 0.1 ends in 32 channels, its image embedding: the text is projected to match.
        # At the default initialisation (0.02) its output vanishes (a norm of 1e-17); 0.5 keeps it near 1.
        vision_config={"image_size": 32, "width_coefficient": 0.1, "depth_coefficient": 0.1, "initializer_range": 0.5},
        projection_dim=32,
    )
    return AlignModel(config), EfficientNetImageProcessorPil(
        size={"height": 32, "width": 32}, crop_size={"height": 32, "width": 32}
    )


FAMILIES: dict[str, Callable[[dict[str, int]], tuple[PreTrainedModel, object]]] = {
    "clip": clip,
    "siglip": siglip,
    "siglip2": siglip2,
    "align": align,
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def checkpoint(request, tmp_path_factory) -> tuple[str, Path]:
    tokenizer = clip_tokenizer()
    torch.manual_seed(0)
    model, image_processor = FAMILIES[request.param](tokenizer.get_vocab())
    directory = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    image_processor.save_pretrained(directory)  # type: ignore[attr-defined]
    return request.param, directory


def plain_text_features(encoder, family: str, prompts: list[str]) -> torch.Tensor:
    """The model's own forward, on input ids prepared as the family's processor prepares them."""
    hf = encoder.tokenizer.hf
    if family in ("siglip", "siglip2"):
        batch = hf(prompts, padding="max_length", max_length=TEXT_LENGTH, truncation=True, return_tensors="pt")
        inputs = {"input_ids": batch["input_ids"]}  # SigLIP's tokenizers return no mask: it was trained without one
    else:
        inputs = dict(hf(prompts, padding="max_length", max_length=TEXT_LENGTH, truncation=True, return_tensors="pt"))
    with torch.no_grad():
        out = encoder.model.get_text_features(**inputs)
    return torch.nn.functional.normalize(getattr(out, "pooler_output", out), dim=-1)


def plain_image_features(encoder, images: list[Image.Image]) -> torch.Tensor:
    inputs = encoder.image_processor(images=images, return_tensors="pt")
    with torch.no_grad():
        out = encoder.model.get_image_features(**inputs)
    return torch.nn.functional.normalize(getattr(out, "pooler_output", out), dim=-1)


def test_each_family_encodes_text_as_its_plain_forward(checkpoint):
    family, directory = checkpoint
    encoder = load_clip(str(directory))
    prompts = [t.replace("{}", c) for t in TEMPLATES for c in CLASSES]
    prefixes = [t.split("{}")[0] for t in TEMPLATES for _ in CLASSES]
    expected = plain_text_features(load_clip(str(directory), cpu_matmul="torch"), family, prompts)
    assert torch.cdist(expected, expected).max() > 0.1, "the tiny model maps every prompt alike: the test would be void"
    assert torch.allclose(encoder.encode_text(prompts, prefixes), expected, atol=1e-5)
    assert torch.allclose(encoder.encode_text(prompts), expected, atol=1e-5)
    assert encoder.context_length == (77 if family == "clip" else TEXT_LENGTH)


def test_each_family_encodes_images_as_its_plain_forward(checkpoint):
    _, directory = checkpoint
    encoder = load_clip(str(directory))
    images = [Image.new("RGB", (40 + 7 * i, 36), (30 * i, 255 - 20 * i, 90)) for i in range(5)]
    expected = plain_image_features(load_clip(str(directory), cpu_matmul="torch"), images)
    assert torch.allclose(expected.norm(dim=-1), torch.ones(len(images))), "features vanished before normalising"
    assert torch.cdist(expected, expected).max() > 0.1, "the tiny model maps every image alike: the test would be void"
    assert torch.allclose(encoder.encode_images(images), expected, atol=1e-5)


def plain_test_accuracy(family: str, directory: Path, image_root: Path, template: str) -> tuple[int, int]:
    """The whole model's forward: the argmax of its logits per image (SigLIP's sigmoid of them is monotone)."""
    model = AutoModel.from_pretrained(directory).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    processor = AutoImageProcessor.from_pretrained(directory, backend="pil")
    folders = sorted(p for p in image_root.iterdir() if p.is_dir())
    prompts = [template.replace("{}", f.name.replace("_", " ")) for f in folders]
    text = dict(tokenizer(prompts, padding="max_length", max_length=TEXT_LENGTH, return_tensors="pt"))
    if family in ("siglip", "siglip2"):
        text = {"input_ids": text["input_ids"]}
    correct = total = 0
    for label, folder in enumerate(folders):
        images = processor(images=[Image.open(p).convert("RGB") for p in sorted(folder.iterdir())], return_tensors="pt")
        with torch.no_grad():
            logits = model(**text, **images).logits_per_image
        correct += int((logits.argmax(dim=-1) == label).sum())
        total += logits.shape[0]
    return correct, total


async def test_each_family_is_served_and_scored_as_its_plain_forward(
    checkpoint, base_config, tokens_file, image_task_dir, tmp_path
):
    family, directory = checkpoint
    config = replace(
        base_config,
        model=str(directory),
        tokens_file=str(tokens_file),
        cache_dir=tmp_path / "features",
        state_dir=tmp_path / "state",
    )
    templates = ["a photo of a {}.", "{}", "an image showing the {} up close"]
    reply = scorer_pb2.ScoreResponse()
    async for _, channel in serve_scorer(config):
        reply = await scorer_pb2_grpc.ScorerStub(channel).Score(
            scorer_pb2.ScoreRequest(task_id="shapes", templates=templates, split=scorer_pb2.SPLIT_TEST),
            metadata=bearer("admin"),
        )
    assert [r.template for r in reply.results] == templates
    for result in reply.results:
        expected = plain_test_accuracy(family, directory, image_task_dir / "test", result.template)
        assert (result.correct, result.total) == expected, result.template


def test_a_model_without_both_towers_is_refused_with_the_reason(tmp_path):
    from transformers import BertConfig, BertModel

    vocab = clip_tokenizer().get_vocab()
    BertModel(BertConfig(**{k: v for k, v in text_config(vocab).items() if k != "eos_token_id"})).save_pretrained(
        tmp_path
    )
    clip_tokenizer().save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="get_text_features and get_image_features"):
        load_clip(str(tmp_path))
