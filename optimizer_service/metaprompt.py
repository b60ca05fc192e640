"""The messages the LLM is sent: the paper's meta-prompt and its chat feedback.

An ask shows the good templates (top-k) and, with positive+negative feedback,
the bad ones (bottom-k), then states the requirements: exactly one `{}`, short,
one per line. In chat mode the next user turn first reports how the last
templates did ("the accuracy of <template> is now X%"), then asks again with
the updated lists. With accuracies hidden, the LLM learns only the ranking.

Templates come from an LLM and are data: they are joined into the text, never
used as a format string.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from optimizer_service.choices import Feedback
from optimizer_service.pool import Candidate

Message = dict[str, str]

SYSTEM = (
    "You are an expert in writing prompt templates for CLIP zero-shot image classification. "
    "You answer with templates only."
)
MAX_CLASS_NAMES_SHOWN = 30


def requirements(count: int, shape: str = "similar in structure to the good templates") -> str:
    noun = "template" if count == 1 else f"{count} templates"
    return "\n".join(
        [
            "Requirements:",
            "- keep exactly one {} where the class name goes, and no other braces;",
            f"- fewer than 15 words, {shape};",
            f'- answer with the {noun} only, one per line, each line starting with "- ".',
        ]
    )


def new_templates(count: int) -> str:
    """How an ask names what it wants: "a new template" or "4 new templates"."""
    return "a new template" if count == 1 else f"{count} new templates"


def percent(accuracy: float) -> str:
    return f"{100 * accuracy:.1f}%"


@dataclass(frozen=True)
class TaskContext:
    """What every ask tells the LLM about the task, the control's (random search) included: its name, its class
    names (the first MAX_CLASS_NAMES_SHOWN) and the user's own description, if any."""

    name: str
    class_names: tuple[str, ...] = ()
    description: str = ""

    def introduction(self) -> str:
        shown = list(self.class_names[:MAX_CLASS_NAMES_SHOWN])
        more = f" and {len(self.class_names) - len(shown)} more" if len(self.class_names) > len(shown) else ""
        parts = [
            f'I classify images of the task "{self.name}" with CLIP by filling a prompt template with each class '
            'name, for example "a photo of a {}." becomes "a photo of a dog.".'
        ]
        if shown:
            parts.append(f"The classes are: {', '.join(shown)}{more}.")
        if self.description:
            parts.append(f"The task, in its owner's words: {self.description}")
        return " ".join(parts)


