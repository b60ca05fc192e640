"""OPRO's proposer ("Large Language Models as Optimizers", Yang et al., 2023), for prompt templates.

    for each reset, for each step of `samples_per_step` iterations:
        trajectory = the restart's best k templates with their scores, in ascending order (the best last)
        ask `samples_per_step` independent questions from that one trajectory, concurrently
        (each a fresh message: task, trajectory, "write m new templates that score higher")

Every ask is stateless, so its size does not grow with T. The samples of a step differ only by their sampling
seed: at temperature > 0 they are independent draws, as OPRO's 8 samples per step are. An LLM budget counts each
sample as one iteration, so OPRO and the hill climb at the same T make the same number of LLM calls.
Knobs: top_k (the trajectory's length; OPRO shows 20), templates_per_call (m), samples_per_step,
show_accuracies (scores in the trajectory), iterations, resets, restarts. A resumed run redoes a step's unfinished
samples from the pool as it is then.
"""

from __future__ import annotations

import asyncio

from optimizer_service.metaprompt import new_templates, requirements
from optimizer_service.strategies.base import Strategy


class Opro(Strategy):
    async def climb_restart(self, restart: int) -> None:
        settings = self.climb.settings
        width = settings.samples_per_step
        for reset in range(settings.resets):
            for first in range(0, settings.iterations, width):
                left = [
                    i
                    for i in range(first, min(first + width, settings.iterations))
                    if not self.climb.done(restart, reset, i)
                ]
                messages = self.messages(restart)  # one trajectory for every sample of the step
                outcomes = await asyncio.gather(
                    *(self.climb.propose(restart, reset, i, messages, messages) for i in left), return_exceptions=True
                )
                for outcome in outcomes:  # a budget or a failure stops the climb once the step's other samples landed
                    if isinstance(outcome, BaseException):
                        raise outcome

    async def step(self, restart: int, reset: int, iteration: int) -> None:
        messages = self.messages(restart)
        await self.climb.propose(restart, reset, iteration, messages, messages)

    def messages(self, restart: int) -> list[dict]:
        climb = self.climb
        m = climb.settings.templates_per_call
        trajectory = climb.pool.top(climb.settings.top_k, restart)[::-1]
        scored = " with their accuracies" if climb.settings.show_accuracies else ""
        ask = "\n\n".join(
            [
                f"Below are templates{scored}, in ascending order: the best comes last.",
                climb.metaprompt.listing(trajectory),
                f"Write {new_templates(m)} that differ from all of the above and score higher than the last one.",
                requirements(m, "as varied as helps"),
            ]
        )
        return climb.metaprompt.opening_with(ask)
