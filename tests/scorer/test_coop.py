"""CoOp datasets in their real on-disk layouts: every loader, the few-shot sample, and the errors."""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import sys
import types
from collections import Counter

import pytest

from scorer_service.config import parse_config
from scorer_service.coop import load_coop, load_coop_task
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
        assert [
            (i.path.relative_to(coop_root / name / COOP_SPLIT_FILE_LAYOUT[name][0]).as_posix(), i.label)
            for i in dataset.test
        ] == [(path, label) for path, label, _ in split["test"]]


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
    with pytest.raises(DatasetError, match=r"split_zhou_EuroSAT\.json is missing"):
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
    with pytest.raises(DatasetError, match=r"images_variant_test\.txt is missing"):
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
    path.write_text(json.dumps({"train": [["a/x.jpg", "zero", "a"]], "test": []}))
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


def dassl_few_shot(items: list[tuple], shots: int, seed: int) -> list[tuple]:
    """Dassl's `generate_fewshot_dataset` as its documentation describes it, written here apart from the
    scorer: `random.seed(seed)`; then per label, in order of first appearance, `random.sample(items, K)`,
    or `random.choices(items, k=K)` where the label has fewer than K items (current Dassl's `repeat=True`)."""
    state = random.getstate()
    try:
        random.seed(seed)
        by_label: dict[int, list[tuple]] = {}
        for item in items:
            by_label.setdefault(item[1], []).append(item)
        drawn = []
        for group in by_label.values():
            drawn += random.sample(group, shots) if len(group) >= shots else random.choices(group, k=shots)
        return drawn
    finally:
        random.setstate(state)


def coop_train_listing(root, name) -> list[tuple]:
    """CoOp's train split as (path, label), in CoOp's order, read straight from the files: a split file's
    order; FGVCAircraft's list order, labels by variants.txt; ImageNet's class folders sorted, labelled by
    position, with each folder's os.listdir order (hidden files and non-images left out)."""
    if name in COOP_SPLIT_FILE_LAYOUT:
        image_dir, split_file = COOP_SPLIT_FILE_LAYOUT[name]
        entries = json.loads((root / split_file).read_text())["train"]
        return [(root / image_dir / path, int(label)) for path, label, _ in entries]
    if name == "fgvc_aircraft":
        label_of = {v: i for i, v in enumerate(filter(None, (root / "variants.txt").read_text().splitlines()))}
        lines = filter(None, (root / "images_variant_train.txt").read_text().splitlines())
        return [
            (root / "images" / f"{image_id}.jpg", label_of[variant])
            for image_id, variant in (line.split(" ", 1) for line in lines)
        ]
    train = root / "images" / "train"
    folders = sorted(entry.name for entry in os.scandir(train) if entry.is_dir())
    return [
        (train / folder / file, label)
        for label, folder in enumerate(folders)
        for file in os.listdir(train / folder)
        if not file.startswith(".") and file.endswith(".JPEG")
    ]


@pytest.mark.parametrize("name", COOP_NAMES)
def test_few_shot_draw_is_dassls_in_coops_order(coop_root, name):
    root = coop_root / name
    listing = coop_train_listing(root, name)
    if name != "imagenet":  # ImageNet's order is its class folders' (sorted), then the file system's
        labels = [label for _, label in listing]
        assert labels != sorted(labels), "the fixture must not be sorted"
    dataset = load_coop(name, root)
    for seed in (1, 2, 3):
        for shots in (1, 2, 3, 5):  # 5: more than a class has (3), so Dassl repeats images
            drawn = [(image.path, image.label) for image in few_shot(dataset.train, shots, seed)]
            assert drawn == dassl_few_shot(listing, shots, seed), (seed, shots)
            assert Counter(label for _, label in drawn) == dict.fromkeys(range(len(CLASSES)), shots)


def test_imagenet_skips_hidden_and_other_files_and_labels_its_folders_as_coop(tmp_path):
    root = write_coop_dataset(tmp_path / "imagenet", "imagenet")  # .DS_Store and labels.txt in every class folder
    dataset = load_coop("imagenet", root)
    assert {image.path.suffix for image in dataset.train + dataset.test} == {".JPEG"}
    assert len(dataset.train) == 3 * len(CLASSES)
    sixteen = build_task("in", dataset, shots=16, seed=1).splits["train"]
    assert len(sixteen) == 16 * len(CLASSES) and set(sixteen) <= set(dataset.train)
    # classnames.txt names 1,000 classes, the folders a few: labels run over the folders present, in sorted order
    for split in ("train", "val"):
        shutil.rmtree(root / "images" / split / "n00000001")
    subset = load_coop("imagenet", root)
    assert subset.class_names == (EXPECTED_CLASSES[0], *EXPECTED_CLASSES[2:])
    labels = {image.path.parent.name: image.label for image in subset.train}
    assert labels == {"n00000000": 0, "n00000002": 1, "n00000003": 2}
    stray = root / "images" / "train" / "n07777777"
    shutil.copytree(root / "images" / "train" / "n00000000", stray)
    with pytest.raises(DatasetError, match=r"images/train/n07777777 is not in .*classnames.txt"):
        load_coop("imagenet", root)
    shutil.rmtree(stray)
    shutil.copytree(root / "images" / "val" / "n00000000", root / "images" / "val" / "n07777777")
    with pytest.raises(DatasetError, match=r"images/val/n07777777 has no train folder"):
        load_coop("imagenet", root)


