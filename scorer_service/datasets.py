"""Datasets, their train/test splits, and the few-shot sample a task scores on.

A dataset is class names plus labelled image paths for train and test. Loaders
turn a layout on disk into one; this module has the image-folder layout, and
other layouts (CoOp split files) add a loader beside it. A task is a dataset
with a K-shot sample of its train split drawn by seed.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
TRAIN, VAL, TEST = "train", "val", "test"


class DatasetError(ValueError):
    """A dataset is missing or malformed; the message names the path."""


@dataclass(frozen=True)
class LabeledImage:
    path: Path
    label: int


@dataclass(frozen=True)
class Dataset:
    name: str
    class_names: tuple[str, ...]
    train: tuple[LabeledImage, ...]
    test: tuple[LabeledImage, ...]
    val: tuple[LabeledImage, ...] = ()  # a split file's own val list (CoOp's); empty: val is drawn from train


@dataclass(frozen=True)
class Task:
    """What Score runs against: a dataset's few-shot train sample and its test split."""

    task_id: str
    dataset: Dataset
    shots: int
    seed: int
    splits: dict[str, tuple[LabeledImage, ...]]
    val_shots: int = 0

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.dataset.class_names


def class_name_from_folder(folder: str) -> str:
    return folder.replace("_", " ").strip()


def _images_by_class(root: Path) -> dict[str, list[Path]]:
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    found = {}
    for folder in folders:
        images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if images:
            found[folder.name] = images
    return found


def load_image_folder(root: Path, split_seed: int = 0, test_fraction: float = 0.5) -> Dataset:
    """Reads root/<class>/* (split by seed) or root/train/<class>/* and root/test/<class>/*."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset directory {root.resolve()} does not exist")
    if (root / TRAIN).is_dir() and (root / TEST).is_dir():
        train_by_class = _images_by_class(root / TRAIN)
        test_by_class = _images_by_class(root / TEST)
        unknown = sorted(set(test_by_class) - set(train_by_class))
        if unknown:
            raise DatasetError(f"{root / TEST} has classes with no training images: {', '.join(unknown)}")
    else:
        train_by_class, test_by_class = {}, {}
        rng = random.Random(split_seed)
        for folder, images in _images_by_class(root).items():
            shuffled = images[:]
            rng.shuffle(shuffled)
            n_test = min(len(shuffled) - 1, max(1, round(len(shuffled) * test_fraction))) if len(shuffled) > 1 else 0
            test_by_class[folder] = sorted(shuffled[:n_test])
            train_by_class[folder] = sorted(shuffled[n_test:])
    if len(train_by_class) < 2:
        raise DatasetError(
            f"{root.resolve()} needs at least 2 class folders holding images ({', '.join(sorted(IMAGE_SUFFIXES))}); "
            f"found {len(train_by_class)}"
        )
    folders = sorted(train_by_class)
    class_names = tuple(class_name_from_folder(f) for f in folders)
    if len(set(class_names)) != len(class_names):
        raise DatasetError(f"{root.resolve()} has class folders that name the same class once '_' is read as a space")

    def labelled(by_class: dict[str, list[Path]]) -> tuple[LabeledImage, ...]:
        return tuple(
            LabeledImage(path, folders.index(folder)) for folder in folders for path in by_class.get(folder, [])
        )

    return Dataset(root.name, class_names, labelled(train_by_class), labelled(test_by_class))


def few_shot(images: tuple[LabeledImage, ...], shots: int, seed: int | random.Random) -> tuple[LabeledImage, ...]:
    """K images per class drawn by seed: Dassl's draw (`generate_fewshot_dataset`), which CoOp's protocol uses.

    A generator seeded with `seed` (what CoOp's `random.seed(seed)` gives
    Dassl, which nothing draws from before the dataset is built) takes, per
    label in order of first appearance and from that label's images in the
    given order (a CoOp split file's, ImageNet's listing), `sample(images, K)`;
    a class with fewer than K images gets K drawn with repeats
    (`choices(images, k=K)`), as current Dassl's default `repeat=True` does.
    So for CoOp's datasets the sample is the one in CoOp's
    `split_fewshot/shot_K-seed_S.pkl` files. A generator passed as `seed` goes
    on from where it is: Dassl draws val with the generator train left.
    """
    by_label: dict[int, list[LabeledImage]] = defaultdict(list)
    for image in images:
        by_label[image.label].append(image)
    rng = seed if isinstance(seed, random.Random) else random.Random(seed)
    sample = []
    for label, pool in by_label.items():
        if len(pool) >= shots:
            sample.extend(rng.sample(pool, shots))
        else:
            log.warning("few_shot_class_repeats_images", label=label, available=len(pool), shots=shots)
            sample.extend(rng.choices(pool, k=shots))
    return tuple(sample)


def build_task(
    task_id: str,
    dataset: Dataset,
    shots: int,
    seed: int,
    saved: tuple[tuple[LabeledImage, ...], tuple[LabeledImage, ...] | None] | None = None,
    val_shots: int = 0,
) -> Task:
    """The task of a dataset: a train split of K shots per class and, with `val_shots`, a val split.

    Both are drawn by one generator seeded with `seed`, train first, as Dassl draws them: val from the dataset's
    own val list where it has one (CoOp's split files), else from the train images train's draw left. `saved`:
    (train, val or None) read from CoOp's few-shot file, used instead of drawing."""
    if not dataset.test:
        raise DatasetError(f"dataset {dataset.name!r} of task {task_id!r} has no test images")
    rng = random.Random(seed)
    train = few_shot(dataset.train, shots, rng) if saved is None else saved[0]
    splits = {TRAIN: train, TEST: dataset.test}
    if val_shots:
        if saved is not None and saved[1] is not None:
            splits[VAL] = saved[1]
        else:
            taken = set(train)
            source = dataset.val or tuple(image for image in dataset.train if image not in taken)
            if not source:
                raise DatasetError(f"task {task_id!r}: no images are left for a val split beside train's")
            splits[VAL] = few_shot(source, val_shots, rng)
    return Task(task_id, dataset, shots, seed, splits, val_shots)
