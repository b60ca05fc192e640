"""Fashion-MNIST from Debian's package: the raw arrays, and fixed subsets as image folders.

Fashion-MNIST is a real labelled image set (10 classes of clothing, 28x28
grayscale) that installs from a registry: Debian's `dataset-fashion-mnist`
puts the original idx files under /usr/share/datasets/fashion-mnist. The scorer
reads `root/train/<class>/*.png` and `root/test/<class>/*.png`, so this module
writes the first N images of each class of each split there once; a marker file
records what was written, and a later call with the same request does nothing.

No image the scorer serves was seen in training: the testbed CLIPs train on the
first 50,000 images of the train split (`training_images`), the scorer's
few-shot splits (train, and val where a task has one) are drawn from the last
10,000 (`held_out_images`), and its test split is the 10,000 test images.
"""

from __future__ import annotations

import gzip
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import structlog
from PIL import Image

from promptclimb_common.cli_help import ArgumentParser
from promptclimb_common.logging import configure_logging

log = structlog.get_logger(__name__)

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
# "heldout": the train folder holds held-out images (a folder of the older layout, trained-on images, is elsewhere).
DEFAULT_ROOT = Path(".cache/promptclimb/data/fashion-mnist-heldout")
APT_COMMAND = "apt-get install -y --no-install-recommends dataset-fashion-mnist"
MARKER = ".complete.json"

# Label i of the data set is CLASS_FOLDERS[i]. These are the data set's own
# names ("T-shirt/top", ..., "Ankle boot"), lower-cased except the proper
# "T-shirt", with "_" for a space or "/" since the scorer reads "_" as a space.
CLASS_FOLDERS = (
    "T-shirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
)
SPLIT_FILES = {"train": "train", "test": "t10k"}
# The train split's first TRAINING_IMAGES images train the testbed CLIPs; the rest are held out for the scorer.
TRAINING_IMAGES = 50_000


class FashionMnistError(RuntimeError):
    """The source files are missing or malformed; the message says what to do."""


def read_idx(path: Path) -> np.ndarray:
    """Parses an unsigned-byte idx file (gzipped or not) into an array of its shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
        raise FashionMnistError(f"{path} is not an unsigned-byte idx file")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", data[4:header])
    values = np.frombuffer(data, dtype=np.uint8, offset=header)
    if values.size != int(np.prod(shape)):
        raise FashionMnistError(f"{path} holds {values.size} values, its header says {shape}")
    return values.reshape(shape)


def _idx_file(source: Path, name: str) -> Path:
    for candidate in (source / f"{name}.gz", source / name):
        if candidate.is_file():
            return candidate
    raise FashionMnistError(
        f"Fashion-MNIST file {source / name}[.gz] not found. Install Debian's copy of the data set with: {APT_COMMAND}"
    )


def load_split(source: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = SPLIT_FILES[split]
    images = read_idx(_idx_file(source, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_idx_file(source, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.shape != images.shape[:1]:
        raise FashionMnistError(f"{source}: {split} images {images.shape} do not match labels {labels.shape}")
    return images, labels


def training_images(source: Path = DEBIAN_DIR) -> tuple[np.ndarray, np.ndarray]:
    """The images (and labels) the testbed CLIPs train on: the train split's first TRAINING_IMAGES."""
    images, labels = load_split(source, "train")
    return images[:TRAINING_IMAGES], labels[:TRAINING_IMAGES]


def held_out_images(source: Path = DEBIAN_DIR) -> tuple[np.ndarray, np.ndarray]:
    """The train split's last 10,000 images: never trained on; the scorer's few-shot splits come from here."""
    images, labels = load_split(source, "train")
    return images[TRAINING_IMAGES:], labels[TRAINING_IMAGES:]


def _write_split(
    images: np.ndarray, labels: np.ndarray, per_class: int, target: Path, split: str, first: int = 0
) -> None:
    """Writes the first `per_class` images of each class from index `first` on, named by their index in the split."""
    for label, folder in enumerate(CLASS_FOLDERS):
        indices = first + np.flatnonzero(labels[first:] == label)[:per_class]
        if len(indices) < per_class:
            raise FashionMnistError(f"{split} split has {len(indices)} images of {folder}, {per_class} requested")
        out = target / split / folder
        out.mkdir(parents=True)
        for index in indices:
            Image.fromarray(images[index], mode="L").save(out / f"{index:05d}.png")


def prepare_fashion_mnist(
    root: Path = DEFAULT_ROOT,
    train_per_class: int = 16,
    test_per_class: int = 16,
    source: Path = DEBIAN_DIR,
) -> Path:
    """Writes the subset under `root` unless its marker says that exact subset is there.

    The folder is built beside `root` and moved into place whole, so an
    interrupted run never leaves a half-written data set that looks complete.
    """
    root, source = Path(root), Path(source)
    splits = {"train": train_per_class, "test": test_per_class}
    request = (
        json.dumps(
            {
                "source": str(source.resolve()),
                "per_class": splits,
                "classes": CLASS_FOLDERS,
                "train_from": TRAINING_IMAGES,
            },
            indent=2,
        )
        + "\n"
    )
    marker = root / MARKER
    if marker.is_file() and marker.read_text() == request:
        log.info("fashion_mnist_cached", root=str(root))
        return root
    log.info("fashion_mnist_converting", source=str(source), root=str(root), per_class=splits)
    loaded = {split: load_split(source, split) for split in splits}
    first = {"train": TRAINING_IMAGES, "test": 0}
    partial = root.with_name(f".{root.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        for split, per_class in splits.items():
            _write_split(*loaded[split], per_class, partial, split, first[split])
        (partial / MARKER).write_text(request)
        shutil.rmtree(root, ignore_errors=True)
        partial.rename(root)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    log.info("fashion_mnist_ready", root=str(root), images=len(CLASS_FOLDERS) * sum(splits.values()))
    return root


# The testbed's task (demo, search benchmark): few-shot splits (train, val) are drawn from 100
# held-out train images per class, and the test split is whole. The Makefile's demo-data target writes the same.
TASK_TRAIN_PER_CLASS, TASK_TEST_PER_CLASS = 100, 1000


def prepare_testbed_task(root: Path = DEFAULT_ROOT) -> Path:
    """The image folder the demo and the search benchmark serve."""
    return prepare_fashion_mnist(root, TASK_TRAIN_PER_CLASS, TASK_TEST_PER_CLASS)


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description="Convert Debian's Fashion-MNIST into the scorer's image-folder layout.")
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="output folder (default %(default)s)")
    parser.add_argument("--train-per-class", type=int, default=16)
    parser.add_argument("--test-per-class", type=int, default=16)
    parser.add_argument("--source", type=Path, default=DEBIAN_DIR, help="folder of the idx files (default %(default)s)")
    args = parser.parse_args(argv)
    configure_logging()
    try:
        root = prepare_fashion_mnist(args.root, args.train_per_class, args.test_per_class, args.source)
    except FashionMnistError as e:
        parser.exit(1, f"error: {e}\n")
    print(root)


if __name__ == "__main__":
    main()
