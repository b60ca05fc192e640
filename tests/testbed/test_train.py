"""The testbed trainer: deterministic, cached by recipe, loadable by the scorer, same pixels as the scorer sees."""

from __future__ import annotations

import dataclasses
import json
import random

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from scorer_service.factory import load_clip
from testbed import captions
from testbed.fashion_mnist import DEBIAN_DIR, load_split
from testbed.train import CARD, RECIPE_FILE, RECIPES, Tower, ensure_model, image_processor, pixels

# A recipe small enough for the suite: the real ones differ only in size.
SMALL = dataclasses.replace(
    RECIPES["fmnist-vit-p7"],
    name="small",
    vision=Tower(32, 1, 2),
    text=Tower(32, 1, 2),
    projection_dim=16,
    train_images=512,
    epochs=1,
    batch_size=128,
    warmup_steps=1,
)


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    return ensure_model(recipe=SMALL, models_dir=tmp_path_factory.mktemp("models"))


def test_training_is_deterministic_by_seed(small_model, tmp_path):
    again = ensure_model(recipe=SMALL, models_dir=tmp_path)
    first, second = load_file(small_model / "model.safetensors"), load_file(again / "model.safetensors")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    other_seed = ensure_model(recipe=dataclasses.replace(SMALL, seed=7), models_dir=tmp_path)
    assert not torch.equal(
        load_file(other_seed / "model.safetensors")["logit_scale"] * 0 + 1, torch.tensor(0.0)
    ) and not all(torch.equal(first[k], load_file(other_seed / "model.safetensors")[k]) for k in first)


def test_a_trained_model_is_cached_under_its_recipe_hash(small_model):
    assert small_model.name == f"small-{SMALL.digest()}"
    stamp = (small_model / RECIPE_FILE).stat().st_mtime_ns
    assert ensure_model(recipe=SMALL, models_dir=small_model.parent) == small_model
    assert (small_model / RECIPE_FILE).stat().st_mtime_ns == stamp  # loaded, not retrained
    assert SMALL.digest() != dataclasses.replace(SMALL, epochs=2).digest()


def test_the_card_says_what_the_model_is_with_its_measured_accuracy(small_model):
    card = (small_model / CARD).read_text()
    recipe = json.loads((small_model / RECIPE_FILE).read_text())
    assert "not CLIP" in card and "trained on this machine" in card
    photo = recipe["zero_shot_test_accuracy"]["a photo of a {}."]
    assert f"| `a photo of a {{}}.` | {100 * photo:.1f}% |" in card


def test_the_scorer_loads_it_and_sees_the_training_pixels(small_model):
    encoder = load_clip(str(small_model), device="cpu", dtype="float32", cpu_matmul="torch")
    assert encoder.tokenizer.ids(["a photo of a dog."])[0] == [49406, 320, 1125, 539, 320, 1929, 269, 49407]
    images, _ = load_split(DEBIAN_DIR, "test")
    pil = [Image.fromarray(image, mode="L") for image in images[:8]]  # the PNGs the scorer reads are 8-bit gray
    seen = image_processor()(images=[p.convert("RGB") for p in pil], return_tensors="pt")["pixel_values"]
    assert torch.allclose(seen, pixels(images[:8]), atol=1e-6)


def test_captions_are_deterministic_and_use_the_official_name_only_sometimes():
    images, labels = load_split(DEBIAN_DIR, "train")
    measured = captions.measure(images[:2000])
    words = captions.AttributeWords.fit(measured).words(measured)
    first = captions.captions(labels[:2000], words, seed=3)
    assert first == captions.captions(labels[:2000], words, seed=3) != captions.captions(labels[:2000], words, seed=4)
    official = [
        text for text, label in zip(first, labels[:2000], strict=True) if captions.CLASS_NAMES[label][0] in text
    ]
    assert 0.05 < len(official) / len(first) < 0.4
    bare = [text for text in first if text in {n for names in captions.CLASS_NAMES for n in names}]
    assert len(bare) / len(first) < 0.05
    rng = random.Random(0)
    assert all("{" not in captions.caption(int(rng.randrange(10)), ("dark", "wide"), rng) for _ in range(200))
    assert np.isfinite(np.concatenate(list(measured.values()))).all()