def test_string_labels_are_read_as_coop_reads_them(tmp_path):
    root = write_coop_dataset(tmp_path / "dtd", "dtd")
    path = root / "split_zhou_DescribableTextures.json"
    as_numbers = load_coop("dtd", root)
    split = json.loads(path.read_text())
    path.write_text(
        json.dumps({key: [[p, str(label), name] for p, label, name in entries] for key, entries in split.items()})
    )
    assert load_coop("dtd", root) == as_numbers


@pytest.fixture
def dassl_datum(monkeypatch):
    """A class that pickles under Dassl's name, as the Datum objects in CoOp's split_fewshot files (Dassl is not
    installed)."""

    class Datum:
        def __init__(self, impath: str, label: int, classname: str) -> None:
            self._impath, self._label, self._domain, self._classname = impath, label, 0, classname

    module = types.ModuleType("dassl.data.datasets.base_dataset")
    Datum.__module__, Datum.__qualname__ = module.__name__, "Datum"
    module.__dict__["Datum"] = Datum
    for package in ("dassl", "dassl.data", "dassl.data.datasets"):
        monkeypatch.setitem(sys.modules, package, types.ModuleType(package))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return Datum


def _save_few_shot(root, shots: int, seed: int, data: object) -> None:
    (root / "split_fewshot").mkdir(exist_ok=True)
    with (root / "split_fewshot" / f"shot_{shots}-seed_{seed}.pkl").open("wb") as file:
        pickle.dump(data, file, protocol=pickle.HIGHEST_PROTOCOL)


def test_coops_saved_few_shot_files_are_read_instead_of_drawing(tmp_path, dassl_datum):
    root = write_coop_dataset(tmp_path / "oxford_pets", "oxford_pets")
    train = json.loads((root / "split_zhou_OxfordPets.json").read_text())["train"]
    chosen = [entry for label in (2, 0, 3, 1) for entry in [e for e in train if e[1] == label][-2:]]
    elsewhere = "/home/someone/DATA/oxford_pets/images"  # CoOp saves the absolute paths of the machine that drew them
    _save_few_shot(
        root,
        2,
        3,
        {
            "train": [dassl_datum(f"{elsewhere}/{path}", label, name) for path, label, name in chosen],
            "val": [dassl_datum(f"{elsewhere}/{train[0][0]}", train[0][1], train[0][2])],
        },
    )
    task = load_coop_task("pets", "oxford_pets", root, shots=2, seed=3)
    assert [(image.path, image.label) for image in task.splits["train"]] == [
        (root / "images" / p, label) for p, label, _ in chosen
    ]
    assert task.splits["train"] != few_shot(task.dataset.train, 2, 3)
    # No saved file for 1 shot: drawn as Dassl draws.
    drawn = load_coop_task("pets", "oxford_pets", root, shots=1, seed=3)
    assert drawn.splits["train"] == few_shot(drawn.dataset.train, 1, 3)


def test_a_saved_few_shot_file_that_does_not_fit_is_refused_with_its_path(tmp_path, dassl_datum):
    root = write_coop_dataset(tmp_path / "dtd", "dtd")
    path, label, name = json.loads((root / "split_zhou_DescribableTextures.json").read_text())["train"][0]
    _save_few_shot(root, 1, 1, {"train": [dassl_datum(f"/old/dtd/images/{path}", label + 1, name)]})
    refused = rf"shot_1-seed_1.pkl: /old/dtd/images/{path} has label {label + 1}, the split file {label}"
    with pytest.raises(DatasetError, match=refused):
        load_coop_task("dtd", "dtd", root, shots=1, seed=1)
    _save_few_shot(root, 1, 1, {"train": [dassl_datum("/old/dtd/images/elsewhere/x.jpg", label, name)]})
    with pytest.raises(
        DatasetError, match=r"shot_1-seed_1.pkl: /old/dtd/images/elsewhere/x.jpg is not in the train split"
    ):
        load_coop_task("dtd", "dtd", root, shots=1, seed=1)
    _save_few_shot(root, 1, 1, {"train": [print]})  # a pickle may name any callable: only Dassl's Datum is let in
    with pytest.raises(DatasetError, match=r"shot_1-seed_1.pkl is not a CoOp few-shot file: .*builtins.print"):
        load_coop_task("dtd", "dtd", root, shots=1, seed=1)
