"""Run specs: defaults fill zero values, caps reject runaway knobs with the field named."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf.duration_pb2 import Duration

from optimizer_service.choices import Conversation, Feedback, InitialPool, Preset, from_proto, to_proto
from optimizer_service.seeds import BUILTIN_TEMPLATES
from optimizer_service.spec import KNOBS, RunSettings, SpecError
from promptclimb.optimizer.v1 import optimizer_pb2 as pb


def test_zero_values_take_promptclimbs_own_defaults():
    settings = RunSettings.from_proto(pb.RunSpec(task_id="pets"), default_model="qwen")
    assert settings.preset is Preset.PROMPTCLIMB and settings.ensemble_size == 8
    assert (settings.restarts, settings.resets, settings.iterations, settings.top_k, settings.templates_per_call) == (
        3,
        2,
        10,
        3,
        4,
    )
    assert settings.initial_pool is InitialPool.BUILTIN and settings.initial_pool_size == 20
    assert settings.feedback is Feedback.POSITIVE_NEGATIVE and settings.conversation is Conversation.CHAT
    assert settings.show_accuracies and settings.temperature == 1.0 and settings.llm_model == "qwen"
    assert settings.iterations_total == 60


def test_effective_spec_round_trips_through_proto_and_json():
    spec = pb.RunSpec(
        task_id="pets",
        llm_model="m",
        restarts=2,
        feedback=pb.FEEDBACK_POSITIVE_ONLY,
        conversation=pb.CONVERSATION_MODE_STATELESS,
        show_accuracies=False,
        temperature=0.0,
        initial_pool=pb.INITIAL_POOL_GIVEN,
        initial_templates=["a {}"],
        max_llm_calls=7,
        max_wall_time=Duration(seconds=90, nanos=500_000_000),
    )
    settings = RunSettings.from_proto(spec, "")
    assert settings.temperature == 0.0 and settings.show_accuracies is False  # explicit zeros are kept, not defaulted
    assert settings.max_wall_seconds == 90.5
    assert settings.to_proto().max_wall_time == Duration(seconds=90, nanos=500_000_000)
    assert RunSettings.from_proto(settings.to_proto(), "") == settings
    assert RunSettings.from_json(settings.to_json()) == settings


@pytest.mark.parametrize("name", sorted(KNOBS))
def test_every_knob_above_its_cap_is_rejected_naming_it(name):
    above, negative = pb.RunSpec(task_id="pets"), pb.RunSpec(task_id="pets")
    setattr(above, name, KNOBS[name].cap + 1)
    setattr(negative, name, -1)
    with pytest.raises(
        SpecError, match=rf"{name}={KNOBS[name].cap + 1} is out of range; allowed 1\.\.{KNOBS[name].cap}"
    ):
        RunSettings.from_proto(above, "m")
    with pytest.raises(SpecError, match=name):
        RunSettings.from_proto(negative, "m")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (pb.RunSpec(), "task_id is required"),
        (pb.RunSpec(task_id="x" * 300), "task_id is longer"),
        (pb.RunSpec(task_id="pets", temperature=2.5), "temperature=2.5"),
        (pb.RunSpec(task_id="pets", max_llm_calls=-1), "max_llm_calls"),
        (pb.RunSpec(task_id="pets", max_wall_time=Duration(seconds=-1)), "max_wall_time must be a duration >= 0"),
        (pb.RunSpec(task_id="pets", max_wall_time=Duration(seconds=1, nanos=-5)), "max_wall_time"),
        (pb.RunSpec(task_id="pets", initial_pool=pb.INITIAL_POOL_GIVEN), "needs initial_templates"),
        (
            pb.RunSpec(task_id="pets", initial_pool=pb.INITIAL_POOL_GIVEN, initial_templates=["a {0.__class__}"]),
            r"initial_templates\[0\]",
        ),
        (pb.RunSpec(task_id="pets", initial_templates=["a {}"]), "only used with initial_pool=GIVEN"),
        (pb.RunSpec(task_id="pets", feedback=7), "feedback=7"),  # type: ignore[arg-type]  # no such feedback, on purpose
    ],
)
def test_bad_specs_are_rejected_with_an_actionable_message(spec, message):
    with pytest.raises(SpecError, match=message):
        RunSettings.from_proto(spec, "m")


def test_no_model_anywhere_is_rejected():
    with pytest.raises(SpecError, match="--llm-model"):
        RunSettings.from_proto(pb.RunSpec(task_id="pets"), "")


def test_the_authors_preset_fills_their_knobs_and_refuses_a_contradiction():
    settings = RunSettings.from_proto(pb.RunSpec(task_id="pets", preset=pb.PRESET_AUTHORS), "m")
    assert (
        settings.conversation,
        settings.show_accuracies,
        settings.templates_per_call,
        settings.top_k,
        settings.iterations,
        settings.temperature,
    ) == (Conversation.STATELESS, False, 1, 3, 10, 1.0)
    assert (settings.restarts, settings.resets, settings.initial_pool_size, settings.feedback) == (
        1,
        1,
        80,
        Feedback.POSITIVE_NEGATIVE,
    )
    same = pb.RunSpec(
        task_id="pets",
        preset=pb.PRESET_AUTHORS,
        templates_per_call=1,
        show_accuracies=False,
        temperature=1.0,
        conversation=pb.CONVERSATION_MODE_STATELESS,
        restarts=3,
        feedback=pb.FEEDBACK_POSITIVE_ONLY,
    )
    assert (
        RunSettings.from_proto(same, "m").restarts == 3
    )  # R, S and N are only defaults; repeating a fixed knob is fine
    given = pb.RunSpec(
        task_id="pets", preset=pb.PRESET_AUTHORS, initial_pool=pb.INITIAL_POOL_GIVEN, initial_templates=["a {}", "b {}"]
    )
    assert RunSettings.from_proto(given, "m").initial_pool_size == 2  # a given list is used whole
    assert RunSettings.from_proto(settings.to_proto(), "m") == settings
    contradictions: list[tuple[dict[str, Any], str]] = [
        ({"templates_per_call": 4}, "templates_per_call=4"),
        ({"temperature": 0.7}, "temperature=0.7"),
        ({"conversation": pb.CONVERSATION_MODE_CHAT}, "conversation=chat"),
        ({"top_k": 5}, "top_k=5"),
        ({"show_accuracies": True}, "show_accuracies=True"),
    ]
    for contradiction, named in contradictions:
        with pytest.raises(SpecError, match=f"preset authors fixes .*{named} contradicts it"):
            RunSettings.from_proto(pb.RunSpec(task_id="pets", preset=pb.PRESET_AUTHORS, **contradiction), "m")


def test_the_builtin_pool_holds_more_than_the_authors_80_distinct_templates():
    assert len({" ".join(t.split()).casefold() for t in BUILTIN_TEMPLATES}) > 80
    assert RunSettings.from_proto(pb.RunSpec(task_id="pets", initial_pool_size=80), "m").initial_pool_size == 80


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            pb.RunSpec(task_id="pets", initial_pool_size=200),
            r"initial_pool_size=200 is larger than the builtin pool, which has \d+",
        ),
        (
            pb.RunSpec(
                task_id="pets",
                initial_pool=pb.INITIAL_POOL_GIVEN,
                initial_templates=["a {}", "the {}", "A  {}"],
                initial_pool_size=3,
            ),
            "larger than the given pool, which has 2 templates",
        ),
        (
            pb.RunSpec(
                task_id="pets",
                initial_pool=pb.INITIAL_POOL_HAND_ENGINEERED,
                hand_engineered_dataset="imagenet",
                initial_pool_size=90,
            ),
            "larger than the hand_engineered pool, which has 8[0-9] templates",
        ),
    ],
)
def test_n_larger_than_its_pool_is_refused_naming_the_pools_size(spec, message):
    with pytest.raises(SpecError, match=message):
        RunSettings.from_proto(spec, "m")


def test_n_is_honoured_for_every_pool_kind_and_defaults_to_all_of_a_given_list():
    given = RunSettings.from_proto(
        pb.RunSpec(task_id="p", initial_pool=pb.INITIAL_POOL_GIVEN, initial_templates=["a {}", "b {}", "c {}"]), "m"
    )
    assert given.initial_pool_size == 3
    assert (
        RunSettings.from_proto(
            pb.RunSpec(
                task_id="p", initial_pool=pb.INITIAL_POOL_GIVEN, initial_templates=["a {}", "b {}"], initial_pool_size=1
            ),
            "m",
        ).initial_pool_size
        == 1
    )
    assert (
        RunSettings.from_proto(
            pb.RunSpec(task_id="p", initial_pool=pb.INITIAL_POOL_LLM, initial_pool_size=40), "m"
        ).initial_pool_size
        == 40
    )


def test_settings_stored_before_the_new_knobs_still_load():
    settings = RunSettings.from_proto(pb.RunSpec(task_id="pets"), "m").to_json()
    for name in ("preset", "ensemble_size", "replay_run_id"):
        del settings[name]
    old = RunSettings.from_json(settings)
    assert (old.preset, old.ensemble_size, old.replay_run_id) == (Preset.PROMPTCLIMB, 8, "")


@pytest.mark.parametrize(
    ("kind", "proto_enum"),
    [(Feedback, pb.Feedback), (Conversation, pb.ConversationMode), (Preset, pb.Preset), (InitialPool, pb.InitialPool)],
)
def test_every_proto_value_names_one_choice_and_back(kind, proto_enum):
    values = sorted(v for v in proto_enum.values() if v)  # UNSPECIFIED (0) names none: the defaults decide
    assert sorted(to_proto(member) for member in kind) == values
    assert [from_proto(kind, to_proto(member)) for member in kind] == list(kind) and from_proto(kind, 0) is None
