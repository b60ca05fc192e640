"""The demo data: Debian's real Fashion-MNIST converted to the scorer's image folders."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
from PIL import Image

from scorer_service.datasets import load_image_folder
from testbed.fashion_mnist import (
    APT_COMMAND,
    CLASS_FOLDERS,
    DEBIAN_DIR,
    MARKER,
    FashionMnistError,
    prepare_fashion_mnist,
    read_idx,
)
from tests.conftest import prerequisite

needs_debian_data = prerequisite(
    not (DEBIAN_DIR / "train-labels-idx1-ubyte.gz").is_file(), why=f"Fashion-MNIST not installed: {APT_COMMAND}"
)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    return prepare_fashion_mnist(tmp_path_factory.mktemp("data") / "fashion-mnist")


def _tree(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*.png"))}


@needs_debian_data
def test_writes_every_class_of_both_splits_with_the_requested_count(converted):
    for split in ("train", "test"):
        folders = sorted(p.name for p in (converted / split).iterdir())
        assert folders == sorted(CLASS_FOLDERS)
        for folder in folders:
            images = list((converted / split / folder).glob("*.png"))
            assert len(images) == 16
            with Image.open(images[0]) as image:
                assert image.size == (28, 28)
                assert image.mode == "L"


@needs_debian_data
def test_each_image_is_the_source_image_of_its_folders_class(converted):
    labels = read_idx(DEBIAN_DIR / "t10k-labels-idx1-ubyte.gz")
    images = read_idx(DEBIAN_DIR / "t10k-images-idx3-ubyte.gz")
    for label, folder in enumerate(CLASS_FOLDERS):
        for path in (converted / "test" / folder).glob("*.png"):
            index = int(path.stem)
            assert labels[index] == label
            with Image.open(path) as image:
                np.testing.assert_array_equal(np.asarray(image), images[index])


@needs_debian_data
def test_the_scorer_reads_the_layout_with_readable_class_names(converted):
    dataset = load_image_folder(converted)
    assert "T-shirt top" in dataset.class_names
    assert "ankle boot" in dataset.class_names
    assert len(dataset.class_names) == 10
    assert (len(dataset.train), len(dataset.test)) == (160, 160)


@needs_debian_data
def test_conversion_is_deterministic(converted, tmp_path):
    again = prepare_fashion_mnist(tmp_path / "again")
    assert _tree(again) == _tree(converted)


@needs_debian_data
def test_a_complete_subset_is_reused_and_a_different_request_rebuilds(tmp_path):
    root = prepare_fashion_mnist(tmp_path / "fm", train_per_class=2, test_per_class=1)
    assert (root / MARKER).is_file()
    sentinel = root / "train" / "bag" / "sentinel.txt"
    sentinel.write_text("kept while the cache is valid")

    prepare_fashion_mnist(root, train_per_class=2, test_per_class=1)
    assert sentinel.exists()

    prepare_fashion_mnist(root, train_per_class=3, test_per_class=1)
    assert not sentinel.exists()
    assert len(list((root / "train" / "bag").glob("*.png"))) == 3
    assert not list(tmp_path.glob(".*partial"))


def test_missing_source_tells_the_apt_command_and_writes_nothing(tmp_path):
    with pytest.raises(FashionMnistError, match="apt-get install -y --no-install-recommends dataset-fashion-mnist"):
        prepare_fashion_mnist(tmp_path / "fm", source=tmp_path / "absent")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("gzipped", [False, True])
def test_read_idx_parses_plain_and_gzipped_files(tmp_path, gzipped):
    values = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    data = b"\0\0\x08\x03" + struct.pack(">3I", 2, 3, 4) + values.tobytes()
    path = tmp_path / ("x.idx.gz" if gzipped else "x.idx")
    path.write_bytes(gzip.compress(data) if gzipped else data)
    np.testing.assert_array_equal(read_idx(path), values)


def test_read_idx_refuses_a_truncated_file(tmp_path):
    path = tmp_path / "x.idx"
    path.write_bytes(b"\0\0\x08\x01" + struct.pack(">I", 10) + bytes(3))
    with pytest.raises(FashionMnistError, match="holds 3 values"):
        read_idx(path)
