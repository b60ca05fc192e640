"""The catalog world: captions whose best wording can be guessed from the task (a product catalog).

The testbed's second recipe (`catalog-p7`); the primary yardstick is the planted
world (testbed/worlds/planted.py), whose preference cannot be guessed.

Real CLIP learned from web captions, whose wording the optimizer never sees; it
only sees which templates score well. This module plays the web. It writes one
caption per training image and epoch from four ingredients:

- **names**: each class has several names. The official class name (the folder
  name the scorer fills into `{}`) is only one of them, so a template must make
  the official name work in context;
- **attributes measured from the pixels**: brightness, extent in the frame,
  shape and texture, each put into words only where the image is clearly at one
  end of the data set's range (thresholds are quantiles of the training set);
- **phrasings**: a fixed, weighted list of caption shapes in two registers. A
  *catalog* caption always names the garment precisely. A *casual* caption (a
  post, an ad, a bare name) uses names loosely: half the time it calls the
  garment by a name of the class it is most often confused with (a tee a
  "shirt", a pullover a "coat"). A bare name is rare, and casual, as on the web;
- **noise**: shop and social-media words, added at random.

Because attributes correlate with classes (trousers are tall, bags wide,
sandals sparse), templates that name an attribute tilt predictions. Because a
name means its class precisely only in catalog wording, a template that reads
like a catalog caption classifies better than the bare name or a casual phrase.
Both are discovered only through accuracy, which is the black-box problem in
miniature.

This file is frozen: it was written before any search ran against the model,
and its hash is part of the training recipe (the world interface at the end was
added later; it does not change a single caption). Results that look bad are reported,
not tuned away by editing it.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# Label i of Fashion-MNIST. The first name is the official one as the scorer
# sees it (its folder name, "_" read as a space); the others are what captions
# say instead most of the time.
CLASS_NAMES: tuple[tuple[str, ...], ...] = (
    ("t-shirt top", "t-shirt", "tee", "top", "tank top", "short-sleeve tee"),
    ("trouser", "trousers", "pants", "jeans", "slacks", "chinos"),
    ("pullover", "sweater", "jumper", "knit sweater", "hoodie", "cardigan"),
    ("dress", "gown", "frock", "sundress", "evening dress"),
    ("coat", "jacket", "parka", "overcoat", "winter jacket", "blazer"),
    ("sandal", "sandals", "flip-flops", "slides", "strappy sandals"),
    ("shirt", "blouse", "button-up shirt", "flannel", "dress shirt", "polo"),
    ("sneaker", "sneakers", "trainers", "running shoes", "kicks"),
    ("bag", "handbag", "purse", "tote", "backpack", "clutch"),
    ("ankle boot", "boots", "booties", "chelsea boots", "heeled boots"),
)
OFFICIAL_NAME_WEIGHT = 1.0  # against 1.0 for each other name: the official name is one of 5-6
BARE_NAME = "{n}"

# (weight, register, shape). {a}: zero to two attribute words with a trailing
# space; {n}: a class name; {b}: one attribute word (the shape is skipped without one).
CATALOG, CASUAL = "catalog", "casual"
PHRASINGS: tuple[tuple[float, str, str], ...] = (
    (14, CATALOG, "a grayscale photo of a {a}{n}"),
    (10, CATALOG, "a {a}{n} on a black background"),
    (9, CATALOG, "product photo of the {a}{n}"),
    (8, CATALOG, "low-res catalog picture: {a}{n}"),
    (6, CATALOG, "a scan of a {a}{n}, centered"),
    (5, CATALOG, "thumbnail of {a}{n} from the shop"),
    (7, CASUAL, "{a}{n} for sale"),
    (6, CASUAL, "my {a}{n}"),
    (5, CASUAL, "{n}, {b}"),
    (4, CASUAL, "a photo of a {a}{n}."),
    (4, CASUAL, "the {n} is {b}"),
    (3, CASUAL, "a tiny image of some {a}{n}"),
    (2, CASUAL, BARE_NAME),
    (2, CASUAL, "look at this {a}{n}!"),
)
# Casual captions name a garment by the class it is most often confused with, this often.
LOOSE_NAMING = 0.5
CONFUSED_WITH = (6, 3, 4, 4, 2, 7, 0, 9, 8, 7)  # label -> label; a bag is never called anything else
NOISE_WORDS = (
    "vintage",
    "new",
    "cheap",
    "2020",
    "sale",
    "#ootd",
    "free shipping",
    "size m",
    "cute",
    "classic",
    "lol",
    "must have",
    "in stock",
    "women's",
    "men's",
)
NOISE_PROBABILITY = 0.25
ATTRIBUTE_SLOT_FILL = (0.35, 0.45, 0.2)  # probability of 0, 1, 2 attribute words in {a}

# attribute -> (low word, high word); quantiles below/above which the word applies.
ATTRIBUTE_WORDS = {
    "brightness": ("dark", "pale"),
    "extent": ("small", "large"),
    "aspect": ("tall", "wide"),
    "texture": ("plain", "patterned"),
}
LOW_QUANTILE, HIGH_QUANTILE = 0.3, 0.7
FOREGROUND = 40  # pixel value (0-255) above which a pixel belongs to the garment


def measure(images: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image attribute values of uint8 images [N, H, W] on a black background."""
    foreground = images > FOREGROUND
    counts = foreground.sum(axis=(1, 2)).clip(min=1)
    values = images.astype(np.float32)
    mean = (values * foreground).sum(axis=(1, 2)) / counts
    spread = np.sqrt(((values - mean[:, None, None]) ** 2 * foreground).sum(axis=(1, 2)) / counts)
    rows, cols = foreground.any(axis=2), foreground.any(axis=1)
    height = rows.sum(axis=1).clip(min=1)
    width = cols.sum(axis=1).clip(min=1)
    return {
        "brightness": mean,
        "extent": counts / (images.shape[1] * images.shape[2]),
        "aspect": width / height,
        "texture": spread,
    }


