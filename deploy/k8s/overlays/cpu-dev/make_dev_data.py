"""Writes a tiny synthetic image-folder dataset for the cpu-dev overlay.

Run by an init container of the scorer (the scorer image has Pillow):
    python make_dev_data.py /data/colors
Classes are flat colours with noise, split into train/ and test/ folders. Like
the random-weight model beside it, this only exercises the plumbing: accuracies
are meaningless.
"""

import random
import sys
from pathlib import Path

from PIL import Image

CLASSES = {
    "red square": (200, 30, 30),
    "green leaf": (30, 170, 40),
    "blue sky": (40, 90, 210),
    "black cat": (20, 20, 20),
}


def main(root: Path, per_split: int = 4, size: int = 48) -> None:
    rng = random.Random(0)
    for name, (r, g, b) in CLASSES.items():
        for split in ("train", "test"):
            folder = root / split / name.replace(" ", "_")
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(per_split):
                pixels = bytes(
                    max(0, min(255, base + rng.randrange(-40, 41))) for _ in range(size * size) for base in (r, g, b)
                )
                Image.frombytes("RGB", (size, size), pixels).save(folder / f"{index:03d}.png")
    print(f"wrote {len(CLASSES)} classes to {root}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
