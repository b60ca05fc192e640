"""The paper's baselines: the CLIP authors' templates from clip-benchmark, as a named initial pool over gRPC."""

from __future__ import annotations

import importlib.metadata
import json

import grpc
import pytest

from optimizer_service.baselines import (
    A_PHOTO_OF,
    CLIP_BENCHMARK_PIN,
    CLIP_ENSEMBLE,
    COOP_PROMPT,
    PLAIN,
    BaselineError,
    coop_prompt,
    hand_engineered,
    reference_candidates,
)
from optimizer_service.choices import InitialPool
from optimizer_service.spec import RunSettings, SpecError
from promptclimb.optimizer.v1 import optimizer_pb2 as pb
from tests.optimizer.test_service import _status_of
from tests.procs import REPO


def test_hand_engineered_templates_come_from_clip_benchmark_with_our_placeholder():
    assert hand_engineered("oxford_pets") == ("a photo of a {}, a type of pet.",)
    imagenet = hand_engineered("imagenet")
    assert len(imagenet) == 80 and "itap of a {}." in imagenet
    assert all(t.count("{}") == 1 and "{c}" not in t for t in imagenet)
    assert hand_engineered("eurosat")[0] == "a centered satellite photo of {}."


def test_unknown_or_uncovered_datasets_are_named():
    with pytest.raises(BaselineError, match="no hand-engineered templates for 'pets'; datasets: imagenet, caltech101"):
        hand_engineered("pets")
    with pytest.raises(BaselineError, match=r"clip-benchmark==1\.6\.2 ships no hand-engineered templates for 'ucf101'"):
        hand_engineered("ucf101")


def test_reference_candidates_are_the_papers_rows():
    rows = reference_candidates("dtd")
    assert list(rows) == [PLAIN, A_PHOTO_OF, COOP_PROMPT, CLIP_ENSEMBLE]
    assert (
        rows[PLAIN] == ("{}",)
        and rows[CLIP_ENSEMBLE] == hand_engineered("dtd")
        and rows[COOP_PROMPT] == ("{} texture.",)
    )
    assert reference_candidates("oxford_pets")[COOP_PROMPT] == ("a photo of a {}, a type of pet.",)
    assert len(reference_candidates("imagenet")[CLIP_ENSEMBLE]) == 80
    assert reference_candidates("ucf101") == {
        PLAIN: (PLAIN,),
        A_PHOTO_OF: (A_PHOTO_OF,),
        COOP_PROMPT: ("a photo of a person doing {}.",),
    }
    assert list(reference_candidates("my_own_data")) == [PLAIN, A_PHOTO_OF]
    with pytest.raises(BaselineError, match="CoOp has no prompt for 'pets'"):
        coop_prompt("pets")


def test_spec_validation_and_round_trip():
    spec = pb.RunSpec(task_id="t", initial_pool=pb.INITIAL_POOL_HAND_ENGINEERED, hand_engineered_dataset="dtd")
    settings = RunSettings.from_proto(spec, "m")
    assert settings.initial_pool is InitialPool.HAND_ENGINEERED and settings.hand_engineered_dataset == "dtd"
    assert RunSettings.from_proto(settings.to_proto(), "") == settings
    assert RunSettings.from_json(json.loads(json.dumps(settings.to_json()))) == settings
    with pytest.raises(SpecError, match="initial_pool=HAND_ENGINEERED: no hand-engineered templates for ''"):
        RunSettings.from_proto(pb.RunSpec(task_id="t", initial_pool=pb.INITIAL_POOL_HAND_ENGINEERED), "m")
    with pytest.raises(SpecError, match="hand_engineered_dataset is only used with initial_pool=HAND_ENGINEERED"):
        RunSettings.from_proto(pb.RunSpec(task_id="t", hand_engineered_dataset="dtd"), "m")


async def test_hand_engineered_pool_is_scored_first(optimizer):
    run, events = await optimizer.run_to_end(
        initial_pool=pb.INITIAL_POOL_HAND_ENGINEERED,
        hand_engineered_dataset="dtd",
        initial_pool_size=5,
        restarts=1,
        resets=1,
        iterations=1,
    )
    seeds = [
        e.candidate_scored.template
        for e in events
        if e.HasField("candidate_scored") and e.candidate_scored.iteration == -1
    ]
    assert seeds[:2] == [PLAIN, A_PHOTO_OF] and len(seeds) == 5  # the two baselines, then a sample drawn by the seed
    assert set(seeds[2:]) <= set(hand_engineered("dtd"))
    assert run.state == pb.RUN_STATE_SUCCEEDED and run.spec.hand_engineered_dataset == "dtd"


async def test_a_bad_hand_engineered_spec_is_invalid_argument(optimizer):
    spec = pb.RunSpec(task_id="shapes", initial_pool=pb.INITIAL_POOL_HAND_ENGINEERED, hand_engineered_dataset="ucf101")
    code, details = await _status_of(optimizer.stub.StartRun(pb.StartRunRequest(spec=spec)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "ships no hand-engineered templates for 'ucf101'" in details


def test_the_makefile_installs_the_pinned_clip_benchmark():
    makefile = (REPO / "Makefile").read_text()
    assert f"CLIP_BENCHMARK := {CLIP_BENCHMARK_PIN}\n" in makefile and "--no-deps" in makefile
    assert importlib.metadata.version("clip-benchmark") == CLIP_BENCHMARK_PIN.split("==")[1]
