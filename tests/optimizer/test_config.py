"""Run specs: defaults fill zero values, caps reject runaway knobs with the field named."""

from __future__ import annotations

import pytest

from optimizer_service.config import KNOBS, Conversation, Feedback, InitialPool, RunSettings, SpecError
from promptclimb.optimizer.v1 import optimizer_pb2 as pb


def test_zero_values_take_the_papers_defaults():
    settings = RunSettings.from_proto(pb.RunSpec(task_id="pets"), default_model="qwen")
    assert (settings.restarts, settings.resets, settings.iterations, settings.top_k, settings.templates_per_call) == (3, 2, 10, 3, 4)
    assert settings.initial_pool is InitialPool.BUILTIN and settings.initial_pool_size == 20
    assert settings.feedback is Feedback.POSITIVE_NEGATIVE and settings.conversation is Conversation.CHAT
    assert settings.show_accuracies and settings.temperature == 1.0 and settings.llm_model == "qwen"
    assert settings.iterations_total == 60


def test_effective_spec_round_trips_through_proto_and_json():
    spec = pb.RunSpec(task_id="pets", llm_model="m", restarts=2, feedback=pb.FEEDBACK_POSITIVE_ONLY,
                      conversation=pb.CONVERSATION_MODE_STATELESS, hide_accuracies=True, temperature=0.0,
                      initial_pool=pb.INITIAL_POOL_GIVEN, initial_templates=["a {}"], max_llm_calls=7)
    settings = RunSettings.from_proto(spec, "")
    assert settings.temperature == 0.0  # an explicit zero is kept, not defaulted
    assert RunSettings.from_proto(settings.to_proto(), "") == settings
    assert RunSettings.from_json(settings.to_json()) == settings


@pytest.mark.parametrize("name", sorted(KNOBS))
def test_every_knob_above_its_cap_is_rejected_naming_it(name):
    with pytest.raises(SpecError, match=rf"{name}={KNOBS[name].cap + 1} is out of range; allowed 1\.\.{KNOBS[name].cap}"):
        RunSettings.from_proto(pb.RunSpec(task_id="pets", **{name: KNOBS[name].cap + 1}), "m")
    with pytest.raises(SpecError, match=name):
        RunSettings.from_proto(pb.RunSpec(task_id="pets", **{name: -1}), "m")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (pb.RunSpec(), "task_id is required"),
        (pb.RunSpec(task_id="x" * 300), "task_id is longer"),
        (pb.RunSpec(task_id="pets", temperature=2.5), "temperature=2.5"),
        (pb.RunSpec(task_id="pets", max_llm_calls=-1), "max_llm_calls"),
        (pb.RunSpec(task_id="pets", max_wall_seconds=float("inf")), "max_wall_seconds"),
        (pb.RunSpec(task_id="pets", initial_pool=pb.INITIAL_POOL_GIVEN), "needs initial_templates"),
        (pb.RunSpec(task_id="pets", initial_pool=pb.INITIAL_POOL_GIVEN, initial_templates=["a {0.__class__}"]), r"initial_templates\[0\]"),
        (pb.RunSpec(task_id="pets", initial_templates=["a {}"]), "only used with initial_pool=GIVEN"),
        (pb.RunSpec(task_id="pets", feedback=7), "feedback=7"),
    ],
)
def test_bad_specs_are_rejected_with_an_actionable_message(spec, message):
    with pytest.raises(SpecError, match=message):
        RunSettings.from_proto(spec, "m")


def test_no_model_anywhere_is_rejected():
    with pytest.raises(SpecError, match="--llm-model"):
        RunSettings.from_proto(pb.RunSpec(task_id="pets"), "")
