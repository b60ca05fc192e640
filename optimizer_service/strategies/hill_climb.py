"""The hill climb of "Language Models as Black-Box Optimizers for Vision-Language Models" (CVPR 2024).

    for each reset:                  a fresh conversation from the restart's pool
        for each iteration:
            good, bad = top-k, bottom-k of the restart's pool (bad only with positive+negative feedback)
            ask the LLM for m new templates     (chat: the turn also reports the last results)

Feedback NONE is random search, the control: the same asks with no template shown. In chat mode a chat is kept
within the LLM's context (metaprompt.fit_chat), and cut shorter when the endpoint still says it is too long.
Knobs: feedback, conversation, show_accuracies, top_k, templates_per_call, restarts, resets, iterations; the
authors' preset fixes them as their code has them.
"""

from __future__ import annotations

from optimizer_service.choices import Conversation, Feedback
from optimizer_service.parsing import parse_templates
from optimizer_service.pool import Candidate
from optimizer_service.strategies.base import Strategy


class HillClimb(Strategy):
    keeps_conversation = True  # in chat mode

    async def step(self, restart: int, reset: int, iteration: int) -> None:
        settings, pool = self.climb.settings, self.climb.pool
        k = settings.top_k
        good = pool.top(k, restart) if settings.feedback is not Feedback.NONE else []
        bad = pool.bottom(k, restart) if settings.feedback is Feedback.POSITIVE_NEGATIVE else []
        await self.climb.propose(
            restart,
            reset,
            iteration,
            self.transcript(restart, reset, iteration, good, bad),
            self.climb.metaprompt.opening(good, bad),
        )

    def transcript(
        self, restart: int, reset: int, iteration: int, good: list[Candidate], bad: list[Candidate]
    ) -> list[dict]:
        """The whole conversation up to this ask: the opening, then (reply, feedback turn) per earlier iteration.

        Stateless, or a new reset: the opening ask alone. A skipped reply (None) leaves the question as it was."""
        climb = self.climb
        previous = climb.steps.get((restart, reset, iteration - 1))
        if climb.settings.conversation is Conversation.STATELESS or previous is None:
            return climb.metaprompt.opening(good, bad)
        asked = self.asked_in(restart, reset, iteration - 1)
        if previous.reply is None:
            return asked
        results = [
            c for c in climb.pool.view(restart) if (c.restart, c.reset, c.iteration) == (restart, reset, iteration - 1)
        ]
        parsed = parse_templates(previous.reply, climb.class_names)
        unusable = len(parsed.templates) + len(parsed.rejected) - len(results)
        return [
            *asked,
            {"role": "assistant", "content": previous.reply},
            climb.metaprompt.follow_up(results, unusable, good, bad),
        ]

    def asked_in(self, restart: int, reset: int, iteration: int) -> list[dict]:
        """The whole conversation a finished step asked from, rebuilt from the journal.

        The step itself holds it trimmed."""
        steps = self.climb.steps
        conversation = steps[(restart, reset, 0)].messages
        for index in range(1, iteration + 1):
            before = steps[(restart, reset, index - 1)]
            if before.reply is not None:
                conversation = [
                    *conversation,
                    {"role": "assistant", "content": before.reply},
                    steps[(restart, reset, index)].messages[-1],
                ]
        return conversation
