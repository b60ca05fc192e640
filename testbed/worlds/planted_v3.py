"""The planted world, third design: the second (planted.py) with garments named almost exactly under all three cues.

Testbed recipes `planted-v3-p7`, `planted-v3-p4`; not the default yardstick (see the end). Cues, cue words,
decoys, names and the optimum are planted.py's; only LOOSE_NAMING's last entry differs: with all three cues a
caption calls a garment by its confusable class's official name LOOSE_NAMING[3] of the time, against
planted.py's 0.12.

Why a third design: the second missed one of issue 24's ceilings. Its planted optimum (76.9% test
accuracy on `planted-p7`) sat 7.4 points under the linear probe on the held-out images (84.3), where
the issue asks for at most 4: a template with all three cues was still loosely named 12% of the time.
Lowering that one number lifts the optimum towards the probe and leaves the rest of the ladder, the
generic templates and the cues' findability (the LLM's words, not the captions) as they were.

The value was set from the ceilings of two trial models trained from this design before any search
ran against it (docs/testbed.md): 0.06 gave an optimum of 77.2 (probe 84.3), 0.04 gave 83.4 (probe
84.5). The price is the per-class headroom: with names this precise the per-class oracle (83.8) adds
0.4 points, not 3. Both criteria cannot hold at once: the oracle cannot pass the probe, so they leave
the optimum a window of about a point, narrower than the spread between trial models. This design
takes "near the white box", the ceiling a single-template search is judged against; the second
design (planted-p7) keeps the per-class headroom, and the per-class stage's v2 results stay measured on it.

What the search benchmark then showed (bench/results/search_quality_planted_v3/): with names this precise,
templates with no cue word at all reach the optimum's accuracy, and random search closed 53% of the gap
(73.0 +- 10.5 over 5 seeds, against 63.0 +- 5.6 and 27% on planted-p7), so no method separated from it.
A yardstick whose control is that strong and that noisy cannot tell a good search from a lucky one at 5 seeds;
the second design stays the default, this one a recorded alternative. Frozen all the same: its hash, and
planted.py's, are part of the training recipe, and its results are reported, not tuned away.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from testbed.worlds import planted
from testbed.worlds.planted import CLASS_NAMES, CUE_LADDER, CUE_WORDS, PLANTED_OPTIMUM

__all__ = ["CLASS_NAMES", "CUE_LADDER", "CUE_WORDS", "LOOSE_NAMING", "PLANTED_OPTIMUM", "captioner", "captions"]

LOOSE_NAMING = (*planted.LOOSE_NAMING[:3], 0.04)  # by the number of cues in the caption: 0, 1, 2, 3


def captions(labels: np.ndarray, seed: int) -> list[str]:
    """One caption per image, deterministic in `seed`: planted.py's captions with this design's loose naming."""
    return planted.captions(labels, seed, LOOSE_NAMING)


def captioner(images: np.ndarray, labels: np.ndarray) -> Callable[[int], list[str]]:
    """One caption per image for a given epoch seed; the planted world reads no pixels."""
    del images
    return lambda seed: captions(labels, seed)
