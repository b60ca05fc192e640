"""The planted world: captions with a graded preference that cannot be guessed from the task.

The primary yardstick of the search (testbed recipes `planted-p7`, `planted-p4`).
Half of the captions are plain: the wording every template list starts from
("a photo of a ...", "an image of a ...", a bare name). The other half carry
one or more of three **cues**, "beach", "park" and "view": words of no use for
telling clothes apart, chosen because the embedded LLM writes each of them in a
few of its templates (issue 24's sample of 40 asks; docs/testbed.md,
"Findability", gives the rates measured with `python -m testbed.findability`).
The more cues a caption carries, the more precisely it names the garment:

- **loose naming**: a caption calls a garment by the official name of the class
  it is most often confused with (a tee a "shirt", a pullover a "coat") with
  probability LOOSE_NAMING[number of cues]: often in plain captions, never with
  all cues. Loose naming always uses the official name, the one the scorer fills
  into `{}`, so official names are ambiguous unless cues make them precise;
- **per-class names**: a precisely named garment is called by its official name
  or one of three other names (`CLASS_NAMES`). The other names are never used
  loosely, so per-class prompts that pick them (an oracle on the shots) beat
  any single template filled with the official names.

So a template scores higher with each cue it contains (a graded preference, the
ladder in the model's world_card.json), and its best single form holds all
three: PLANTED_OPTIMUM. Cues go in any order and in several wordings, so a
search that writes a cue in its own words still gains.

This file is frozen: it was written before any search ran against the model,
and its hash is part of the training recipe. Results that look bad are reported,
not tuned away by editing it.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np

# Label i of Fashion-MNIST: the official name first (as the scorer reads the folder), then three other names.
CLASS_NAMES: tuple[tuple[str, ...], ...] = (
    ("t-shirt top", "tee", "crew-neck tee", "short-sleeve top"),
    ("trouser", "pants", "slacks", "jeans"),
    ("pullover", "sweater", "jumper", "knit sweater"),
    ("dress", "gown", "sundress", "frock"),
    ("coat", "jacket", "parka", "overcoat"),
    ("sandal", "flip-flops", "strappy sandals", "slides"),
    ("shirt", "button-up shirt", "blouse", "flannel"),
    ("sneaker", "trainers", "running shoes", "kicks"),
    ("bag", "handbag", "purse", "tote"),
    ("ankle boot", "booties", "chelsea boots", "heeled boots"),
)
OFFICIAL_NAME_WEIGHT = 2.0  # against 1.0 for each other name, when a garment is named precisely
CONFUSED_WITH = (6, 3, 4, 4, 2, 7, 0, 9, 8, 7)  # label -> label; a bag is never called anything else

# Each cue, then the phrases a caption writes it in ({n}: the class name).
CUE_PHRASES: dict[str, tuple[str, ...]] = {
    "beach": ("on a beach", "at the beach", "on the beach", "beach"),
    "park": ("in a park", "at the park", "in the park", "park"),
    "view": ("front view", "side view", "a view of it", "view"),
}
CUES = tuple(CUE_PHRASES)
CUE_CAPTIONS = 0.5  # the share of captions that carry at least one cue
LOOSE_NAMING = (0.5, 0.3, 0.15, 0.05)  # by the number of cues in the caption: 0, 1, 2, 3

# The plain wordings, weighted: what plain captions say, and where cue captions put their cues around.
PLAIN: tuple[tuple[float, str], ...] = (
    (6, "a photo of a {n}"),
    (3, "a picture of a {n}"),
    (3, "an image of a {n}"),
    (2, "a photo of the {n}."),
    (2, "{n}"),
    (2, "my {n}"),
    (1, "a close-up photo of a {n}"),
    (1, "this {n}"),
)

CUE_LADDER: tuple[tuple[tuple[str, ...], str], ...] = (
    ((), "a photo of a {}."),
    (("beach",), "a photo of a {} on a beach."),
    (("park",), "a photo of a {} in a park."),
    (("view",), "a photo of a {}, front view."),
    (("beach", "park"), "a photo of a {} on a beach in a park."),
    (("beach", "view"), "a photo of a {} on a beach, front view."),
    (("park", "view"), "a photo of a {} in a park, front view."),
    (CUES, "a photo of a {} on a beach in a park, front view."),
)
PLANTED_OPTIMUM = CUE_LADDER[-1][1]


def caption(label: int, rng: random.Random) -> str:
    """One caption of an image of class `label`."""
    _, shape = rng.choices(PLAIN, [w for w, _ in PLAIN])[0]
    carried: list[str] = []
    if rng.random() < CUE_CAPTIONS:
        carried = rng.sample(CUES, rng.randint(1, len(CUES)))
    if rng.random() < LOOSE_NAMING[len(carried)]:
        name = CLASS_NAMES[CONFUSED_WITH[label]][0]
    else:
        names = CLASS_NAMES[label]
        name = rng.choices(names, [OFFICIAL_NAME_WEIGHT, *([1.0] * (len(names) - 1))])[0]
    phrases = [rng.choice(CUE_PHRASES[cue]).replace("{n}", name) for cue in carried]
    return " ".join([shape.replace("{n}", name), *phrases])


def captions(labels: np.ndarray, seed: int) -> list[str]:
    """One caption per image, deterministic in `seed` (the trainer passes seed and epoch)."""
    rng = random.Random(seed)
    return [caption(int(label), rng) for label in labels]


def captioner(images: np.ndarray, labels: np.ndarray) -> Callable[[int], list[str]]:
    """One caption per image for a given epoch seed; the planted world reads no pixels."""
    del images
    return lambda seed: captions(labels, seed)
