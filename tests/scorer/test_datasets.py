"""Image-folder loading, deterministic splits and few-shot sampling."""

from __future__ import annotations

import pytest

from scorer_service.datasets import DatasetError, build_task, few_shot, load_image_folder
from tests.fixtures import write_image_folder


def test_train_test_folders(image_task_dir):
    dataset = load_image_folder(image_task_dir)
    assert dataset.class_names == ("black cat", "blue sky", "green leaf", "red apple")
    assert len(dataset.train) == 12 and len(dataset.test) == 12
    assert {i.label for i in dataset.test} == {0, 1, 2, 3}
    assert all(dataset.class_names[i.label].replace(" ", "_") == i.path.parent.name for i in dataset.train)


def test_single_tree_is_split_by_seed(tmp_path):
    root = write_image_folder(tmp_path / "flat", per_class=10, split_dirs=False)
    first = load_image_folder(root, split_seed=3, test_fraction=0.3)
    again = load_image_folder(root, split_seed=3, test_fraction=0.3)
    other = load_image_folder(root, split_seed=4, test_fraction=0.3)
    assert first == again
    assert first.test != other.test
    assert len(first.test) == 4 * 3 and len(first.train) == 4 * 7
    assert not {i.path for i in first.train} & {i.path for i in first.test}


def test_few_shot_is_deterministic_per_seed(image_task_dir):
    dataset = load_image_folder(image_task_dir)
    one = few_shot(dataset.train, shots=2, seed=1)
    assert one == few_shot(dataset.train, shots=2, seed=1)
    assert len(one) == 8
    assert sorted(i.label for i in one) == [0, 0, 1, 1, 2, 2, 3, 3]
    seeds = {few_shot(dataset.train, shots=1, seed=s) for s in range(1, 8)}
    assert len(seeds) > 1


def test_task_splits(image_task_dir):
    task = build_task("t", load_image_folder(image_task_dir), shots=1, seed=2)
    assert len(task.splits["train"]) == 4 and len(task.splits["test"]) == 12


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_image_folder(tmp_path / "missing")
    (tmp_path / "one" / "only_class").mkdir(parents=True)
    with pytest.raises(DatasetError, match="at least 2 class folders"):
        load_image_folder(tmp_path / "one")
    root = write_image_folder(tmp_path / "mismatch", per_class=2)
    (root / "test" / "stray").mkdir()
    (root / "test" / "black_cat" / "img_001.png").rename(root / "test" / "stray" / "x.png")
    with pytest.raises(DatasetError, match="classes with no training images: stray"):
        load_image_folder(root)
