"""The ceilings of a trained testbed model, measured on the full test split: its world_card.json.

What a search on the testbed can reach, and what it is compared with:

- `generic`: `{}` and `a photo of a {}.`; `generic_best`: the best of the generic list
  (the built-in pool, the CLIP authors' 80 ImageNet templates, CoOp's prompts);
- `cue_ladder`: the world's templates with 0, 1, 2 and all cues (testbed/worlds/);
- `planted_optimum`: the world's best single template;
- `per_class_oracle`: per-class prompts (the optimum filled with each class's
  names of the world, chosen per class by coordinate ascent on the few-shot
  train split of seed ORACLE_SEED, ORACLE_SHOTS shots);
- `linear_probe_heldout`: a linear probe on the 10,000 held-out train images (white box).

Every figure is percent test accuracy on the full 10,000-image test split.
The JSON is the contract with the benchmark (bench/): its keys are documented in docs/testbed.md.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from optimizer_service.baselines import COOP_PROMPTS, hand_engineered
from optimizer_service.seeds import BUILTIN_TEMPLATES
from scorer_service.datasets import few_shot, load_image_folder
from testbed import whitebox
from testbed.fashion_mnist import DEBIAN_DIR, held_out_images, prepare_testbed_task
from testbed.train import CLASS_NAMES
from testbed.worlds import cues, world

WORLD_CARD = "world_card.json"
ORACLE_SHOTS, ORACLE_SEED, ORACLE_SWEEPS = 16, 0, 2
PLAIN, A_PHOTO_OF = "{}", "a photo of a {}."


def generic_templates() -> list[str]:
    """The generic list: built-in pool, then the CLIP authors' ImageNet 80, then CoOp's prompts, without repeats."""
    return list(dict.fromkeys([*BUILTIN_TEMPLATES, *hand_engineered("imagenet"), *COOP_PROMPTS.values()]))


class Classifier:
    """Zero-shot accuracy of prompt sets (one prompt per class) on a fixed set of image embeddings."""

    def __init__(self, model_dir: Path, features: torch.Tensor, labels: torch.Tensor) -> None:
        self.encoder = whitebox.encoder(model_dir)
        self.features, self.labels = features, labels

    def accuracy(self, prompts: Sequence[str]) -> float:
        text = self.encoder.encode_text(list(prompts)).float()
        return 100.0 * float(((self.features @ text.T).argmax(1) == self.labels).float().mean())

    def template(self, template: str, names: Sequence[str]) -> float:
        return self.accuracy([template.replace("{}", name) for name in names])


def per_class_oracle(shots: Classifier, template: str, choices: Sequence[Sequence[str]]) -> list[str]:
    """Per class, the name of `choices[c]` in `template` that makes the shots' accuracy highest (ties keep)."""
    prompts = [template.replace("{}", names[0]) for names in choices]
    best = shots.accuracy(prompts)
    for _ in range(ORACLE_SWEEPS):
        for label, names in enumerate(choices):
            for name in names:
                trial = [*prompts[:label], template.replace("{}", name), *prompts[label + 1 :]]
                accuracy = shots.accuracy(trial)
                if accuracy > best:
                    best, prompts = accuracy, trial
    return prompts


def measure(model_dir: Path, recipe_name: str, world_name: str, digest: str, source: Path = DEBIAN_DIR) -> dict:
    """Every ceiling of the model in model_dir, as the world card (JSON-ready)."""
    model_dir = Path(model_dir)
    module = world(world_name)
    data = prepare_testbed_task()
    names = CLASS_NAMES  # label order, spelled as the scorer reads the folders
    test = Classifier(model_dir, *whitebox.features_of_test_split(model_dir, source))
    generic = generic_templates()
    scored = {template: test.template(template, names) for template in generic}
    best = max(scored, key=lambda t: scored[t])
    ladder = [
        {"cues": list(row_cues), "template": template, "accuracy": test.template(template, names)}
        for row_cues, template in module.CUE_LADDER
    ]
    shots = few_shot(load_image_folder(data).train, ORACLE_SHOTS, ORACLE_SEED)
    shot_classifier = Classifier(model_dir, *whitebox.shot_features(model_dir, shots))
    choices = [(official, *others) for official, (_, *others) in zip(names, module.CLASS_NAMES, strict=True)]
    oracle = per_class_oracle(shot_classifier, module.PLANTED_OPTIMUM, choices)
    held_images, held_labels = held_out_images(source)
    held = whitebox.image_features(model_dir, [Image.fromarray(image, mode="L") for image in held_images])
    return {
        "recipe": recipe_name,
        "world": world_name,
        "model_digest": digest,
        "class_names": list(names),
        "cues": list(cues(module)),
        "planted_optimum": module.PLANTED_OPTIMUM,
        "per_class_prompts": [[prompt] for prompt in oracle],
        "ceilings": {
            "generic_best": {"template": best, "accuracy": scored[best], "list_size": len(generic)},
            "generic": {PLAIN: scored[PLAIN], A_PHOTO_OF: scored[A_PHOTO_OF]},
            "cue_ladder": ladder,
            "planted_optimum": test.template(module.PLANTED_OPTIMUM, names),
            "per_class_oracle": test.accuracy(oracle),
            "linear_probe_heldout": whitebox.probe_test_accuracy(
                model_dir, held, torch.from_numpy(held_labels.astype("int64"))
            ),
        },
    }


def write(model_dir: Path, card: dict[str, Any]) -> Path:
    path = Path(model_dir) / WORLD_CARD
    path.write_text(json.dumps(card, indent=2) + "\n")
    return path


def card_tables(card: dict[str, Any]) -> str:
    """The ceilings as Markdown, for the model card and docs/testbed.md."""
    c = card["ceilings"]
    rows = [
        f"| `{{}}` | {c['generic'][PLAIN]:.1f} |",
        f"| `a photo of a {{}}.` | {c['generic'][A_PHOTO_OF]:.1f} |",
        f"| best of the generic list ({c['generic_best']['list_size']} templates): "
        f"`{c['generic_best']['template']}` | {c['generic_best']['accuracy']:.1f} |",
        *(
            f"| {len(r['cues'])} cue{'s' if len(r['cues']) != 1 else ''} "
            f"({', '.join(r['cues']) or 'none'}): `{r['template']}` | {r['accuracy']:.1f} |"
            for r in c["cue_ladder"]
        ),
        f"| planted optimum `{card['planted_optimum']}` | {c['planted_optimum']:.1f} |",
        f"| per-class oracle (names chosen on {ORACLE_SHOTS} shots, seed {ORACLE_SEED}) "
        f"| {c['per_class_oracle']:.1f} |",
        f"| linear probe on the 10,000 held-out train images (white box) | {c['linear_probe_heldout']:.1f} |",
    ]
    return "\n".join(
        [
            f"Ceilings of `{card['recipe']}` ({card['world']} world): a small CLIP trained here on Fashion-MNIST, "
            "not CLIP. Percent accuracy on the full 10,000-image test split.",
            "",
            "| classifier | test accuracy |",
            "|---|---|",
            *rows,
        ]
    )
