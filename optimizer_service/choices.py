"""The named choices of a run spec, and the one table that maps each to its proto enum value.

A spec arrives as proto values (the gRPC API) or as names (the `run` flags,
stored settings); both go through here, so a new choice is added in one place.
"""

from __future__ import annotations

import enum
from typing import Any, TypeVar, overload

from promptclimb.optimizer.v1 import optimizer_pb2 as pb


class Feedback(enum.StrEnum):
    POSITIVE_NEGATIVE = "positive_negative"  # the paper's method: good and bad lists
    POSITIVE_ONLY = "positive_only"  # the paper's ablation: good list only
    NONE = "none"  # random search: nothing shown, the control for whether feedback helps


class Conversation(enum.StrEnum):
    CHAT = "chat"  # one growing chat per reset, later turns carry accuracy feedback
    STATELESS = "stateless"  # one fresh message per iteration (the authors' code)


class Preset(enum.StrEnum):
    PROMPTCLIMB = "promptclimb"  # our defaults (the README's "Presets" says why each differs)
    AUTHORS = "authors"  # the authors' public code, knob for knob


class InitialPool(enum.StrEnum):
    BUILTIN = "builtin"
    GIVEN = "given"
    LLM = "llm"
    HAND_ENGINEERED = "hand_engineered"  # the CLIP authors' templates for one dataset, after the two plain baselines


Choice = TypeVar("Choice", Feedback, Conversation, Preset, InitialPool)

# Every member's proto value. The proto's UNSPECIFIED (0) is no member: the spec's defaults decide what it means.
PROTO_VALUES: dict[type[enum.Enum], dict[enum.Enum, int]] = {
    Feedback: {
        Feedback.POSITIVE_NEGATIVE: pb.FEEDBACK_POSITIVE_NEGATIVE,
        Feedback.POSITIVE_ONLY: pb.FEEDBACK_POSITIVE_ONLY,
        Feedback.NONE: pb.FEEDBACK_NONE,
    },
    Conversation: {
        Conversation.CHAT: pb.CONVERSATION_MODE_CHAT,
        Conversation.STATELESS: pb.CONVERSATION_MODE_STATELESS,
    },
    Preset: {Preset.PROMPTCLIMB: pb.PRESET_PROMPTCLIMB, Preset.AUTHORS: pb.PRESET_AUTHORS},
    InitialPool: {
        InitialPool.BUILTIN: pb.INITIAL_POOL_BUILTIN,
        InitialPool.GIVEN: pb.INITIAL_POOL_GIVEN,
        InitialPool.LLM: pb.INITIAL_POOL_LLM,
        InitialPool.HAND_ENGINEERED: pb.INITIAL_POOL_HAND_ENGINEERED,
    },
}


class UnknownChoice(ValueError):
    """A proto value no member maps to (a newer client's, or garbage)."""


@overload
def to_proto(member: Feedback) -> pb.Feedback: ...
@overload
def to_proto(member: Conversation) -> pb.ConversationMode: ...
@overload
def to_proto(member: Preset) -> pb.Preset: ...
@overload
def to_proto(member: InitialPool) -> pb.InitialPool: ...
def to_proto(member: enum.Enum) -> Any:
    return PROTO_VALUES[type(member)][member]


def from_proto(kind: type[Choice], value: int) -> Choice | None:
    """The member a proto value names; None for UNSPECIFIED (0)."""
    if value == 0:
        return None
    for member, number in PROTO_VALUES[kind].items():
        if number == value:
            return kind(member.value)  # the member, typed as its own enum
    raise UnknownChoice(f"{value} is not a known value")
