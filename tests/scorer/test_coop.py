"""CoOp datasets in their real on-disk layouts: every loader, the few-shot sample, and the errors."""

from __future__ import annotations

import json
import shutil

import pytest

from scorer_service.config import parse_config
from scorer_service.coop import load_coop
from scorer_service.datasets import DatasetError, build_task, few_shot
from tests.fixtures import CLASSES, COOP_NAMES, COOP_SPLIT_FILE_LAYOUT, write_coop_dataset

EXPECTED_CLASSES = tuple(c.replace("_", " ") for c in CLASSES)


@pytest.fixture(scope="module")
def coop_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("coop")
    for name in COOP_NAMES:
        write_coop_dataset(root / name, name)
    return root


@pytest.mark.parametrize("name", COOP_NAMES)
def test_every_loader_reads_its_layout(coop_root, name):
    dataset = load_coop(name, coop_root / name)
    assert dataset.class_names == EXPECTED_CLASSES
    assert len(dataset.train) == 3 * len(CLASSES) and len(dataset.test) == 2 * len(CLASSES)
    assert all(image.path.is_file() for image in dataset.train + dataset.test)
    assert not {i.path for i in dataset.train} & {i.path for i in dataset.test}
    assert [sum(1 for i in dataset.train if i.label == label) for label in range(len(CLASSES))] == [3] * len(CLASSES)
    if name in COOP_SPLIT_FILE_LAYOUT:
        split = json.loads((coop_root / name / COOP_SPLIT_FILE_LAYOUT[name][1]).read_text())
        assert [(i.path.relative_to(coop_root / name / COOP_SPLIT_FILE_LAYOUT[name][0]).as_posix(), i.label)
                for i in dataset.test] == [(path, label) for path, label, _ in split["test"]]


def test_imagenet_tests_on_val(coop_root):
    dataset = load_coop("imagenet", coop_root / "imagenet")
    assert {i.path.parent.parent.name for i in dataset.test} == {"val"}
    assert {i.path.parent.parent.name for i in dataset.train} == {"train"}


def test_few_shot_sample_is_deterministic_per_seed(coop_root):
    dataset = load_coop("oxford_pets", coop_root / "oxford_pets")
    samples = {seed: few_shot(dataset.train, shots=1, seed=seed) for seed in (1, 2, 3)}
    assert samples[1] == few_shot(load_coop("oxford_pets", coop_root / "oxford_pets").train, shots=1, seed=1)
    assert len(set(samples.values())) > 1
    for sample in samples.values():
        assert sorted(i.label for i in sample) == list(range(len(CLASSES)))
        assert set(sample) <= set(dataset.train)
    two = few_shot(dataset.train, shots=2, seed=1)
    assert sorted(i.label for i in two) == sorted(list(range(len(CLASSES))) * 2)
    task = build_task("pets", dataset, shots=1, seed=2)
    assert task.splits["train"] == samples[2] and task.splits["test"] == dataset.test


def test_missing_and_incomplete_datasets_name_the_file(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_coop("dtd", tmp_path / "absent")
    with pytest.raises(DatasetError, match="unknown CoOp dataset 'pets'"):
        load_coop("pets", tmp_path)
    root = write_coop_dataset(tmp_path / "eurosat", "eurosat")
    (root / "split_zhou_EuroSAT.json").unlink()
    with pytest.raises(DatasetError, match="split_zhou_EuroSAT.json is missing"):
        load_coop("eurosat", root)
    root = write_coop_dataset(tmp_path / "food101", "food101")
    next((root / "images" / "black_cat").glob("test_01.jpg")).unlink()
    with pytest.raises(DatasetError, match=r"1 test image\(s\) missing, first .*black_cat/test_01.jpg"):
        load_coop("food101", root)
    root = write_coop_dataset(tmp_path / "imagenet", "imagenet")
    shutil.rmtree(root / "images" / "val" / "n00000002")
    with pytest.raises(DatasetError, match="images/val/n00000002 is missing"):
        load_coop("imagenet", root)
    root = write_coop_dataset(tmp_path / "fgvc", "fgvc_aircraft")
    (root / "images_variant_test.txt").unlink()
    with pytest.raises(DatasetError, match="images_variant_test.txt is missing"):
        load_coop("fgvc_aircraft", root)


def test_malformed_split_files_say_what_is_wrong(tmp_path):
    root = write_coop_dataset(tmp_path / "dtd", "dtd")
    path = root / "split_zhou_DescribableTextures.json"
    path.write_text("{not json")
    with pytest.raises(DatasetError, match="is not valid JSON"):
        load_coop("dtd", root)
    path.write_text(json.dumps({"train": []}))
    with pytest.raises(DatasetError, match="has no 'test' list"):
        load_coop("dtd", root)
    path.write_text(json.dumps({"train": [["a/x.jpg", "0", "a"]], "test": []}))
    with pytest.raises(DatasetError, match=r"train\[0\] is .*expected \[relative_path, label, classname\]"):
        load_coop("dtd", root)


def test_task_flag_takes_coop_datasets_and_keeps_image_folders(capsys):
    config = parse_config(["--task", "pets=coop:oxford_pets:/data/oxford_pets", "--task", "shapes=/data/shapes"])
    pets, shapes = config.tasks
    assert (pets.task_id, str(pets.root), pets.coop_dataset) == ("pets", "/data/oxford_pets", "oxford_pets")
    assert (shapes.task_id, str(shapes.root), shapes.coop_dataset) == ("shapes", "/data/shapes", "")
    with pytest.raises(SystemExit):
        parse_config(["--task", "x=coop:pets:/data"])
    assert "ID=coop:NAME:DIR with NAME one of imagenet, caltech101" in capsys.readouterr().err
