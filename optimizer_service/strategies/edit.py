"""An edit and crossover proposer in the spirit of ProAPO (Qu et al., 2025): small, named changes to good templates.

    for each step: draw an operation and its parents from the restart's best k (seeded by the step)
        add       "add a short phrase to this template"
        remove    "remove a phrase from it"
        replace   "replace one phrase with another"
        combine   "combine these two good templates"
    ask for m templates made by that operation (a fresh message each step)

An edit moves the LLM off its mode ("a photo of a {}") by asking for one local change to a template that already
works, and a crossover mixes two; the pool then keeps what scores. Parents are drawn uniformly from the top k, so
k sets how greedy it is (k=1: always the best). Knobs: top_k, templates_per_call (m), show_accuracies, iterations,
resets, restarts.
"""

from __future__ import annotations

import random

from optimizer_service.metaprompt import MetaPrompt, new_templates, requirements
from optimizer_service.pool import Candidate
from optimizer_service.strategies.base import Strategy

EDITS = {
    "add": "Rewrite it by adding one short phrase (a detail of the image, the setting, or the kind of picture).",
    "remove": "Rewrite it by removing one phrase, keeping what matters for telling the classes apart.",
    "replace": "Rewrite it by replacing one phrase with a different one that could describe these images better.",
}
COMBINE = "combine"


class Edit(Strategy):
    async def step(self, restart: int, reset: int, iteration: int) -> None:
        climb = self.climb
        rng = random.Random(f"{climb.settings.seed}/edit/{restart}/{reset}/{iteration}")
        parents = climb.pool.top(climb.settings.top_k, restart)
        operation = rng.choice(operations(len(parents)))
        chosen = rng.sample(parents, 2) if operation == COMBINE else [rng.choice(parents)]
        messages = climb.metaprompt.opening_with(edit_ask(climb.metaprompt, operation, chosen))
        await climb.propose(restart, reset, iteration, messages, messages)


def operations(parents: int) -> list[str]:
    """The operations a step draws from when `parents` good templates are there to edit (combining needs two).
    Also what a dry run sizes (estimate.py)."""
    return [*EDITS, COMBINE] if parents > 1 else list(EDITS)


def edit_ask(metaprompt: MetaPrompt, operation: str, parents: list[Candidate]) -> str:
    """The ask of one step: the parent (two for COMBINE) and the change wanted. Also sizes a dry run's asks
    (estimate.py)."""
    m = metaprompt.templates_per_call
    listing = metaprompt.listing(parents)
    if operation == COMBINE:
        head = "Here are two templates that work well:"
        wish = f"Write {new_templates(m)} that combine them, keeping the best of both."
    else:
        head = "Here is a template that works well:"
        wish = EDITS[operation] + f" Write {'one such variant' if m == 1 else f'{m} such variants, each different'}."
    return "\n\n".join([head, listing, wish, requirements(m, "each a small change of the above")])
