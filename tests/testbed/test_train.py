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
from testbed.ceilings import WORLD_CARD
from testbed.fashion_mnist import DEBIAN_DIR, load_split
from testbed.train import CARD, RECIPE_FILE, ensure_model, image_processor, pixels, train_model, zero_shot_accuracies
from testbed.worlds import catalog as captions
from tests.testbed.conftest import SMALL


def test_training_is_deterministic_by_seed(small_model):
    saved = load_file(small_model / "model.safetensors")
    again = train_model(SMALL)[0].state_dict()
    other_seed = train_model(dataclasses.replace(SMALL, seed=7))[0].state_dict()
    assert saved.keys() <= again.keys() and all(torch.equal(saved[k], again[k]) for k in saved)
    assert not all(torch.equal(saved[k], other_seed[k]) for k in saved)


def test_a_trained_model_is_cached_under_its_recipe_hash(small_model):
    assert small_model.name == f"small-{SMALL.digest()}"
    stamp = (small_model / RECIPE_FILE).stat().st_mtime_ns
    assert ensure_model(recipe=SMALL, models_dir=small_model.parent) == small_model
    assert (small_model / RECIPE_FILE).stat().st_mtime_ns == stamp  # loaded, not retrained
    assert SMALL.digest() != dataclasses.replace(SMALL, epochs=2).digest()


def test_the_cards_state_the_measured_ceilings_in_the_contracted_schema(small_model):
    card = (small_model / CARD).read_text()
    world_card = json.loads((small_model / WORLD_CARD).read_text())
    assert "not CLIP" in card and "trained on this machine" in card
    assert set(world_card) == {
        "recipe",
        "world",
        "model_digest",
        "class_names",
        "cues",
        "planted_optimum",
        "per_class_prompts",
        "ceilings",
    }
    assert (world_card["recipe"], world_card["world"], world_card["model_digest"]) == (
        "small",
        SMALL.world,
        SMALL.digest(),
    )
    assert world_card["class_names"][:2] == ["T-shirt top", "trouser"] and len(world_card["class_names"]) == 10
    assert len(world_card["cues"]) >= 3 and world_card["planted_optimum"].count("{}") == 1
    assert len(world_card["per_class_prompts"]) == 10 and all(
        p and "{}" not in p[0] for p in world_card["per_class_prompts"]
    )
    ceilings = world_card["ceilings"]
    assert set(ceilings) == {
        "generic_best",
        "generic",
        "cue_ladder",
        "planted_optimum",
        "per_class_oracle",
        "linear_probe_heldout",
    }
    assert ceilings["generic_best"]["list_size"] >= 100
    assert ceilings["generic_best"]["accuracy"] >= max(ceilings["generic"].values())
    ladder = ceilings["cue_ladder"]
    assert len(ladder[0]["cues"]) == 0 and ladder[-1]["cues"] == world_card["cues"]
    assert ladder[-1]["template"] == world_card["planted_optimum"]
    assert ladder[-1]["accuracy"] == ceilings["planted_optimum"]
    assert all(0 <= row["accuracy"] <= 100 for row in ladder)
    # the figures are test accuracies: the trainer's own zero-shot path gives the same number
    photo = zero_shot_accuracies(small_model, ["a photo of a {}."])["a photo of a {}."]
    assert ceilings["generic"]["a photo of a {}."] == pytest.approx(100 * photo, abs=0.011)
    assert f"`a photo of a {{}}.` | {100 * photo:.1f} |" in card


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
