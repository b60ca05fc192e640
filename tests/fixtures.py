"""Builders of on-disk fixtures shared by the tests: image-folder datasets."""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image

CLASSES = ("red apple", "green_leaf", "blue sky", "black cat")


def write_image_folder(root: Path, classes=CLASSES, per_class: int = 6, size: int = 40, split_dirs: bool = True, seed: int = 0) -> Path:
    """Writes a small image-folder dataset of coloured noise images.

    With `split_dirs`, images go under train/<class>/ and test/<class>/ (half each);
    otherwise under <class>/ directly. Folder names use `_` for spaces.
    """
    rng = random.Random(seed)
    for label, name in enumerate(classes):
        folder_name = name.replace(" ", "_")
        for index in range(per_class):
            if split_dirs:
                folder = root / ("train" if index % 2 == 0 else "test") / folder_name
            else:
                folder = root / folder_name
            folder.mkdir(parents=True, exist_ok=True)
            base = (60 * label) % 256
            pixels = bytes(
                (base + rng.randrange(0, 80)) % 256 if channel == label % 3 else rng.randrange(0, 256)
                for _ in range(size * size)
                for channel in range(3)
            )
            Image.frombytes("RGB", (size, size), pixels).save(folder / f"img_{index:03d}.png")
    return root
