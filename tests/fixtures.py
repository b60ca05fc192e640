"""Builders of on-disk fixtures shared by the tests: image-folder and CoOp-layout datasets."""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image

CLASSES = ("red apple", "green_leaf", "blue sky", "black cat")

# Image dir and split file of each CoOp dataset, written out from CoOp's DATASETS.md
# (independently of scorer_service/coop.py, so a wrong layout there fails the tests).
COOP_SPLIT_FILE_LAYOUT = {
    "caltech101": ("101_ObjectCategories", "split_zhou_Caltech101.json"),
    "oxford_pets": ("images", "split_zhou_OxfordPets.json"),
    "stanford_cars": ("", "split_zhou_StanfordCars.json"),
    "oxford_flowers": ("jpg", "split_zhou_OxfordFlowers.json"),
    "food101": ("images", "split_zhou_Food101.json"),
    "sun397": ("SUN397", "split_zhou_SUN397.json"),
    "dtd": ("images", "split_zhou_DescribableTextures.json"),
    "eurosat": ("2750", "split_zhou_EuroSAT.json"),
    "ucf101": ("UCF-101-midframes", "split_zhou_UCF101.json"),
}
COOP_NAMES = ("imagenet", *COOP_SPLIT_FILE_LAYOUT, "fgvc_aircraft")
# The folder under $DATA that CoOp's DATASETS.md gives each dataset (two keep a hyphen).
COOP_FOLDERS = {name: name for name in COOP_NAMES} | {"caltech101": "caltech-101", "food101": "food-101"}


def _noise_image(path: Path, label: int, rng: random.Random, size: int) -> None:
    """Coloured noise whose dominant channel and base level depend on the label."""
    path.parent.mkdir(parents=True, exist_ok=True)
    base = (60 * label) % 256
    pixels = bytes(
        (base + rng.randrange(0, 80)) % 256 if channel == label % 3 else rng.randrange(0, 256)
        for _ in range(size * size)
        for channel in range(3)
    )
    Image.frombytes("RGB", (size, size), pixels).save(path)


def write_image_folder(
    root: Path, classes=CLASSES, per_class: int = 6, size: int = 40, split_dirs: bool = True, seed: int = 0
) -> Path:
    """Writes a small image-folder dataset of coloured noise images.

    With `split_dirs`, images go under train/<class>/ and test/<class>/ (half each);
    otherwise under <class>/ directly. Folder names use `_` for spaces.
    """
    rng = random.Random(seed)
    for label, name in enumerate(classes):
        folder_name = name.replace(" ", "_")
        for index in range(per_class):
            parent = root / ("train" if index % 2 == 0 else "test") if split_dirs else root
            folder = parent / folder_name
            _noise_image(folder / f"img_{index:03d}.png", label, rng, size)
    return root


def write_coop_dataset(
    root: Path,
    name: str,
    classes=CLASSES,
    train_per_class: int = 3,
    test_per_class: int = 2,
    size: int = 24,
    seed: int = 0,
) -> Path:
    """Writes a miniature CoOp dataset `name` in its real layout under root; returns root.

    Split-file datasets get `split_zhou_<Name>.json` with "train"/"val"/"test" lists of
    [relative_path, label, classname] (class names with `_` for spaces, as CoOp's files
    have), in a shuffled order as in CoOp's files (neither by label nor by path), and a
    hidden `.DS_Store` beside the images; FGVCAircraft its variants.txt and
    images_variant_<split>.txt (also shuffled); ImageNet images/{train,val}/<wnid>/ with a
    `.DS_Store` and a non-image file in every class folder, and a classnames.txt that, as
    CoOp's, names more classes than there are folders (in another order).
    """
    rng = random.Random(seed)
    counts = {"train": train_per_class, "val": 1, "test": test_per_class}
    root.mkdir(parents=True, exist_ok=True)
    if name == "imagenet":
        wnids = [f"n{label:08d}" for label in range(len(classes))]
        named = [*zip(wnids, classes, strict=True), ("n09999998", "class without images"), ("n09999999", "another")]
        rng.shuffle(named)
        (root / "classnames.txt").write_text("".join(f"{w} {c}\n" for w, c in named))
        for folder, count in (("train", train_per_class), ("val", test_per_class)):
            for label, wnid in enumerate(wnids):
                class_dir = root / "images" / folder / wnid
                for index in rng.sample(range(count), count):  # created out of order
                    _noise_image(class_dir / f"{wnid}_{index}.JPEG", label, rng, size)
                (class_dir / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
                (class_dir / "labels.txt").write_text("not an image\n")
        return root
    if name == "fgvc_aircraft":
        (root / "variants.txt").write_text("".join(f"{c}\n" for c in classes))
        for split, count in counts.items():
            lines = []
            for label, variant in enumerate(classes):
                for index in range(count):
                    image_id = f"{label:03d}{index:02d}{len(split)}"
                    _noise_image(root / "images" / f"{image_id}.jpg", label, rng, size)
                    lines.append(f"{image_id} {variant}\n")
            rng.shuffle(lines)
            (root / f"images_variant_{split}.txt").write_text("".join(lines))
        return root
    image_dir, split_file = COOP_SPLIT_FILE_LAYOUT[name]
    split_lists: dict[str, list[list[object]]] = {}
    for key, count in counts.items():
        entries = []
        for label, class_name in enumerate(classes):
            folder = class_name.replace(" ", "_")
            for index in range(count):
                relative = f"{folder}/{key}_{index:02d}.jpg"
                _noise_image(root / image_dir / relative, label, rng, size)
                entries.append([relative, label, folder])
        rng.shuffle(entries)
        split_lists[key] = entries
    (root / image_dir / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / split_file).write_text(json.dumps(split_lists))
    return root


def write_coop_data_root(data_root: Path, names, **kwargs) -> Path:
    """Writes each CoOp dataset in `names` under data_root in the folder DATASETS.md gives it; returns data_root."""
    for name in names:
        write_coop_dataset(data_root / COOP_FOLDERS[name], name, **kwargs)
    return data_root