@dataclass(frozen=True)
class AttributeWords:
    """Thresholds fitted on the training images; turns measurements into words."""

    low: dict[str, float]
    high: dict[str, float]

    @classmethod
    def fit(cls, measured: dict[str, np.ndarray]) -> AttributeWords:
        return cls(
            low={k: float(np.quantile(v, LOW_QUANTILE)) for k, v in measured.items()},
            high={k: float(np.quantile(v, HIGH_QUANTILE)) for k, v in measured.items()},
        )

    def words(self, measured: dict[str, np.ndarray]) -> list[tuple[str, ...]]:
        """For each image, the attribute words that clearly apply to it."""
        count = len(next(iter(measured.values())))
        out: list[list[str]] = [[] for _ in range(count)]
        for name, (low_word, high_word) in ATTRIBUTE_WORDS.items():
            values = measured[name]
            for index in np.flatnonzero(values <= self.low[name]):
                out[index].append(low_word)
            for index in np.flatnonzero(values >= self.high[name]):
                out[index].append(high_word)
        return [tuple(w) for w in out]


def caption(label: int, attributes: tuple[str, ...], rng: random.Random) -> str:
    """One caption of an image of class `label` with the given attribute words."""
    shapes = [(w, r, s) for w, r, s in PHRASINGS if "{b}" not in s or attributes]
    _, register, shape = rng.choices(shapes, [w for w, _, _ in shapes])[0]
    named = CONFUSED_WITH[label] if register == CASUAL and rng.random() < LOOSE_NAMING else label
    names = CLASS_NAMES[named]
    weights = [OFFICIAL_NAME_WEIGHT, *([1.0] * (len(names) - 1))]
    name = rng.choices(names, weights)[0]
    chosen = list(attributes)
    rng.shuffle(chosen)
    slot_words = rng.choices(range(len(ATTRIBUTE_SLOT_FILL)), ATTRIBUTE_SLOT_FILL)[0]
    slot = "".join(f"{word} " for word in chosen[:slot_words])
    text = shape.replace("{a}", slot).replace("{b}", chosen[0] if chosen else "").replace("{n}", name)
    if rng.random() < NOISE_PROBABILITY:
        noise = rng.choice(NOISE_WORDS)
        text = f"{noise} {text}" if rng.random() < 0.5 else f"{text} {noise}"
    return text


def captions(labels: np.ndarray, words: list[tuple[str, ...]], seed: int) -> list[str]:
    """One caption per image, deterministic in `seed` (the trainer passes seed and epoch)."""
    rng = random.Random(seed)
    return [caption(int(label), attrs, rng) for label, attrs in zip(labels, words, strict=True)]


# The world interface (testbed/worlds/__init__.py). The catalog world has no planted cues; its "cues" are the
# words of its most frequent catalog phrasings, and its optimum is the heaviest catalog phrasing.
CUE_LADDER: tuple[tuple[tuple[str, ...], str], ...] = (
    ((), "{}"),
    (("grayscale",), "a grayscale photo of a {}"),
    (("black background",), "a {} on a black background"),
    (("grayscale", "black background"), "a grayscale photo of a {} on a black background"),
)
PLANTED_OPTIMUM = "a grayscale photo of a {}"


def captioner(images: np.ndarray, labels: np.ndarray) -> Callable[[int], list[str]]:
    """One caption per image for a given epoch seed; attribute thresholds are fitted on `images`."""
    measured = measure(images)
    words = AttributeWords.fit(measured).words(measured)
    return lambda seed: captions(labels, words, seed)
