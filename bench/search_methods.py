"""The methods the search benchmark compares: each is a name and the RunSpec fields it sets.

A method is a row of the benchmark. Its `overrides` are RunSpec fields (as the optimizer's `run`
command spells them, `--field-name value`), laid over the benchmark's shared run shape
(`Budget.shape`). A field set to None there drops the shared value, so a preset's own knobs decide
(the authors' preset fixes its templates per call and iterations itself, and refuses a spec that
contradicts them). Adding a method, e.g. a new search strategy (`{"strategy": "opro"}`) or a
per-class stage, is one line in METHODS.

`random` is the control: every method's paired difference is taken against it, so it always runs.
Every hill-climb row (the control, the authors' preset, the p-/pn- variants) names `"strategy": "hill_climb"`,
so what a row measures does not depend on the service's default strategy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

CONTROL = "random"


@dataclass(frozen=True)
class Method:
    label: str  # the row's name in every table
    overrides: dict[str, str | None] = field(default_factory=dict)


HILL_CLIMB = {"strategy": "hill_climb"}

METHODS: dict[str, Method] = {
    CONTROL: Method("random search (no feedback)", {**HILL_CLIMB, "feedback": "none", "conversation": "stateless"}),
    "authors": Method(
        "authors' preset (paper's settings)",
        # The preset fixes conversation, accuracies hidden, 1 template per call, top/bottom 3 and 10 iterations;
        # its defaults (1 restart, 1 reset, a pool of 80) are kept too.
        {
            **HILL_CLIMB,
            "preset": "authors",
            "restarts": None,
            "resets": None,
            "iterations": None,
            "templates_per_call": None,
            "initial_pool_size": None,
        },
    ),
    "p-stateless": Method(
        "positive only, stateless", {**HILL_CLIMB, "feedback": "positive_only", "conversation": "stateless"}
    ),
    "p-chat": Method("positive only, chat", {**HILL_CLIMB, "feedback": "positive_only", "conversation": "chat"}),
    "pn-stateless": Method(
        "positive + negative, stateless", {**HILL_CLIMB, "feedback": "positive_negative", "conversation": "stateless"}
    ),
    "pn-chat": Method(
        "positive + negative, chat", {**HILL_CLIMB, "feedback": "positive_negative", "conversation": "chat"}
    ),
    "opro": Method("OPRO: ascending trajectory, 4 samples per step", {"strategy": "opro"}),
    "edit": Method("edit and crossover of good templates", {"strategy": "edit"}),
    # Stage 2 runs `iterations` rounds after stage 1's restarts x iterations, inside the same LLM-call cap: 3
    # iterations leave 2 x 3 calls to stage 1 and 3 to stage 2 at the default cap of 10, so the row compares with
    # stage 1 alone (the hill-climb rows) at the same budget.
    "per-class": Method("hill climb, then per-class prompts (stage 2)", {"strategy": "per_class", "iterations": "3"}),
    "per-class-control": Method(
        "hill climb, then per-class prompts without per-class feedback",
        {"strategy": "per_class_no_feedback", "iterations": "3"},
    ),
}


@dataclass(frozen=True)
class Budget:
    """The run shape every method shares, and the LLM-call cap no method may pass."""

    llm_calls: int
    restarts: int = 2
    templates_per_call: int = 4
    initial_pool_size: int = 20

    @property
    def shape(self) -> dict[str, str]:
        return {
            "restarts": str(self.restarts),
            "resets": "1",
            "iterations": str(max(1, self.llm_calls // self.restarts)),
            "templates_per_call": str(self.templates_per_call),
            "initial_pool_size": str(self.initial_pool_size),
        }


def run_fields(method: Method, budget: Budget) -> dict[str, str]:
    """The RunSpec fields of one method's run: the shared shape, the method's overrides, the LLM-call cap."""
    fields: dict[str, str | None] = {**budget.shape, **method.overrides, "max_llm_calls": str(budget.llm_calls)}
    return {name: value for name, value in fields.items() if value is not None}


def run_flags(fields: dict[str, str]) -> list[str]:
    """RunSpec fields as the optimizer's `run` flags."""
    return [part for name, value in fields.items() for part in (f"--{name.replace('_', '-')}", value)]
