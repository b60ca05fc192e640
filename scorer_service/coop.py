"""The 11 datasets of CoOp's few-shot protocol, read in the layout of CoOp/Dassl's DATASETS.md.

The paper compares prompts on CoOp's fixed splits, so a user who already
prepared those folders must get exactly CoOp's train and test images and class
names. Nine datasets ship a `split_zhou_<Name>.json` of "train"/"val"/"test"
lists of [path relative to the image dir, label, class name]; FGVCAircraft
keeps the benchmark's own `variants.txt` and `images_variant_<split>.txt`;
ImageNet has `images/{train,val}/<wnid>/` and `classnames.txt` ("wnid name"
lines), and CoOp tests on its val set. A val list (split files' "val",
FGVCAircraft's `images_variant_val.txt`) is read where there is one: with
--val-shots, the val split is drawn from it as Dassl draws CoOp's val
(`generate_fewshot_dataset(val, ...)` with the generator train's draw left),
or read from the few-shot file's "val". ImageNet has no val list of its own
(CoOp validates on its test), so its val is drawn from the train images train's
draw left.

As in CoOp: a split file's label may be a string ("0" reads as 0); ImageNet's
labels are the positions of its train class folders in sorted order (so a
full classnames.txt with a subset of folders works), and its images are each
folder's non-hidden files in the file system's listing order. Unlike CoOp,
files that are not images are left out too (CoOp would fail on them).

Class names are put into prompts with `_` read as a space, as CoOp's CLIP
prompts do. The few-shot sample is read from CoOp's saved
`split_fewshot/shot_K-seed_S.pkl` where the dataset folder has one, and is
otherwise drawn by `datasets.few_shot`, which draws as Dassl does.
"""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path, PurePath

import structlog

from scorer_service.datasets import (
    IMAGE_SUFFIXES,
    Dataset,
    DatasetError,
    LabeledImage,
    Task,
    build_task,
    class_name_from_folder,
)

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class SplitFileLayout:
    """Where a dataset's images and its split_zhou file sit inside its folder."""

    image_dir: str
    split_file: str


SPLIT_FILE_DATASETS = {
    "caltech101": SplitFileLayout("101_ObjectCategories", "split_zhou_Caltech101.json"),
    "oxford_pets": SplitFileLayout("images", "split_zhou_OxfordPets.json"),
    "stanford_cars": SplitFileLayout(".", "split_zhou_StanfordCars.json"),
    "oxford_flowers": SplitFileLayout("jpg", "split_zhou_OxfordFlowers.json"),
    "food101": SplitFileLayout("images", "split_zhou_Food101.json"),
    "sun397": SplitFileLayout("SUN397", "split_zhou_SUN397.json"),
    "dtd": SplitFileLayout("images", "split_zhou_DescribableTextures.json"),
    "eurosat": SplitFileLayout("2750", "split_zhou_EuroSAT.json"),
    "ucf101": SplitFileLayout("UCF-101-midframes", "split_zhou_UCF101.json"),
}
COOP_DATASETS = ("imagenet", *SPLIT_FILE_DATASETS, "fgvc_aircraft")
# The folder under $DATA that CoOp's DATASETS.md gives each dataset: its name, but for two.
COOP_FOLDERS = {name: name for name in COOP_DATASETS} | {"caltech101": "caltech-101", "food101": "food-101"}
FGVC_LISTS = ("variants.txt", "images_variant_train.txt", "images_variant_test.txt")


def check_layout(name: str, root: Path) -> None:
    """Checks, without reading any image, that `root` has the folders and files CoOp's layout gives dataset `name`."""
    root = Path(root)
    if name not in COOP_DATASETS:
        raise DatasetError(f"unknown CoOp dataset {name!r}; known: {', '.join(COOP_DATASETS)}")
    if not root.is_dir():
        raise DatasetError(
            f"CoOp dataset {name!r}: directory {root.resolve()} does not exist "
            f"(CoOp's DATASETS.md names it {COOP_FOLDERS[name]})"
        )
    if name == "imagenet":
        files, folders = ["classnames.txt"], ["images/train", "images/val"]
    elif name == "fgvc_aircraft":
        files, folders = list(FGVC_LISTS), ["images"]
    else:
        files, folders = [SPLIT_FILE_DATASETS[name].split_file], [SPLIT_FILE_DATASETS[name].image_dir]
    missing = [root / f for f in files if not (root / f).is_file()]
    missing += [root / f for f in folders if not (root / f).is_dir()]
    if missing:
        raise DatasetError(
            f"CoOp dataset {name!r} is incomplete: {missing[0].resolve()} is missing (see CoOp's DATASETS.md)"
        )


