"""SPLIT_VAL: a second few-shot sample, disjoint from train and drawn from the same images (CoOp's: its val list),
scored with the `score` right alone; a server without --val-shots refuses it."""

from __future__ import annotations

import random
from dataclasses import replace

import grpc
import pytest_asyncio

from promptclimb.scorer.v1 import scorer_pb2, scorer_pb2_grpc
from scorer_service.datasets import TRAIN, VAL, Dataset, LabeledImage, build_task, few_shot, load_image_folder
from tests.scorer.conftest import bearer, serve_scorer
from tests.scorer.test_service import expect_status


def test_val_is_drawn_after_train_from_the_images_train_left(image_task_dir):
    dataset = load_image_folder(image_task_dir)  # 3 train images per class
    task = build_task("t", dataset, shots=2, seed=1, val_shots=1)
    train, val = task.splits[TRAIN], task.splits[VAL]
    assert train == build_task("t", dataset, shots=2, seed=1).splits[TRAIN]  # adding val changes no train image
    assert sorted(i.label for i in val) == [0, 1, 2, 3]
    assert not set(train) & set(val) and set(val) <= set(dataset.train)
    assert build_task("t", dataset, shots=2, seed=1, val_shots=1).splits[VAL] == val  # drawn by the seed
    assert VAL not in build_task("t", dataset, shots=2, seed=1).splits  # no --val-shots: no val split


def test_a_dataset_with_its_own_val_list_draws_val_from_it_as_dassl_does(tmp_path):
    images = [LabeledImage(tmp_path / f"{i}.png", i % 2) for i in range(12)]
    dataset = Dataset("d", ("a", "b"), tuple(images[:6]), tuple(images[6:8]), val=tuple(images[8:]))
    task = build_task("t", dataset, shots=2, seed=3, val_shots=1)
    assert set(task.splits[VAL]) <= set(images[8:])
    rng = random.Random(3)
    few_shot(dataset.train, 2, rng)  # Dassl: one generator, train first, then val
    assert task.splits[VAL] == few_shot(dataset.val, 1, rng)


@pytest_asyncio.fixture(scope="module")
async def val_scorer(base_config, tokens_file):
    async for _, channel in serve_scorer(replace(base_config, val_shots=1, tokens_file=str(tokens_file))):
        yield scorer_pb2_grpc.ScorerStub(channel)


async def test_val_is_listed_and_scored_with_the_score_right_alone(val_scorer):
    task = await val_scorer.GetTask(scorer_pb2.GetTaskRequest(task_id="shapes"), metadata=bearer("client"))
    assert (scorer_pb2.SPLIT_VAL, 4) in {(s.split, s.num_images) for s in task.splits}
    assert task.val_shots == 1
    request = scorer_pb2.ScoreRequest(task_id="shapes", templates=["a {}"], split=scorer_pb2.SPLIT_VAL)
    reply = await val_scorer.Score(request, metadata=bearer("client"))
    assert reply.results[0].total == 4 and reply.split == scorer_pb2.SPLIT_VAL


async def test_a_task_without_val_refuses_the_val_split_saying_how_to_get_one(open_scorer):
    _, stub, _ = open_scorer
    request = scorer_pb2.ScoreRequest(task_id="shapes", templates=["a {}"], split=scorer_pb2.SPLIT_VAL)
    await expect_status(stub.Score(request), grpc.StatusCode.INVALID_ARGUMENT, "no val split", "--val-shots")
