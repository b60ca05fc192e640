"""The search strategies a RunSpec may name. Adding one: a file in this package and one line in STRATEGIES."""

from __future__ import annotations

from optimizer_service.strategies.base import Strategy
from optimizer_service.strategies.edit import Edit
from optimizer_service.strategies.hill_climb import HillClimb
from optimizer_service.strategies.opro import Opro
from optimizer_service.strategies.per_class import PerClass, PerClassNoFeedback

DEFAULT_STRATEGY = "hill_climb"
STRATEGIES: dict[str, type[Strategy]] = {
    "hill_climb": HillClimb,
    "opro": Opro,
    "edit": Edit,
    "per_class": PerClass,
    "per_class_no_feedback": PerClassNoFeedback,
}
