"""Per-class prompts as a second stage (ProAPO's stage 2, CuPL and DCLIP's degree of freedom), after the hill climb.

    stage 1: the paper's hill climb (strategies/hill_climb.py); the run selects its template (answer.py)
    stage 2, from that template t filled with each class name, for each of `iterations` rounds:
        score the current prompts on train with per-class accuracy
        pick `top_k` classes: the weakest (lowest train accuracy; ties: label order) with feedback,
            a seeded random draw without (the control)
        ask the LLM for `templates_per_call` prompts for those classes: a better name, or a short description
            (with feedback the ask shows each class's accuracy; without, it shows none)
        each proposal is one candidate: the current prompts with the proposal added to its class's list
            (the scorer averages a class's prompts into one embedding); all are scored in one call
        keep the best candidate if it strictly raises train accuracy
    then select on val: the per-class prompts are the answer only if they beat the selected template on val
    (without a val split: on train).

The control, `per_class_no_feedback`, sends the same asks for the same number of classes, with no per-class
accuracy and no choice of the weakest: whatever it gains comes from the proposals alone. Both respect the run's
budgets: every ask goes through the climb's LLM budgets, every candidate counts against max_scored_templates.
Stage 2 is not journaled step by step: a run resumed during it starts stage 2 again (its LLM asks are answered
from the run's cache).

climb.py, answer.py and scorer_client.py are imported where they are used: spec.py loads the strategies'
registry, and they load spec.py.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import replace

from optimizer_service.metaprompt import SYSTEM, percent
from optimizer_service.pool import Candidate
from optimizer_service.store import ClassPrompts
from optimizer_service.strategies.hill_climb import HillClimb
from promptclimb.scorer.v1 import scorer_pb2
from promptclimb_common.templates import PLACEHOLDER, fill, text_problem

PromptSet = tuple[tuple[str, ...], ...]  # per class, in label order, its prompts
MAX_PROMPT_CHARS = 200  # a proposal longer than this is not a name or a short description
LINE = re.compile(r"^\s*(?:[-*•]|\d+[.)])?\s*(?P<name>[^:]{1,100}):\s*(?P<prompt>.+?)\s*$")


class PerClass(HillClimb):
    """Stage 1 is the hill climb; `refine` is stage 2. `feedback`: show the weakest classes and their accuracies."""

    feedback = True

    async def refine(self, selected: Candidate) -> ClassPrompts | None:
        from optimizer_service.climb import BudgetExhausted

        climb = self.climb
        names = climb.class_names
        current: PromptSet = tuple((fill(selected.template, name),) for name in names)
        try:
            (base,) = await self.score([current], scorer_pb2.SPLIT_TRAIN)
        except BudgetExhausted:
            return None
        if base.error:
            return None
        accuracy, per_class = base.accuracy, [c.accuracy for c in base.class_accuracies]
        for round_index in range(climb.settings.iterations):
            try:
                asked = self.classes_to_ask(per_class, round_index)
                reply = await climb.ask(
                    self.messages(selected.template, current, asked, per_class),
                    sample=f"{climb.settings.seed}/per-class/{round_index}",
                    call_id=f"{climb.run_id}/per-class/{round_index}",
                    lines=climb.settings.templates_per_call,
                    templates=False,
                )
                proposals = self.parse(reply or "", asked, current)
                if not proposals:
                    continue
                candidates = [_with(current, label, prompt) for label, prompt in proposals]
                results = await self.score(candidates, scorer_pb2.SPLIT_TRAIN)
            except BudgetExhausted:
                break
            best = max(range(len(results)), key=lambda i: (not results[i].error, results[i].accuracy, -i))
            if not results[best].error and results[best].accuracy > accuracy:
                current, accuracy = candidates[best], results[best].accuracy
                per_class = [c.accuracy for c in results[best].class_accuracies]
        return await self.select(selected, current, accuracy)

    def classes_to_ask(self, per_class: Sequence[float], round_index: int) -> list[int]:
        """With feedback, the `top_k` weakest classes (ties: label order); without, as many drawn at random."""
        k = min(self.climb.settings.top_k, len(per_class))
        if self.feedback:
            return sorted(range(len(per_class)), key=lambda label: (per_class[label], label))[:k]
        draw = random.Random(f"{self.climb.settings.seed}/per-class/{round_index}")
        return sorted(draw.sample(range(len(per_class)), k))

    def messages(
        self, template: str, current: PromptSet, asked: Sequence[int], per_class: Sequence[float]
    ) -> list[dict]:
        climb = self.climb
        names = climb.class_names
        lines = [climb.context.introduction(), "", f'Every class is now described by the prompt "{template}".']
        if self.feedback:
            lines.append("These classes are recognised worst (share of their images classified correctly):")
        else:
            lines.append("Improve the prompts of these classes:")
        for label in asked:
            shown = "; ".join(f'"{p}"' for p in current[label])
            score = f" ({percent(per_class[label])} correct)" if self.feedback else ""
            lines.append(f"- {names[label]}{score}: now {shown}")
        count = climb.settings.templates_per_call
        lines += [
            "",
            f"Write {count} new prompts for these classes. Each names the class, or gives a more precise or more "
            "common name for it, and may add a few words on what it looks like that tell it apart from the other "
            'classes, e.g. "a photo of a dog, a pet with four legs and fur".',
            "Requirements:",
            "- fewer than 20 words, no braces;",
            f'- answer with the {count} prompts only, one per line, as "- <class name>: <prompt>", with the class '
            "name exactly as listed above.",
        ]
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n".join(lines)}]

    def parse(self, reply: str, asked: Sequence[int], current: PromptSet) -> list[tuple[int, str]]:
        """(label, prompt) of the reply's usable lines: an asked class's name, a new valid prompt; the first
        `templates_per_call`. Braces are plain text to the scorer, but a `{}` is a template, not a class's prompt."""
        labels = {self.climb.class_names[label].casefold(): label for label in asked}
        found: list[tuple[int, str]] = []
        for line in reply.splitlines():
            match = LINE.match(line)
            if not match:
                continue
            label = labels.get(match["name"].strip().strip("\"'*").casefold())
            prompt = match["prompt"].strip().strip('"')
            if (
                label is None
                or len(prompt) > MAX_PROMPT_CHARS
                or PLACEHOLDER in prompt
                or text_problem(prompt) is not None
                or prompt in current[label]
                or (label, prompt) in found
            ):
                continue
            found.append((label, prompt))
        return found[: self.climb.settings.templates_per_call]

    async def score(self, sets: list[PromptSet], split: scorer_pb2.Split) -> list[scorer_pb2.ClassPromptSetScore]:
        """Scores the sets in one call (with per-class accuracy on train), each one evaluation of the scoring
        budget; BudgetExhausted when it has no room left for them."""
        from optimizer_service.climb import BudgetExhausted, scorer_refused
        from optimizer_service.scorer_client import ScorerError

        climb = self.climb
        if split != scorer_pb2.SPLIT_TEST and climb.remaining_scoring_budget() < len(sets):
            raise BudgetExhausted("max_scored_templates")
        try:
            results = await climb.scorer.score_class_prompt_sets(
                climb.settings.task_id, sets, split, climb.task.model_digest, split == scorer_pb2.SPLIT_TRAIN
            )
        except ScorerError as err:
            raise scorer_refused(err) from None
        climb.counters.scorer_calls += 1
        climb.counters.class_prompt_sets_scored += len(sets)
        climb.counters.templates_scored += len(sets)
        return results

    async def select(self, selected: Candidate, current: PromptSet, accuracy: float) -> ClassPrompts:
        """The per-class prompts are the answer only if they beat the selected template on val (without val: on
        train; the selected template's own prompts never are)."""
        from optimizer_service import answer
        from optimizer_service.climb import BudgetExhausted

        climb = self.climb
        found = ClassPrompts(tuple(climb.class_names), current, accuracy)
        if not (climb.settings.select_on_val and answer.has_val(climb.task)):
            return replace(found, chosen=accuracy > selected.accuracy)
        template = tuple((fill(selected.template, name),) for name in climb.class_names)
        try:
            ours, theirs = await self.score([current, template], scorer_pb2.SPLIT_VAL)
        except BudgetExhausted:
            return found
        climb.counters.val_scored += 2
        if ours.error or theirs.error:
            return found
        return replace(found, val_accuracy=ours.accuracy, chosen=ours.accuracy > theirs.accuracy)


def _with(current: PromptSet, label: int, prompt: str) -> PromptSet:
    """`current` with `prompt` added to class `label`'s prompts."""
    return tuple((*prompts, prompt) if index == label else prompts for index, prompts in enumerate(current))


class PerClassNoFeedback(PerClass):
    """The control: the same asks for as many classes, drawn at random, with no per-class accuracy shown."""

    feedback = False
