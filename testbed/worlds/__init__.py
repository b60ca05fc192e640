"""Caption worlds: what a testbed CLIP is trained to read, and so which prompts it prefers.

Real CLIP learned from web captions whose wording the optimizer never sees; a
world plays that web. Each world is one frozen module (its source is part of
the training recipe's hash) exposing:

- `CLASS_NAMES`: per label, the official name (as the scorer reads the folder)
  first, then the other names its captions use: the per-class oracle's choices;
- `CUE_LADDER`: (cues, template) rows from no cue to all cues, the ceiling table's rows;
- `CUE_WORDS` (optional): per cue, the words that carry it in a template (default: the cue's own name);
- `PLANTED_OPTIMUM`: the single template the world was built to prefer;
- `captioner(images, labels)`: a function from an epoch seed to one caption per image.

`planted` is the primary yardstick (a preference that cannot be guessed from the
task); `planted_v3`, a third design built on it, meets a ceiling `planted` misses
but lets random search close half the gap (docs/testbed.md); `catalog` is the case
where the preference can be guessed (the wording of a product catalog).
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from types import ModuleType

WORLDS = ("planted", "planted_v3", "catalog")
_NAMES = {f"{__name__}.{name}" for name in WORLDS}


def world(name: str) -> ModuleType:
    """The world module called `name` (one of WORLDS)."""
    if name not in WORLDS:
        raise ValueError(f"unknown caption world {name!r}; worlds: {', '.join(WORLDS)}")
    return importlib.import_module(f"testbed.worlds.{name}")


def sources(module: ModuleType) -> list[Path]:
    """The files a world's captions depend on: its own, then those of the worlds it builds on (their hashes go into
    the recipe's, so editing a base world retrains every world built on it)."""
    bases = [value for value in vars(module).values() if isinstance(value, ModuleType) and value.__name__ in _NAMES]
    return [Path(str(module.__file__)), *(path for base in bases for path in sources(base))]


def cues(module: ModuleType) -> tuple[str, ...]:
    """The world's cues: those of its ladder's last (all-cue) row."""
    return tuple(module.CUE_LADDER[-1][0])


def cue_words(module: ModuleType) -> dict[str, tuple[str, ...]]:
    """Per cue, the words whose presence in a template carries it: the world's CUE_WORDS, else the cue's name."""
    words: dict[str, tuple[str, ...]] = getattr(module, "CUE_WORDS", {})
    return {cue: tuple(words.get(cue, (cue,))) for cue in cues(module)}


def carried_cues(module: ModuleType, text: str) -> tuple[str, ...]:
    """The cues a template or caption carries: those with at least one of their words in it (whole words, any case)."""
    return tuple(
        cue
        for cue, words in cue_words(module).items()
        if any(re.search(rf"\b{re.escape(word)}\b", text, re.IGNORECASE) for word in words)
    )
