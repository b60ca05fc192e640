"""One run's knobs: the proto RunSpec with its zero values replaced by the documented defaults and every knob
checked against a cap, so a hostile or mistaken spec cannot make a run unbounded.

`RunSettings` is what the climb reads and what the store keeps (as JSON); `RunLimits` are the service's bounds
on a run's LLM spend, set by its operator (config.py).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from optimizer_service.baselines import A_PHOTO_OF, PLAIN, BaselineError, hand_engineered
from optimizer_service.choices import (
    Choice,
    Conversation,
    Feedback,
    InitialPool,
    Preset,
    UnknownChoice,
    from_proto,
    to_proto,
)
from optimizer_service.pool import template_key
from optimizer_service.seeds import BUILTIN_TEMPLATES
from optimizer_service.strategies import DEFAULT_STRATEGY, PAPER_STRATEGY, STRATEGIES
from optimizer_service.strategies.hill_climb import HillClimb
from promptclimb.optimizer.v1 import optimizer_pb2 as pb
from promptclimb_common.templates import template_problem


class SpecError(ValueError):
    """A run spec breaks a rule; the message names the field (its first word) and its allowed range."""


class ModelNotAllowed(SpecError):
    """llm_model names a model outside the service's --llm-allowed-models."""


@dataclass(frozen=True)
class RunLimits:
    """The service's bounds on a run's spend: the models a spec may name, and the ceilings of the LLM budgets and of
    the templates it may have scored (every run scores through the optimizer's one scorer token, whose budget all
    callers share).

    A ceiling (0: none) is what a spec's 0 takes, and a spec above it is refused. `allowed_models` None: any model
    (a local `run`, where the key is the caller's own); else the models besides the default one. The cost ceiling
    applies only where the service knows prices (`priced`); without them a spec's cost limit is refused."""

    allowed_models: frozenset[str] | None = None
    max_llm_calls: int = 0
    max_llm_tokens: int = 0
    max_llm_cost_usd: float = 0.0
    priced: bool = True
    max_scored_templates: int = 0


@dataclass(frozen=True)
class OwnerShares:
    """What one owner may hold of the service, so no caller can starve another (0: no bound).

    `max_runs`: runs active or waiting at once. `max_scored_templates`: templates the owner's runs may have scored,
    counted over every run the owner ever started, where an unfinished run reserves its whole budget (its
    max_scored_templates) until it ends: every run scores through the optimizer's one scorer token, so this is each
    owner's part of that token's budget."""

    max_runs: int = 0
    max_scored_templates: int = 0


@dataclass(frozen=True)
class Knob:
    default: int
    low: int
    cap: int


# (default, smallest, cap) of every integer knob. Caps keep one run's cost bounded.
KNOBS: dict[str, Knob] = {
    "initial_pool_size": Knob(20, 1, 256),
    "restarts": Knob(3, 1, 16),
    "resets": Knob(2, 1, 10),
    "iterations": Knob(10, 1, 100),
    "top_k": Knob(3, 1, 20),
    "templates_per_call": Knob(4, 1, 32),
    "report_top": Knob(5, 1, 50),
    "ensemble_size": Knob(8, 1, 32),
    "val_candidates": Knob(8, 1, 50),
    "samples_per_step": Knob(4, 1, 16),
}


@dataclass(frozen=True)
class PresetValues:
    """What a preset sets: `fixed` knobs a spec may not change (it may only repeat them), `defaults` it may."""

    fixed: dict = field(default_factory=dict)
    defaults: dict = field(default_factory=dict)


# The authors' public code (reference facts): one fresh message per call, accuracies hidden, one template per call,
# top and bottom 3, 10 iterations, temperature 1, an initial pool of 80. It has no restarts or resets, so R=S=1.
PRESETS: dict[Preset, PresetValues] = {
    Preset.PROMPTCLIMB: PresetValues(),
    Preset.AUTHORS: PresetValues(
        fixed={
            "conversation": "stateless",
            "show_accuracies": False,
            "templates_per_call": 1,
            "top_k": 3,
            "iterations": 10,
            "temperature": 1.0,
        },
        defaults={"restarts": 1, "resets": 1, "initial_pool_size": 80},
    ),
}
MAX_TEXT_FIELD = 256  # task id, model name, label, strategy
MAX_TASK_DESCRIPTION = 1000  # shown in every ask, so it costs tokens on every LLM call
MAX_TEMPERATURE = 2.0


