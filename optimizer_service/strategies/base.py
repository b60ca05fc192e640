"""The interface of a search strategy: what to ask the LLM at each step of a restart.

A strategy gets the run's shared context (climb.Climb: pool, budgets, the ask, admission, scoring, commits) and
implements `step`: build the messages for one step and hand them to `climb.propose`, which asks, parses, scores,
admits and commits. The default `climb_restart` walks a restart's steps in order, resets outer and iterations
inner, skipping the steps a resumed run already finished; a strategy that runs steps concurrently (OPRO's
independent samples) overrides it. The run's answer is computed after any strategy, by answer.py; a strategy with
a second stage from that answer (per-class prompts) implements `refine`.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from optimizer_service.climb import Climb
    from optimizer_service.pool import Candidate
    from optimizer_service.store import ClassPrompts


class Strategy(abc.ABC):
    """One search strategy; registered by name in strategies/__init__.py."""

    keeps_conversation: ClassVar[bool] = False  # does a step's ask carry earlier exchanges (so its size may grow)?

    def __init__(self, climb: Climb) -> None:
        self.climb = climb

    async def climb_restart(self, restart: int) -> None:
        """Every step of one restart, in order; a budget stops it by raising climb.BudgetExhausted."""
        settings = self.climb.settings
        for reset in range(settings.resets):
            for iteration in range(settings.iterations):
                if not self.climb.done(restart, reset, iteration):
                    await self.step(restart, reset, iteration)

    @abc.abstractmethod
    async def step(self, restart: int, reset: int, iteration: int) -> None:
        """Asks the LLM once for this step, through `self.climb.propose`."""

    async def refine(self, selected: Candidate) -> ClassPrompts | None:
        """A second stage from the run's selected template, once the climb and the selection (answer.py) are done;
        None (every strategy but the per-class ones): the run's answer stays that template."""
        return None
