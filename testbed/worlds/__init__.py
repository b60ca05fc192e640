"""Caption worlds: what a testbed CLIP is trained to read, and so which prompts it prefers.

Real CLIP learned from web captions whose wording the optimizer never sees; a
world plays that web. Each world is one frozen module (its source is part of
the training recipe's hash) exposing:

- `CLASS_NAMES`: per label, the official name (as the scorer reads the folder)
  first, then the other names its captions use: the per-class oracle's choices;
- `CUE_LADDER`: (cues, template) rows from no cue to all cues, the ceiling table's rows;
- `PLANTED_OPTIMUM`: the single template the world was built to prefer;
- `captioner(images, labels)`: a function from an epoch seed to one caption per image.

`planted` is the primary yardstick (a preference that cannot be guessed from the
task); `catalog` is the case where it can (the wording of a product catalog).
"""

from __future__ import annotations

import importlib
from types import ModuleType

WORLDS = ("planted", "catalog")


def world(name: str) -> ModuleType:
    """The world module called `name` (one of WORLDS)."""
    if name not in WORLDS:
        raise ValueError(f"unknown caption world {name!r}; worlds: {', '.join(WORLDS)}")
    return importlib.import_module(f"testbed.worlds.{name}")


def cues(module: ModuleType) -> tuple[str, ...]:
    """The world's cues: those of its ladder's last (all-cue) row."""
    return tuple(module.CUE_LADDER[-1][0])