@dataclass(frozen=True)
class MetaPrompt:
    task: TaskContext
    feedback: Feedback
    show_accuracies: bool
    templates_per_call: int

    def listing(self, candidates: Sequence[Candidate]) -> str:
        if self.show_accuracies:
            return "\n".join(f"- {c.template} (accuracy {percent(c.accuracy)})" for c in candidates)
        return "\n".join(f"- {c.template}" for c in candidates)

    def ask(self, good: Sequence[Candidate], bad: Sequence[Candidate]) -> str:
        """The request for new templates, given the current good and bad lists."""
        count = self.templates_per_call
        if self.feedback is Feedback.NONE:  # random search: the task alone, no template shown
            return "\n\n".join(
                [
                    f"Write {'a new template' if count == 1 else f'{count} new, varied templates'}.",
                    requirements(count, "varied in wording"),
                ]
            )
        parts = [
            f"Here are templates that work well for this task{', best first' if self.show_accuracies else ''}:",
            self.listing(good),
        ]
        if self.feedback is Feedback.POSITIVE_NEGATIVE and bad:
            parts += ["Here are templates that work poorly:", self.listing(bad)]
            wish = "better than the good templates and unlike the poor ones"
        else:
            wish = "better than these"
        parts += [f"Write {new_templates(count)} {wish}.", requirements(count)]
        return "\n\n".join(parts)

    def opening(self, good: Sequence[Candidate], bad: Sequence[Candidate]) -> list[Message]:
        """The first messages of a conversation (or the only ones, in stateless mode)."""
        return self.opening_with(self.ask(good, bad))

    def opening_with(self, ask: str) -> list[Message]:
        """The system message and a first user turn: the task, then `ask` (a strategy's own request)."""
        intro = self.task.introduction() + " Help me find the template with the highest accuracy."
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": intro + "\n\n" + ask}]

    def follow_up(
        self, results: Sequence[Candidate], unusable: int, good: Sequence[Candidate], bad: Sequence[Candidate]
    ) -> Message:
        """The next chat turn: how the last templates did, then a fresh ask.

        Positive-only: only the new templates that joined the good list are named, nothing else is said."""
        if self.feedback is Feedback.NONE:
            return {"role": "user", "content": "Write more, unlike the ones you wrote.\n\n" + self.ask(good, bad)}
        lines = []
        good_keys = {c.sequence for c in good}
        bad_keys = {c.sequence for c in bad}
        positive_only = self.feedback is Feedback.POSITIVE_ONLY
        for candidate in results:
            if positive_only and candidate.sequence not in good_keys:
                continue
            if self.show_accuracies:
                lines.append(f'The accuracy of "{candidate.template}" is now {percent(candidate.accuracy)}.')
            elif candidate.sequence in good_keys:
                lines.append(f'"{candidate.template}" is now among the best templates.')
            elif candidate.sequence in bad_keys:
                lines.append(f'"{candidate.template}" is among the worst templates.')
            else:
                lines.append(f'"{candidate.template}" did not beat the best templates.')
        if unusable and not positive_only:
            lines.append(
                f"{unusable} of your lines repeated a template already tried, broke the requirements, "
                f"or came after the {self.templates_per_call} asked for."
            )
        if not lines and not positive_only:
            lines.append("Your last answer held no usable template.")
        ask = self.ask(good, bad)
        return {"role": "user", "content": "\n".join(lines) + "\n\n" + ask if lines else ask}


CHARS_PER_TOKEN = 3  # a conservative estimate for English under BPE tokenizers (most give about 4)
TOKENS_PER_MESSAGE = 4  # role and separators


def estimate_tokens(messages: Sequence[Message]) -> int:
    """The prompt's size in tokens, estimated: the LLM's own tokenizer is not known here."""
    return sum(TOKENS_PER_MESSAGE + -(-len(m["content"]) // CHARS_PER_TOKEN) for m in messages)


def fit_chat(transcript: Sequence[Message], budget_tokens: int) -> list[Message]:
    """The chat to send: the opening (system and first ask) and the latest exchanges (reply, next ask) that fit
    the budget.

    The last exchange, which holds the current ask, is always kept, so the result may exceed a budget too small
    for it."""
    head, exchanges = list(transcript[:2]), [list(transcript[i : i + 2]) for i in range(2, len(transcript), 2)]
    kept: list[list[Message]] = []
    used = estimate_tokens(head)
    for exchange in reversed(exchanges):
        cost = estimate_tokens(exchange)
        if kept and used + cost > budget_tokens:
            break
        kept.append(exchange)
        used += cost
    return head + [message for exchange in reversed(kept) for message in exchange]


def initial_pool_messages(task: TaskContext, count: int) -> list[Message]:
    """Asks the LLM to write the initial pool from the task's name, class names and description."""
    user = "\n\n".join(
        [
            task.introduction(),
            f"Write {count} different templates that describe such images well.",
            requirements(count, "varied in wording"),
        ]
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def template_lines_grammar(count: int) -> str:
    """A GBNF grammar (llama.cpp) for the reply the meta-prompt asks for: `count`
    lines "- <template>", each holding exactly one {} and no other brace.

    Small local models otherwise copy the shown accuracies into their lines and
    write paragraphs, so digits, '%', parentheses and inner full stops are left
    out and each side of the {} is kept short: 100 characters in all, about the
    authors' "under 15 words", and some 25 of CLIP's BPE tokens, so a template
    and a long class name fit CLIP's 77-token context.
    """
    lines = " ".join(["line"] * count)
    return (
        f"root ::= {lines}\n"
        'line ::= "- " head "{}" tail "\\n"\n'
        "head ::= [^{}\\n()%0-9.]{0,60}\n"
        'tail ::= [^{}\\n()%0-9.]{0,40} "."?\n'
    )
