"""promptclimb's own generic starting templates (the BUILTIN initial pool).

The paper starts from captions sampled from LAION-COCO; we cannot ship those,
so this is a hand-written list in the same spirit: plain, varied phrasings
that name no dataset, from which the LLM can climb.
"""

from __future__ import annotations

import random

BUILTIN_TEMPLATES: tuple[str, ...] = (
    "{}",
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a close-up photo of a {}.",
    "a cropped photo of a {}.",
    "a blurry photo of a {}.",
    "a bright photo of a {}.",
    "a dark photo of a {}.",
    "a low resolution photo of a {}.",
    "a high quality photo of a {}.",
    "a good photo of a {}.",
    "a photo of one {}.",
    "a photo of the small {}.",
    "a photo of the large {}.",
    "a snapshot of a {} taken outdoors.",
    "a snapshot of a {} taken indoors.",
    "a {} in the center of the frame.",
    "a detailed photograph showing a {}.",
    "a color photograph of a {}.",
    "a black and white photo of a {}.",
    "a drawing of a {}.",
    "a sketch of a {}.",
    "a painting of a {}.",
    "a rendering of a {}.",
    "a cartoon {}.",
    "a toy {}.",
    "an example of a {}.",
    "this is a photo of a {}.",
    "there is a {} in this picture.",
    "a typical {}.",
    "a {} seen from the side.",
    "a {} seen from above.",
    "a photo showing a {} in its usual surroundings.",
    "a clear picture of a {} with natural lighting.",
    "a tightly framed shot of a {}.",
    "a pixelated photo of a {}.",
    "a jpeg photo of a {}.",
    "a photo of a {} on a plain background.",
    "an amateur photo of a {}.",
)


def builtin_pool(size: int, seed: int) -> list[str]:
    """`size` templates from the built-in list, drawn by `seed`; the bare `{}` always comes first."""
    size = min(size, len(BUILTIN_TEMPLATES))
    rest = list(BUILTIN_TEMPLATES[1:])
    random.Random(seed).shuffle(rest)
    return [BUILTIN_TEMPLATES[0], *rest][:size]
