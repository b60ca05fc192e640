"""The paper's reference prompts: `{}`, `a photo of a {}.`, and the CLIP authors' hand-engineered ones.

The hand-engineered templates are the per-dataset lists the CLIP authors
published (an ensemble of 80 for ImageNet, one or a few for most others). We
read them at run time from the data files of the pinned PyPI package
clip-benchmark rather than copying them here, so they stay the maintained
list. That package's code pulls torchvision and open_clip, so `make env`
installs it with --no-deps and we only open its JSON through importlib.resources.
"""

from __future__ import annotations

import importlib.resources
import json
from functools import cache

from promptclimb_common.templates import PLACEHOLDER, template_problem

PLAIN = "{}"
A_PHOTO_OF = "a photo of a {}."
CLIP_BENCHMARK_PIN = "clip-benchmark==1.6.2"  # installed by the Makefile (--no-deps)

# CoOp's dataset names (as in scorer_service/coop.py) -> clip-benchmark's keys.
CLIP_BENCHMARK_KEYS = {
    "imagenet": "imagenet1k",
    "caltech101": "caltech101",
    "oxford_pets": "pets",
    "stanford_cars": "cars",
    "oxford_flowers": "flowers",
    "food101": "food101",
    "fgvc_aircraft": "fgvc_aircraft",
    "sun397": "sun397",
    "dtd": "dtd",
    "eurosat": "eurosat",
    "ucf101": "ucf101",
}


class BaselineError(ValueError):
    """Hand-engineered templates are not available for a dataset; the message says why."""


@cache
def _clip_benchmark_templates() -> dict[str, list[str]]:
    try:
        data = importlib.resources.files("clip_benchmark.datasets") / "en_zeroshot_classification_templates.json"
        return json.loads(data.read_text())
    except ModuleNotFoundError as err:
        raise BaselineError(f"hand-engineered templates come from the package {CLIP_BENCHMARK_PIN}, which is not "
                            "installed: run `make env` (or pip install --no-deps it)") from err


def hand_engineered(dataset: str) -> tuple[str, ...]:
    """The CLIP authors' templates for a CoOp dataset name, with clip-benchmark's `{c}` as our `{}`."""
    key = CLIP_BENCHMARK_KEYS.get(dataset)
    if key is None:
        raise BaselineError(f"no hand-engineered templates for {dataset!r}; datasets: {', '.join(CLIP_BENCHMARK_KEYS)}")
    templates = _clip_benchmark_templates().get(key)
    if not templates:
        raise BaselineError(f"{CLIP_BENCHMARK_PIN} ships no hand-engineered templates for {dataset!r} ({key!r})")
    converted = tuple(t.replace("{c}", PLACEHOLDER) for t in templates)
    bad = next((t for t in converted if template_problem(t)), None)
    if bad is not None:
        raise BaselineError(f"{CLIP_BENCHMARK_PIN}'s template {bad!r} for {dataset!r} is not usable: {template_problem(bad)}")
    return converted


def reference_candidates(dataset: str) -> dict[str, tuple[str, ...]]:
    """The paper's baseline rows as ensembles (a one-template ensemble is that template); the
    hand-engineered row is left out for a dataset clip-benchmark has no templates for (UCF101)."""
    rows = {PLAIN: (PLAIN,), A_PHOTO_OF: (A_PHOTO_OF,)}
    if CLIP_BENCHMARK_KEYS.get(dataset) in _clip_benchmark_templates():
        rows["hand-engineered"] = hand_engineered(dataset)
    return rows
