"""The paper's reference prompts: `{}`, `a photo of a {}.`, CoOp's single prompt per dataset, and the CLIP
authors' hand-engineered ensembles.

"Hand-engineered" means two things in the literature, so both are offered.
CoOp's zero-shot CLIP baseline uses one prompt per dataset (`a photo of a {},
a type of pet.` for OxfordPets; CoOp's `CUSTOM_TEMPLATES`, eleven short
strings written out below). The CLIP authors published per-dataset lists,
scored as one ensemble (80 templates for ImageNet, one or a few for most others). We
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


# CoOp's zero-shot prompt of each dataset (its trainers/zsclip.py), by CoOp dataset name.
COOP_PROMPTS = {
    "imagenet": "a photo of a {}.",
    "caltech101": "a photo of a {}.",
    "oxford_pets": "a photo of a {}, a type of pet.",
    "stanford_cars": "a photo of a {}.",
    "oxford_flowers": "a photo of a {}, a type of flower.",
    "food101": "a photo of {}, a type of food.",
    "fgvc_aircraft": "a photo of a {}, a type of aircraft.",
    "sun397": "a photo of a {}.",
    "dtd": "{} texture.",
    "eurosat": "a centered satellite photo of {}.",
    "ucf101": "a photo of a person doing {}.",
}
COOP_PROMPT = "coop_single_prompt"  # the reference rows' keys, as in reproduce's results.csv
CLIP_ENSEMBLE = "clip_authors_ensemble"


class BaselineError(ValueError):
    """Hand-engineered templates are not available for a dataset; the message says why."""


@cache
def _clip_benchmark_templates() -> dict[str, list[str]]:
    try:
        data = importlib.resources.files("clip_benchmark.datasets") / "en_zeroshot_classification_templates.json"
        templates: dict[str, list[str]] = json.loads(data.read_text())
        return templates
    except ModuleNotFoundError as err:
        raise BaselineError(
            f"hand-engineered templates come from the package {CLIP_BENCHMARK_PIN}, which is not "
            "installed: run `make env` (or pip install --no-deps it)"
        ) from err


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
        raise BaselineError(
            f"{CLIP_BENCHMARK_PIN}'s template {bad!r} for {dataset!r} is not usable: {template_problem(bad)}"
        )
    return converted


def coop_prompt(dataset: str) -> str:
    """CoOp's single zero-shot prompt for a CoOp dataset name."""
    if dataset not in COOP_PROMPTS:
        raise BaselineError(f"CoOp has no prompt for {dataset!r}; datasets: {', '.join(COOP_PROMPTS)}")
    return COOP_PROMPTS[dataset]


def reference_candidates(dataset: str) -> dict[str, tuple[str, ...]]:
    """The paper's baseline rows as ensembles (a one-template ensemble is that template); a row is left out
    where its source has nothing for the dataset (clip-benchmark for UCF101, both for a non-CoOp dataset)."""
    rows: dict[str, tuple[str, ...]] = {PLAIN: (PLAIN,), A_PHOTO_OF: (A_PHOTO_OF,)}
    if dataset in COOP_PROMPTS:
        rows[COOP_PROMPT] = (coop_prompt(dataset),)
    if CLIP_BENCHMARK_KEYS.get(dataset) in _clip_benchmark_templates():
        rows[CLIP_ENSEMBLE] = hand_engineered(dataset)
    return rows
