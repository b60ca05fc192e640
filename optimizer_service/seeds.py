"""promptclimb's own generic starting templates (the BUILTIN initial pool).

The paper starts from captions sampled from LAION-COCO; we cannot ship those,
so this is a hand-written list in the same spirit: plain, varied phrasings
that name no dataset, from which the LLM can climb.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

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
    "a studio photo of a {}.",
    "a photo of a {} at night.",
    "a photo of a {} in daylight.",
    "a photo of a {} in the rain.",
    "a photo of a {} in the snow.",
    "a wide shot of a {}.",
    "a zoomed-in photo of a {}.",
    "a grainy photo of a {}.",
    "an overexposed photo of a {}.",
    "an underexposed photo of a {}.",
    "a photo of a {} with a shallow depth of field.",
    "a photo of a {} in soft light.",
    "a photo of a {} in harsh sunlight.",
    "a faded photo of a {}.",
    "a vintage photo of a {}.",
    "a professional photo of a {}.",
    "a phone photo of a {}.",
    "a scanned photo of a {}.",
    "a thumbnail of a {}.",
    "a photo of a {} from far away.",
    "a photo of a {} up close.",
    "a photo of a {} from below.",
    "a photo of a {} from the front.",
    "a partly hidden {}.",
    "a photo of several {}.",
    "a photo of a single {}.",
    "a photo of a {} next to other objects.",
    "a photo of a {} on a cluttered table.",
    "a photo of a {} outside.",
    "a photo of a {} inside a room.",
    "a {} photographed in a museum.",
    "an illustration of a {}.",
    "a watercolor of a {}.",
    "an oil painting of a {}.",
    "a pencil drawing of a {}.",
    "a line drawing of a {}.",
    "a 3d model of a {}.",
    "a video game picture of a {}.",
    "an embroidered {}.",
    "a plastic {}.",
    "a sculpture of a {}.",
    "a tattoo of a {}.",
    "a graffiti of a {}.",
    "a poster showing a {}.",
    "a picture of a {} in a book.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a photo of a new {}.",
    "a photo of an old {}.",
    "a photo of my {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a photo of a common {}.",
    "a {} in a real-world scene.",
    "a candid photo of a {}.",
    "a quick snapshot of a {}.",
    "a blurred background behind a {}.",
    "a {} against a white background.",
    "a {} against a dark background.",
    "a {} in a busy scene.",
    "a {} in an empty scene.",
    "an everyday picture of a {}.",
    "a {} as seen by a camera.",
    "a picture that shows one {}.",
    "a photo whose subject is a {}.",
)


def builtin_pool(size: int, seed: int | str) -> list[str]:
    """`size` templates from the built-in list, drawn by `seed`; the bare `{}` always comes first."""
    return draw(BUILTIN_TEMPLATES, size, seed, fixed=1)


def draw(templates: Sequence[str], size: int, seed: int | str, fixed: int = 0) -> list[str]:
    """The first `fixed` templates (baselines a climb should always hold), then the rest of `size` drawn by `seed`.

    The caller checks that `size` fits (spec.py refuses a spec whose N exceeds its pool)."""
    if not 0 <= size <= len(templates):
        raise ValueError(f"cannot draw {size} of {len(templates)} templates")
    kept = list(templates[: min(fixed, size)])
    return kept + random.Random(str(seed)).sample(list(templates[len(kept) :]), size - len(kept))