def load_coop(name: str, root: Path) -> Dataset:
    """Reads CoOp dataset `name` from its folder `root` (e.g. $DATA/oxford_pets)."""
    root = Path(root)
    check_layout(name, root)
    if name == "imagenet":
        return _load_imagenet(root)
    if name == "fgvc_aircraft":
        return _load_fgvc_aircraft(root)
    return _load_split_file(name, root, SPLIT_FILE_DATASETS[name])


def load_coop_task(task_id: str, name: str, root: Path, shots: int, seed: int, val_shots: int = 0) -> Task:
    """The task of a CoOp dataset: its K-shot sample (and val) from CoOp's saved file where there is one, else
    drawn."""
    dataset = load_coop(name, root)
    saved = read_saved_few_shot(Path(root), dataset, shots, seed, with_val=val_shots > 0)
    return build_task(task_id, dataset, shots, seed, saved, val_shots)


def _load_split_file(name: str, root: Path, layout: SplitFileLayout) -> Dataset:
    split_path = root / layout.split_file
    try:
        split = json.loads(split_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetError(f"{split_path.resolve()} is not valid JSON: {err}") from err
    missing = [key for key in ("train", "test") if not isinstance(split, dict) or not isinstance(split.get(key), list)]
    if missing:
        raise DatasetError(f"{split_path.resolve()} has no {' or '.join(repr(k) for k in missing)} list")
    image_dir = root / layout.image_dir
    keys = ("train", "test", "val") if isinstance(split.get("val"), list) else ("train", "test")
    entries = {key: [_split_entry(split_path, key, i, e) for i, e in enumerate(split[key])] for key in keys}
    names: dict[int, str] = {}
    for label, class_name in (e[1:] for key in keys for e in entries[key]):
        if names.setdefault(label, class_name) != class_name:
            raise DatasetError(
                f"{split_path.resolve()}: label {label} is named both {names[label]!r} and {class_name!r}"
            )
    return _dataset(
        name,
        root,
        names,
        {key: [(image_dir / path, label) for path, label, _ in entries[key]] for key in keys},
    )


def _split_entry(split_path: Path, key: str, index: int, entry: object) -> tuple[str, int, str]:
    """One [relative_path, label, classname]; a label may be written as a string of digits, which CoOp converts."""
    label = entry[1] if isinstance(entry, list) and len(entry) == 3 else None
    if isinstance(label, str) and label.strip().isdigit():
        label = int(label)
    if not (
        isinstance(entry, list)
        and len(entry) == 3
        and isinstance(entry[0], str)
        and isinstance(label, int)
        and not isinstance(label, bool)
        and isinstance(entry[2], str)
    ):
        raise DatasetError(
            f"{split_path.resolve()}: {key}[{index}] is {entry!r}; expected [relative_path, label, classname]"
        )
    return entry[0], label, entry[2]


def _load_fgvc_aircraft(root: Path) -> Dataset:
    variants = [line.strip() for line in (root / "variants.txt").read_text().splitlines()]
    label_of = {variant: label for label, variant in enumerate(v for v in variants if v)}
    splits = {}
    for key in ("train", "test", "val"):
        list_path = root / f"images_variant_{key}.txt"
        if key == "val" and not list_path.is_file():
            continue
        items = []
        for line in filter(None, (raw.strip() for raw in list_path.read_text().splitlines())):
            image_id, _, variant = line.partition(" ")
            if variant not in label_of:
                raise DatasetError(
                    f"{list_path.resolve()}: variant {variant!r} of image {image_id} is not in variants.txt"
                )
            items.append((root / "images" / f"{image_id}.jpg", label_of[variant]))
        splits[key] = items
    return _dataset("fgvc_aircraft", root, {label: variant for variant, label in label_of.items()}, splits)


def _load_imagenet(root: Path) -> Dataset:
    """Labels are the sorted train class folders' positions; val is labelled by folder name, so it may not add
    classes."""
    class_file = root / "classnames.txt"
    name_of = {}
    for line in filter(None, (raw.strip() for raw in class_file.read_text().splitlines())):
        wnid, _, class_name = line.partition(" ")
        name_of[wnid] = class_name.strip()
    train_dir, val_dir = root / "images" / "train", root / "images" / "val"
    wnids = _class_folders(train_dir)
    unnamed = [w for w in wnids if w not in name_of]
    if unnamed:
        raise DatasetError(
            f"CoOp dataset 'imagenet': {(train_dir / unnamed[0]).resolve()} is not in {class_file.resolve()}"
        )
    strays = [w for w in _class_folders(val_dir) if w not in wnids]
    if strays:
        raise DatasetError(f"CoOp dataset 'imagenet': {(val_dir / strays[0]).resolve()} has no train folder")
    splits: dict[str, list[tuple[Path, int]]] = {}
    for key, folder in (("train", train_dir), ("test", val_dir)):
        items: list[tuple[Path, int]] = []
        for label, wnid in enumerate(wnids):
            class_dir = folder / wnid
            if not class_dir.is_dir():
                raise DatasetError(f"CoOp dataset 'imagenet' is incomplete: {class_dir.resolve()} is missing")
            items.extend(
                (class_dir / file, label)
                for file in os.listdir(class_dir)
                if not file.startswith(".")
                and PurePath(file).suffix.lower() in IMAGE_SUFFIXES
                and (class_dir / file).is_file()
            )
        splits[key] = items
    return _dataset("imagenet", root, dict(enumerate(name_of[w] for w in wnids)), splits)


def _class_folders(split_dir: Path) -> list[str]:
    return sorted(entry.name for entry in os.scandir(split_dir) if entry.is_dir() and not entry.name.startswith("."))


class _SavedDatum:
    """Stands in for Dassl's Datum when unpickling: its attributes (_impath, _label, ...) land in __dict__."""


class _FewShotUnpickler(pickle.Unpickler):
    """Lets in Dassl's Datum and nothing else: a pickle can name any callable, so no other global is resolved."""

    def find_class(self, module: str, name: str) -> type:
        if name == "Datum" and module.split(".")[0] == "dassl":
            return _SavedDatum
        raise pickle.UnpicklingError(f"it refers to {module}.{name}; only Dassl's Datum is read")


def read_saved_few_shot(
    root: Path, dataset: Dataset, shots: int, seed: int, with_val: bool = False
) -> tuple[tuple[LabeledImage, ...], tuple[LabeledImage, ...] | None] | None:
    """The train sample (and, `with_val`, the val sample, if the file and the dataset have one) in CoOp's
    `split_fewshot/shot_K-seed_S.pkl`, or None where there is no such file.

    CoOp saves absolute paths of the machine that drew the sample; each is
    matched to the train image whose path under `root` is its longest suffix.
    """
    path = root / "split_fewshot" / f"shot_{shots}-seed_{seed}.pkl"
    if not path.is_file():
        return None
    try:
        with path.open("rb") as file:
            saved = _FewShotUnpickler(file).load()
        entries = {
            key: [(str(d.__dict__["_impath"]), d.__dict__["_label"]) for d in saved[key]]
            for key in ("train", "val")
            if key == "train" or (with_val and dataset.val and saved.get(key))
        }
    except (pickle.UnpicklingError, EOFError, AttributeError, KeyError, TypeError, ValueError) as err:
        raise DatasetError(f"{path.resolve()} is not a CoOp few-shot file: {err}") from err
    train = _saved_images(path, root, entries["train"], dataset.train, "train")
    val = _saved_images(path, root, entries["val"], dataset.val, "val") if "val" in entries else None
    log.info("few_shot_read", path=str(path), images=len(train), val_images=len(val or ()))
    return train, val


def _saved_images(
    path: Path, root: Path, entries: list[tuple[str, int]], images: tuple[LabeledImage, ...], split: str
) -> tuple[LabeledImage, ...]:
    """The split's images a few-shot file lists, each matched to the image whose path under `root` is its longest
    suffix."""
    by_relative = {image.path.relative_to(root).parts: image for image in images}
    sample = []
    for impath, label in entries:
        parts = PurePath(impath).parts
        image = next((by_relative[parts[i:]] for i in range(len(parts)) if parts[i:] in by_relative), None)
        if image is None:
            raise DatasetError(
                f"{path.resolve()}: {impath} is not in the {split} split; the file is stale, remove it to draw again"
            )
        if image.label != label:
            raise DatasetError(
                f"{path.resolve()}: {impath} has label {label}, the split file {image.label}; "
                "the file is stale, remove it to draw again"
            )
        sample.append(image)
    return tuple(sample)


def _dataset(name: str, root: Path, names: dict[int, str], splits: dict[str, list[tuple[Path, int]]]) -> Dataset:
    """Checks labels run 0..n-1 and every listed image exists, then builds the Dataset."""
    if len(names) < 2 or sorted(names) != list(range(len(names))):
        raise DatasetError(
            f"CoOp dataset {name!r} at {root.resolve()}: labels must run 0..n-1 "
            f"over at least 2 classes, found {sorted(names)[:10]}"
        )
    for key, items in splits.items():
        absent = [path for path, _ in items if not path.is_file()]
        if absent:
            raise DatasetError(
                f"CoOp dataset {name!r} is incomplete: {len(absent)} {key} image(s) missing, "
                f"first {absent[0].resolve()}"
            )
    class_names = tuple(class_name_from_folder(names[label]) for label in range(len(names)))
    train, test, val = (
        tuple(LabeledImage(p, label) for p, label in splits.get(key, ())) for key in ("train", "test", "val")
    )
    return Dataset(name, class_names, train, test, val)
