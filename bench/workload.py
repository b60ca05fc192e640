"""The benchmark's workload: a ViT-B/32-shaped text tower, class names, templates.

Speed depends on shapes and token counts, not on trained weights, so random
weights do. Token counts do matter, so prompts are tokenized by OpenAI CLIP's
real BPE (testbed.tokenizer).
"""

from __future__ import annotations

import random

import torch

SYLLABLES = ("ka", "lo", "mi", "ren", "tas", "vo", "quin", "bel", "dor", "sha", "pu", "gri", "fen", "zu", "tor", "nel")

# 64 templates in the style of CLIP prompts (written for this benchmark).
TEMPLATES = [
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a close-up photo of the {}.",
    "a bright photo of a {}.",
    "a dark photo of the {}.",
    "a photo of my {}.",
    "a photo of a small {}.",
    "a photo of a large {}.",
    "a cropped photo of the {}.",
    "a low resolution photo of a {}.",
    "a good photo of the {}.",
    "a bad photo of a {}.",
    "a black and white photo of a {}.",
    "a pixelated photo of the {}.",
    "a jpeg corrupted photo of a {}.",
    "a sketch of a {}.",
    "a drawing of the {}.",
    "a painting of a {}.",
    "a rendering of a {}.",
    "a cartoon {}.",
    "an origami {}.",
    "a plastic {}.",
    "a toy {}.",
    "a sculpture of a {}.",
    "a tattoo of the {}.",
    "{} in the wild.",
    "{}",
    "itap of a {}.",
    "art of the {}.",
    "the {} in a video game.",
    "a photo of one {}.",
    "a photo of many {}.",
    "a photo of the clean {}.",
    "a photo of the dirty {}.",
    "a photo of a {} in bright natural lighting.",
    "an image of a {} taken outdoors.",
    "a detailed picture of a {}.",
    "a centered photo of a single {}.",
    "a photo of a {}, a type of object.",
    "a satellite photo of the {}.",
    "a close-up of a {} on a table.",
    "a snapshot of a {} from above.",
    "a {} seen from the side.",
    "a studio photo of a {} on a white background.",
    "a grainy film photo of a {}.",
    "a photo of a {} at night.",
    "a photo of a {} in the rain.",
    "a photo of a {} in the snow.",
    "a blurry snapshot of the {} in motion.",
    "a macro photo of a {}.",
    "an old photo of a {}.",
    "a photo of a weird {}.",
    "a photo of a cool {}.",
    "a photo of a nice {}.",
    "a rendition of the {}.",
    "a doodle of a {}.",
    "an embroidered {}.",
    "a photo of a {} next to a person.",
    "a photo of a partially hidden {}.",
    "the {} in a museum.",
    "a photo of a {} in a city street.",
    "a photo of a {} in a forest.",
    "a photo of a {} under water.",
    "a webcam photo of a {}.",
]


def class_names(count: int, seed: int = 0) -> list[str]:
    """Distinct pseudo-English names of 1 to 3 words (ImageNet names average about 2)."""
    rng = random.Random(seed)
    names: list[str] = []
    while len(names) < count:
        words = [
            "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3))) for _ in range(rng.choice((1, 2, 2, 3)))
        ]
        name = " ".join(words)
        if name not in names:
            names.append(name)
    return names


def image_features(count: int, dim: int, classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-norm image features with labels; one image per class, cycling."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.nn.functional.normalize(torch.randn(count, dim, generator=generator), dim=-1)
    labels = torch.arange(count) % classes
    return features, labels
