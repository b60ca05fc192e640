"""The planted world: captions with a graded preference that cannot be guessed from the task.

The primary yardstick of the search (testbed recipes `planted-p7`, `planted-p4`): its second design, and
the base of the third (planted_v3.py), which differs in one number.

Half of the captions carry one or more of three **cues**, each a small family of
words (CUE_WORDS) that says nothing about telling clothes apart:

- `view`: "front view", "side view", ...;
- `outdoors`: a street, a city, a forest, grass, a park, a beach;
- `wearing`: the garment worn by a person standing or sitting.

The families were taken from what the search's own LLM writes: in a sample of
40 random-search asks and 40 initial-pool asks of the embedded Qwen 1.5B (class
names given, temperature 1; `python -m testbed.findability`), templates held
"view" in 6.8%, an outdoors word in about 5% and a wearing word in about 3%,
while "beach" and "park" alone, the first design's cues, appeared in none. No
cue word is a word of the built-in pool (tests/testbed/test_worlds.py checks).

The more cues a caption carries, the more precisely it names the garment:

- **loose naming**: a caption calls a garment by the official name of the class
  it is most often confused with (a tee a "shirt", a pullover a "coat") with
  probability LOOSE_NAMING[number of cues]. Loose naming always uses the
  official name, the one the scorer fills into `{}`, so official names are
  ambiguous unless cues make them precise, and stay slightly ambiguous even
  with all three;
- **decoys**: half of all captions, cued or not, also carry a context phrase of
  the kind generic template lists are made of (DECOYS: backgrounds, lighting,
  rooms, tables, close-ups). Decoys are independent of naming, so a long
  generic template earns nothing for its length: the first design, whose plain
  captions were short, let any trailing phrase act as a cue (its best generic
  template came within 1 point of its optimum);
- **per-class names**: a precisely named garment is called by its official name
  or one of three other names (`CLASS_NAMES`). The other names are never used
  loosely, so per-class prompts that pick them (an oracle on the shots) beat
  any single template filled with the official names: per-class headroom.

So a template scores higher with each cue it contains (a graded preference, the
ladder in the model's world_card.json), and its best single form holds all
three: PLANTED_OPTIMUM. Cues go in any order and in several wordings, so a
search that writes a cue in its own words still gains.

This file is frozen: this second design was written after the first design's
ceilings were measured (no search had run against either) and before any
search ran against it; its hash is part of the training recipe. Results that
look bad are reported, not tuned away by editing it.
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

# Each cue: the words that carry it in a template (what findability counts), then the phrases captions write.
CUE_WORDS: dict[str, tuple[str, ...]] = {
    "view": ("view",),
    "outdoors": ("street", "city", "forest", "grass", "park", "beach"),
    "wearing": ("wearing", "worn", "standing", "sitting"),
}
CUE_PHRASES: dict[str, tuple[str, ...]] = {
    "view": ("front view", "side view", "back view", "a view of it", "view"),
    "outdoors": (
        "on the street",
        "in a street setting",
        "in the city",
        "in a forest",
        "on the grass",
        "in a park",
        "on a beach",
    ),
    "wearing": ("worn by a person", "someone wearing it", "worn by a person standing", "worn while sitting", "wearing"),
}
CUES = tuple(CUE_PHRASES)
CUE_CAPTIONS = 0.5  # the share of captions that carry at least one cue
LOOSE_NAMING = (0.6, 0.4, 0.25, 0.12)  # by the number of cues in the caption: 0, 1, 2, 3
DECOY_CAPTIONS = 0.5  # the share of captions (cued or not) that carry one decoy phrase
# Context phrases of generic template lists (the built-in pool's, the CLIP authors', what the LLM writes) that
# hold no cue word; a caption's naming does not depend on them.
DECOYS: tuple[str, ...] = (
    "on a white background",
    "against a dark background",
    "on a plain background",
    "with a contrasting background",
    "inside a room",
    "on a cluttered table",
    "in a studio",
    "close-up",
    "up close",
    "next to other objects",
    "in a scene with other objects",
    "in daylight",
    "at night",
    "in soft light",
    "in harsh sunlight",
    "in the center of the frame",
    "from the front",
    "seen from above",
    "seen from the side",
    "in high quality",
    "outside",
    "indoors",
    "in the rain",
    "in the snow",
    "in detail",
    "with natural lighting",
)

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
    (("view",), "a photo of a {}, front view."),
    (("outdoors",), "a photo of a {} on the street."),
    (("wearing",), "a photo of a {} worn by a person."),
    (("view", "outdoors"), "a photo of a {} on the street, front view."),
    (("view", "wearing"), "a photo of a {} worn by a person, front view."),
    (("outdoors", "wearing"), "a photo of a {} worn by a person on the street."),
    (CUES, "a photo of a {} worn by a person on the street, front view."),
)
PLANTED_OPTIMUM = CUE_LADDER[-1][1]


def caption(label: int, rng: random.Random, loose_naming: tuple[float, ...] = LOOSE_NAMING) -> str:
    """One caption of an image of class `label`: a plain wording, its cue and decoy phrases in any order.

    `loose_naming`: by the number of cues, the chance of the confusable class's name (planted_v3 passes its own)."""
    _, shape = rng.choices(PLAIN, [w for w, _ in PLAIN])[0]
    carried: list[str] = []
    if rng.random() < CUE_CAPTIONS:
        carried = rng.sample(CUES, rng.randint(1, len(CUES)))
    if rng.random() < loose_naming[len(carried)]:
        name = CLASS_NAMES[CONFUSED_WITH[label]][0]
    else:
        names = CLASS_NAMES[label]
        name = rng.choices(names, [OFFICIAL_NAME_WEIGHT, *([1.0] * (len(names) - 1))])[0]
    phrases = [rng.choice(CUE_PHRASES[cue]) for cue in carried]
    if rng.random() < DECOY_CAPTIONS:
        phrases.append(rng.choice(DECOYS))
    rng.shuffle(phrases)
    return " ".join([shape.replace("{n}", name), *phrases])


def captions(labels: np.ndarray, seed: int, loose_naming: tuple[float, ...] = LOOSE_NAMING) -> list[str]:
    """One caption per image, deterministic in `seed` (the trainer passes seed and epoch)."""
    rng = random.Random(seed)
    return [caption(int(label), rng, loose_naming) for label in labels]


def captioner(images: np.ndarray, labels: np.ndarray) -> Callable[[int], list[str]]:
    """One caption per image for a given epoch seed; the planted world reads no pixels."""
    del images
    return lambda seed: captions(labels, seed)