@dataclass(frozen=True)
class RunSettings:
    """A run spec with defaults applied and caps checked; what the climb and its strategy read."""

    task_id: str
    llm_model: str
    initial_pool: InitialPool = InitialPool.BUILTIN
    initial_templates: tuple[str, ...] = ()
    initial_pool_size: int = 20
    restarts: int = 3
    resets: int = 2
    iterations: int = 10
    top_k: int = 3
    templates_per_call: int = 4
    feedback: Feedback = Feedback.POSITIVE_NEGATIVE
    conversation: Conversation = Conversation.CHAT
    show_accuracies: bool = True
    temperature: float = 1.0
    max_llm_calls: int = 0
    max_llm_tokens: int = 0
    max_scored_templates: int = 0
    max_wall_seconds: float = 0.0  # the spec's max_wall_time
    max_llm_cost_usd: float = 0.0
    report_top: int = 5
    seed: int = 0
    label: str = ""
    hand_engineered_dataset: str = ""
    preset: Preset = Preset.PROMPTCLIMB
    ensemble_size: int = 8
    replay_run_id: str = ""
    strategy: str = DEFAULT_STRATEGY
    task_description: str = ""
    select_on_val: bool = True  # where the scorer offers a val split (answer.py)
    val_candidates: int = 8
    samples_per_step: int = 4

    def pool_templates(self) -> tuple[str, ...] | None:
        return pool_templates(self.initial_pool, self.initial_templates, self.hand_engineered_dataset)

    @property
    def iterations_total(self) -> int:
        return self.restarts * self.resets * self.iterations

    @classmethod
    def from_proto(cls, spec: pb.RunSpec, default_model: str, limits: RunLimits = RunLimits()) -> RunSettings:
        """Applies the preset, the defaults and the service's limits, checks the caps; raises SpecError naming the first
        bad field."""
        for name in ("task_id", "llm_model", "label", "hand_engineered_dataset", "replay_run_id", "strategy"):
            if len(getattr(spec, name)) > MAX_TEXT_FIELD:
                raise SpecError(f"{name} is longer than {MAX_TEXT_FIELD} characters")
        if not spec.task_id.strip():
            raise SpecError("task_id is required (see the scorer's ListTasks)")
        if len(spec.task_description) > MAX_TASK_DESCRIPTION:
            raise SpecError(f"task_description is longer than {MAX_TASK_DESCRIPTION} characters")
        model = spec.llm_model or default_model
        if not model:
            raise SpecError("llm_model is empty and the service has no default model (--llm-model)")
        if limits.allowed_models is not None and model != default_model and model not in limits.allowed_models:
            allowed = ", ".join(sorted({default_model, *limits.allowed_models} - {""}))
            raise ModelNotAllowed(
                f"llm_model {model!r} is not allowed by this service; allowed: {allowed} "
                "(its operator sets --llm-allowed-models)"
            )
        preset = _choice(Preset, spec.preset, "preset") or Preset.PROMPTCLIMB
        strategy = resolve_strategy(spec, preset)
        chosen = _Chooser(preset)
        pool = _choice(InitialPool, spec.initial_pool, "initial_pool") or InitialPool.BUILTIN
        available = _pool_templates(pool, spec)
        knobs = {}
        for name, knob in KNOBS.items():
            if name == "initial_pool_size" and pool in (InitialPool.GIVEN, InitialPool.HAND_ENGINEERED):
                assert available is not None, "a given or hand-engineered pool is a list"
                default = len(available)  # a listed pool: all of it, whatever the preset
                value = getattr(spec, name) or default
            else:
                default = knob.default
                value = chosen(name, getattr(spec, name) or None, default)
            if not knob.low <= value <= knob.cap:
                raise SpecError(
                    f"{name}={value} is out of range; allowed {knob.low}..{knob.cap} (0 takes the default {default})"
                )
            knobs[name] = value
        if available is not None and knobs["initial_pool_size"] > len(available):
            raise SpecError(
                f"initial_pool_size={knobs['initial_pool_size']} is larger than the {pool.value} pool, "
                f"which has {len(available)} templates; ask for at most {len(available)} "
                "(or 0 for the default)"
            )
        for name in ("max_llm_calls", "max_llm_tokens", "max_scored_templates"):
            if getattr(spec, name) < 0:
                raise SpecError(f"{name} must be >= 0 (0 means no limit)")
        wall = spec.max_wall_time
        if wall.seconds < 0 or not 0 <= wall.nanos < 1_000_000_000:
            raise SpecError("max_wall_time must be a duration >= 0 (unset or 0 means no limit)")
        budgets = _budgets(spec, limits)
        temperature = chosen("temperature", spec.temperature if spec.HasField("temperature") else None, 1.0)
        if not 0.0 <= temperature <= MAX_TEMPERATURE:
            raise SpecError(f"temperature={temperature} is out of range; allowed 0..{MAX_TEMPERATURE}")
        conversation = _choice(Conversation, spec.conversation, "conversation")
        return cls(
            task_id=spec.task_id,
            llm_model=model,
            initial_pool=pool,
            initial_templates=tuple(spec.initial_templates),
            feedback=_choice(Feedback, spec.feedback, "feedback") or Feedback.POSITIVE_NEGATIVE,
            conversation=Conversation(
                chosen("conversation", conversation.value if conversation else None, Conversation.CHAT.value)
            ),
            show_accuracies=chosen(
                "show_accuracies", spec.show_accuracies if spec.HasField("show_accuracies") else None, True
            ),
            temperature=temperature,
            max_wall_seconds=wall.ToNanoseconds() / 1e9,
            seed=spec.seed,
            label=spec.label,
            hand_engineered_dataset=spec.hand_engineered_dataset,
            preset=preset,
            replay_run_id=spec.replay_run_id,
            strategy=strategy,
            task_description=" ".join(spec.task_description.split()),
            select_on_val=spec.select_on_val if spec.HasField("select_on_val") else True,
            **budgets,
            **knobs,
        )

    def to_proto(self) -> pb.RunSpec:
        """The effective spec, defaults filled in, as GetRun reports it. The hill-climb knobs show only where the
        strategy reads them, so the spec reads back (report.py) and can be sent again as it is."""
        values = asdict(self)
        for name in ("initial_pool", "feedback", "conversation", "preset"):
            values[name] = to_proto(getattr(self, name))
        if not hill_climbs(self.strategy):
            values.update(dict.fromkeys(HILL_CLIMB_KNOBS, 0))
        spec = pb.RunSpec(**{k: v for k, v in values.items() if k != "max_wall_seconds"})
        spec.max_wall_time.FromNanoseconds(round(self.max_wall_seconds * 1e9))
        return spec

    def to_json(self) -> dict:
        return {**asdict(self), "initial_templates": list(self.initial_templates)}

    @classmethod
    def from_json(cls, data: dict) -> RunSettings:
        """Also reads the settings of runs stored before a knob existed (they take its default)."""
        return cls(
            **{
                **data,
                "initial_pool": InitialPool(data["initial_pool"]),
                "feedback": Feedback(data["feedback"]),
                "conversation": Conversation(data["conversation"]),
                "preset": Preset(data.get("preset", "promptclimb")),
                "initial_templates": tuple(data["initial_templates"]),
                "select_on_val": data.get("select_on_val", False),  # runs stored before val selection keep train's
                "strategy": data.get("strategy", PAPER_STRATEGY),  # runs stored before strategies were hill climbs
            }
        )


