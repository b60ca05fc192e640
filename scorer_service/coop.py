"""The 11 datasets of CoOp's few-shot protocol, read in the layout of CoOp/Dassl's DATASETS.md.

The paper compares prompts on CoOp's fixed splits, so a user who already
prepared those folders must get exactly CoOp's train and test images and class
names. Nine datasets ship a `split_zhou_<Name>.json` of "train"/"val"/"test"
lists of [path relative to the image dir, label, class name]; FGVCAircraft
keeps the benchmark's own `variants.txt` and `images_variant_<split>.txt`;
ImageNet has `images/{train,val}/<wnid>/` and `classnames.txt` ("wnid name"
lines), and CoOp tests on its val set. The val lists are not read: the method
selects on the few-shot train sample only.

Class names are put into prompts with `_` read as a space, as CoOp's CLIP
prompts do. The few-shot sample is `datasets.few_shot`, whose docstring says how it
relates to CoOp's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from scorer_service.datasets import Dataset, DatasetError, LabeledImage, class_name_from_folder


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


def load_coop(name: str, root: Path) -> Dataset:
    """Reads CoOp dataset `name` from its folder `root` (e.g. $DATA/oxford_pets)."""
    root = Path(root)
    if name not in COOP_DATASETS:
        raise DatasetError(f"unknown CoOp dataset {name!r}; known: {', '.join(COOP_DATASETS)}")
    if not root.is_dir():
        raise DatasetError(f"CoOp dataset {name!r}: directory {root.resolve()} does not exist")
    if name == "imagenet":
        return _load_imagenet(root)
    if name == "fgvc_aircraft":
        return _load_fgvc_aircraft(root)
    return _load_split_file(name, root, SPLIT_FILE_DATASETS[name])


def _require_file(path: Path, name: str) -> Path:
    if not path.is_file():
        raise DatasetError(f"CoOp dataset {name!r} is incomplete: {path.resolve()} is missing (see CoOp's DATASETS.md)")
    return path


def _load_split_file(name: str, root: Path, layout: SplitFileLayout) -> Dataset:
    split_path = _require_file(root / layout.split_file, name)
    try:
        split = json.loads(split_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetError(f"{split_path.resolve()} is not valid JSON: {err}") from err
    missing = [key for key in ("train", "test") if not isinstance(split, dict) or not isinstance(split.get(key), list)]
    if missing:
        raise DatasetError(f"{split_path.resolve()} has no {' or '.join(repr(k) for k in missing)} list")
    image_dir = root / layout.image_dir
    entries = {key: [_split_entry(split_path, key, i, e) for i, e in enumerate(split[key])] for key in ("train", "test")}
    names: dict[int, str] = {}
    for label, class_name in (e[1:] for key in ("train", "test") for e in entries[key]):
        if names.setdefault(label, class_name) != class_name:
            raise DatasetError(f"{split_path.resolve()}: label {label} is named both {names[label]!r} and {class_name!r}")
    return _dataset(name, root, names,
                    {key: [(image_dir / path, label) for path, label, _ in entries[key]] for key in ("train", "test")})


def _split_entry(split_path: Path, key: str, index: int, entry: object) -> tuple[str, int, str]:
    if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str)
            and isinstance(entry[1], int) and isinstance(entry[2], str)):
        raise DatasetError(f"{split_path.resolve()}: {key}[{index}] is {entry!r}; expected [relative_path, label, classname]")
    return entry[0], entry[1], entry[2]


def _load_fgvc_aircraft(root: Path) -> Dataset:
    variants = [line.strip() for line in _require_file(root / "variants.txt", "fgvc_aircraft").read_text().splitlines()]
    label_of = {variant: label for label, variant in enumerate(v for v in variants if v)}
    splits = {}
    for key in ("train", "test"):
        list_path = _require_file(root / f"images_variant_{key}.txt", "fgvc_aircraft")
        items = []
        for line in filter(None, (raw.strip() for raw in list_path.read_text().splitlines())):
            image_id, _, variant = line.partition(" ")
            if variant not in label_of:
                raise DatasetError(f"{list_path.resolve()}: variant {variant!r} of image {image_id} is not in variants.txt")
            items.append((root / "images" / f"{image_id}.jpg", label_of[variant]))
        splits[key] = items
    return _dataset("fgvc_aircraft", root, {label: variant for variant, label in label_of.items()}, splits)


def _load_imagenet(root: Path) -> Dataset:
    class_file = _require_file(root / "classnames.txt", "imagenet")
    name_of = {}
    for line in filter(None, (raw.strip() for raw in class_file.read_text().splitlines())):
        wnid, _, class_name = line.partition(" ")
        name_of[wnid] = class_name.strip()
    wnids = sorted(name_of)
    splits = {}
    for key, folder in (("train", "train"), ("test", "val")):
        items = []
        for label, wnid in enumerate(wnids):
            class_dir = root / "images" / folder / wnid
            if not class_dir.is_dir():
                raise DatasetError(f"CoOp dataset 'imagenet' is incomplete: {class_dir.resolve()} is missing")
            items.extend((path, label) for path in sorted(class_dir.iterdir()) if path.is_file())
        splits[key] = items
    return _dataset("imagenet", root, dict(enumerate(name_of[w] for w in wnids)), splits)


def _dataset(name: str, root: Path, names: dict[int, str], splits: dict[str, list[tuple[Path, int]]]) -> Dataset:
    """Checks labels run 0..n-1 and every listed image exists, then builds the Dataset."""
    if len(names) < 2 or sorted(names) != list(range(len(names))):
        raise DatasetError(f"CoOp dataset {name!r} at {root.resolve()}: labels must run 0..n-1 over at least 2 classes, "
                           f"found {sorted(names)[:10]}")
    for key, items in splits.items():
        absent = [path for path, _ in items if not path.is_file()]
        if absent:
            raise DatasetError(f"CoOp dataset {name!r} is incomplete: {len(absent)} {key} image(s) missing, "
                               f"first {absent[0].resolve()}")
    class_names = tuple(class_name_from_folder(names[label]) for label in range(len(names)))
    return Dataset(name, class_names, *(tuple(LabeledImage(p, label) for p, label in splits[key]) for key in ("train", "test")))
