"""The text encoder's fast paths give the embeddings of a plain transformers forward pass."""

from __future__ import annotations

import pytest
import torch

from scorer_service.factory import ModelLoadError, load_clip
from scorer_service.prefix_groups import prefix_groups

TEMPLATES = ["a photo of a {}.", "a blurry photo of the {} in the wild.", "photo-{}", "{} on a table", "a {}"]
CLASSES = ["black cat", "blue sky", "green leaf", "red apple", "an unusually long class name with many words"]


@pytest.fixture(scope="module")
def encoder(tiny_clip_dir):
    """As the scorer loads it: on CPU, with oneDNN kernels."""
    return load_clip(str(tiny_clip_dir))


@pytest.fixture(scope="module")
def plain_encoder(tiny_clip_dir):
    """transformers as it is: torch's default kernels."""
    return load_clip(str(tiny_clip_dir), cpu_matmul="torch")


def reference(encoder, prompts: list[str]) -> torch.Tensor:
    batch = encoder.tokenizer.hf(prompts, padding="max_length", max_length=77, return_tensors="pt")
    with torch.no_grad():
        features = encoder.model.get_text_features(**batch).pooler_output
    return torch.nn.functional.normalize(features, dim=-1)


def test_shared_prefix_and_length_sorting_match_the_padded_forward(encoder, plain_encoder):
    prompts = [t.replace("{}", c) for t in TEMPLATES for c in CLASSES]
    prefixes = [t.split("{}")[0] for t in TEMPLATES for _ in CLASSES]
    expected = reference(plain_encoder, prompts)
    shared = encoder.encode_text(prompts, prefixes)
    plain = encoder.encode_text(prompts)
    assert torch.allclose(shared, expected, atol=1e-5)
    assert torch.allclose(plain, expected, atol=1e-5)


def test_prefix_groups_only_share_exact_token_prefixes(encoder):
    prompts = [t.replace("{}", c) for t in TEMPLATES for c in CLASSES]
    prefixes = [t.split("{}")[0] for t in TEMPLATES for _ in CLASSES]
    ids = encoder.tokenizer.ids(prompts)
    groups = prefix_groups(encoder.tokenizer, ids, prefixes)
    for key, members in groups.items():
        if key is not None:
            assert len(members) >= 2 and all(tuple(ids[i][: len(key)]) == key for i in members)
    shared_templates = {prefixes[m] for key, ms in groups.items() if key is not None for m in ms}
    assert "a photo of a " in shared_templates
    assert "" not in shared_templates  # "{} on a table": only the start token before the class


def test_a_missing_hub_model_names_what_was_tried(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="hub id 'openai/clip-vit-base-patch16' \\(offline=True\\)"):
        load_clip("openai/clip-vit-base-patch16")


def test_token_ids_cut_to_the_context_as_the_tokenizer_truncates(encoder):
    prompts = ["a photo of a " + "very " * 100 + "black cat.", "a photo of a black cat."]
    expected = encoder.tokenizer.hf(prompts, truncation=True, max_length=77)["input_ids"]
    assert encoder.tokenizer.ids(prompts) == expected
    assert encoder.tokenizer.lengths(prompts)[0] > 77