HILL_CLIMB_KNOBS = ("feedback", "conversation")


def hill_climbs(strategy: str) -> bool:
    """Does this strategy run the paper's hill climb (per_class does, as its stage 1), and so read HILL_CLIMB_KNOBS?"""
    return issubclass(STRATEGIES[strategy], HillClimb)


def resolve_strategy(spec: pb.RunSpec, preset: Preset) -> str:
    """The strategy a spec runs: the one it names, else the paper's hill climb where the spec asks for one, else the
    default (edit, chosen by the search benchmark: strategies/__init__.py).

    A spec asks for a hill climb by the authors' preset (it reproduces the paper's code) or by setting a knob only the
    hill climb reads (HILL_CLIMB_KNOBS): clients written before the default changed, such as the random-search
    control (feedback NONE) or P-only/chat, keep getting exactly the run they got. Those knobs given with a strategy
    that does not read them are refused rather than silently ignored."""
    asked = [name for name in HILL_CLIMB_KNOBS if getattr(spec, name)]
    if not spec.strategy:
        return PAPER_STRATEGY if asked or preset is Preset.AUTHORS else DEFAULT_STRATEGY
    if spec.strategy not in STRATEGIES:
        raise SpecError(f"strategy {spec.strategy!r} is unknown; known: {', '.join(sorted(STRATEGIES))}")
    if asked and not hill_climbs(spec.strategy):
        readers = ", ".join(sorted(name for name in STRATEGIES if hill_climbs(name)))
        raise SpecError(
            f"{asked[0]} applies to the hill climb only (strategies {readers}); strategy {spec.strategy!r} does not "
            f"read it (leave {' and '.join(asked)} unset, or use strategy {PAPER_STRATEGY})"
        )
    return spec.strategy


