"""A testbed model small enough for the suite: the real recipes differ only in size and data."""

from __future__ import annotations

import dataclasses

import pytest

from testbed.train import DEFAULT_RECIPE, RECIPES, Tower, ensure_model

SMALL = dataclasses.replace(
    RECIPES[DEFAULT_RECIPE],
    name="small",
    vision=Tower(32, 1, 2),
    text=Tower(32, 1, 2),
    projection_dim=16,
    train_images=512,
    epochs=1,
    batch_size=128,
    warmup_steps=1,
)


@pytest.fixture(scope="session")
def small_model(tmp_path_factory):
    return ensure_model(recipe=SMALL, models_dir=tmp_path_factory.mktemp("models"))