def _budgets(spec: pb.RunSpec, limits: RunLimits) -> dict:
    """The LLM and scoring budgets: the spec's, or the service's ceiling where the spec sets none; above a ceiling is
    refused."""
    if not (spec.max_llm_cost_usd >= 0 and math.isfinite(spec.max_llm_cost_usd)):
        raise SpecError("max_llm_cost_usd must be a finite number >= 0 (0 takes the service's ceiling)")
    if spec.max_llm_cost_usd and not limits.priced:
        raise SpecError(
            "max_llm_cost_usd is set, but this service's LLM model has no price to count cost by (give the service "
            "--llm-price, or use a model in the genai-prices table)"
        )
    ceilings = {
        "max_llm_calls": limits.max_llm_calls,
        "max_llm_tokens": limits.max_llm_tokens,
        "max_llm_cost_usd": limits.max_llm_cost_usd if limits.priced else 0.0,
        "max_scored_templates": limits.max_scored_templates,
    }
    budgets = {}
    for name, ceiling in ceilings.items():
        value = getattr(spec, name)
        if ceiling and value > ceiling:
            raise SpecError(f"{name}={value:g} is above this service's ceiling of {ceiling:g} (0 takes the ceiling)")
        budgets[name] = value or ceiling
    return budgets


class _Chooser:
    """One knob's value: the spec's if set, else the preset's, else the default; a spec may not contradict a fixed
    one."""

    def __init__(self, preset: Preset) -> None:
        self.preset, self.values = preset, PRESETS[preset]

    def __call__(self, name: str, given: Any, default: Any) -> Any:
        fixed = self.values.fixed.get(name)
        if fixed is not None and given is not None and given != fixed:
            raise SpecError(
                f"preset {self.preset.value} fixes {name}={fixed}; {name}={given} contradicts it "
                "(leave it unset, or use preset promptclimb)"
            )
        if given is not None:
            return given
        return fixed if fixed is not None else self.values.defaults.get(name, default)


def _pool_templates(pool: InitialPool, spec: pb.RunSpec) -> tuple[str, ...] | None:
    """The templates an initial pool draws from (None: the LLM writes them); refuses a pool that cannot be used."""
    given = tuple(spec.initial_templates)
    if pool is not InitialPool.GIVEN and given:
        raise SpecError("initial_templates is only used with initial_pool=GIVEN")
    if pool is not InitialPool.HAND_ENGINEERED and spec.hand_engineered_dataset:
        raise SpecError("hand_engineered_dataset is only used with initial_pool=HAND_ENGINEERED")
    if pool is InitialPool.HAND_ENGINEERED:
        try:
            hand_engineered(spec.hand_engineered_dataset)
        except BaselineError as err:
            raise SpecError(f"initial_pool=HAND_ENGINEERED: {err}") from err
    if pool is InitialPool.GIVEN:
        if not given:
            raise SpecError("initial_pool=GIVEN needs initial_templates")
        if len(given) > KNOBS["initial_pool_size"].cap:
            raise SpecError(f"initial_templates holds {len(given)}; allowed at most {KNOBS['initial_pool_size'].cap}")
        for index, template in enumerate(given):
            problem = template_problem(template)
            if problem:
                raise SpecError(f"initial_templates[{index}]: {problem}")
    return pool_templates(pool, given, spec.hand_engineered_dataset)


def pool_templates(pool: InitialPool, given: tuple[str, ...], dataset: str) -> tuple[str, ...] | None:
    """The distinct templates an initial pool draws each restart's sample from; None for the LLM-written pool."""
    if pool is InitialPool.BUILTIN:
        return BUILTIN_TEMPLATES
    if pool is InitialPool.HAND_ENGINEERED:
        listed = (PLAIN, A_PHOTO_OF, *hand_engineered(dataset))
    elif pool is InitialPool.GIVEN:
        listed = given
    else:
        return None
    first_of: dict[str, str] = {}
    for template in listed:
        first_of.setdefault(template_key(template), template)
    return tuple(first_of.values())


def _choice(kind: type[Choice], value: int, name: str) -> Choice | None:
    """The spec's choice for `name`; None when unspecified (the default or the preset decides)."""
    try:
        return from_proto(kind, value)
    except UnknownChoice as err:
        raise SpecError(f"{name}={err}") from None
