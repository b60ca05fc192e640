"""`--dry-run`: a run's expected LLM calls, tokens and dollars, computed from its settings alone (nothing is scored,
no LLM is asked).

The prompts are the metaprompt's own (metaprompt.py), filled with stand-in templates of a typical length, and sized
by the same estimate that trims a chat (metaprompt.estimate_tokens: about 3 characters a token, so it leans high).
An edit step's ask is the largest of its operations (strategies/edit.py); every other strategy's step is sized as the
hill climb's ask, growing only where a chat is kept. A reply is counted as `templates_per_call` lines of a typical
template; the upper bound takes every reply at --llm-max-completion-tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from optimizer_service.choices import Conversation, InitialPool
from optimizer_service.metaprompt import Message, MetaPrompt, TaskContext, estimate_tokens, initial_pool_messages
from optimizer_service.pool import Candidate
from optimizer_service.prices import Price, format_usd
from optimizer_service.spec import RunSettings
from optimizer_service.strategies import STRATEGIES
from optimizer_service.strategies.edit import COMBINE, Edit, edit_ask, operations

# A typical template of the runs stored here ("a blurry photo of a {}, a type of clothing."): ~40 characters.
TYPICAL_TEMPLATE = "a detailed photo of a {}, seen up close."
TOKENS_PER_REPLY_LINE = -(-(len(TYPICAL_TEMPLATE) + 3) // 3)


@dataclass(frozen=True)
class Estimate:
    llm_calls: int
    prompt_tokens: int
    completion_tokens: int
    max_completion_tokens: int  # every reply as long as --llm-max-completion-tokens allows
    price: Price | None

    @property
    def usd(self) -> float | None:
        return self.price.cost(self.prompt_tokens, self.completion_tokens) if self.price else None

    @property
    def max_usd(self) -> float | None:
        return self.price.cost(self.prompt_tokens, self.max_completion_tokens) if self.price else None

    def lines(self) -> list[str]:
        return [
            f"expected LLM calls:  {self.llm_calls}",
            f"expected tokens:     {self.prompt_tokens} prompt + {self.completion_tokens} completion "
            f"(completion at most {self.max_completion_tokens})",
            f"expected cost:       {format_usd(self.usd)} (at most {format_usd(self.max_usd)})"
            + ("" if self.price else "; the model has no price: pass --llm-price PROMPT,COMPLETION"),
        ]


def estimate_run(
    settings: RunSettings,
    price: Price | None,
    *,
    prompt_budget_tokens: int,
    max_completion_tokens: int,
    class_names: tuple[str, ...] = ("class",) * 10,
) -> Estimate:
    """The calls, tokens and cost the run would spend if every call succeeds (no cache hit, no retry), bounded by
    the spec's max_llm_calls and max_llm_tokens."""
    task = TaskContext(settings.task_id, class_names, settings.task_description)
    meta = MetaPrompt(task, settings.feedback, settings.show_accuracies, settings.templates_per_call)
    good = [_stand_in(i, 0.5) for i in range(settings.top_k)]
    bad = [_stand_in(settings.top_k + i, 0.2) for i in range(settings.top_k)]
    reply: Message = {"role": "assistant", "content": "\n".join([TYPICAL_TEMPLATE] * settings.templates_per_call)}
    results = [_stand_in(100 + i, 0.4) for i in range(settings.templates_per_call)]
    follow_up = meta.follow_up(results, 0, good, bad)
    strategy = STRATEGIES[settings.strategy]
    if strategy is Edit:
        asks = [edit_ask(meta, op, good[: 2 if op == COMBINE else 1]) for op in operations(settings.top_k)]
        opening = max((meta.opening_with(ask) for ask in asks), key=estimate_tokens)
    else:
        opening = meta.opening(good, bad)
    prompts: list[int] = []
    if settings.initial_pool is InitialPool.LLM:
        prompts.append(estimate_tokens(initial_pool_messages(task, settings.initial_pool_size)))
    chat = strategy.keeps_conversation and settings.conversation is Conversation.CHAT
    for _ in range(settings.restarts * settings.resets):
        for i in range(settings.iterations):
            size = estimate_tokens(opening) + (i * estimate_tokens([reply, follow_up]) if chat else 0)
            prompts.append(min(size, prompt_budget_tokens))
    reply_tokens = [settings.templates_per_call * TOKENS_PER_REPLY_LINE] * len(prompts)
    if settings.initial_pool is InitialPool.LLM:
        reply_tokens[0] = settings.initial_pool_size * TOKENS_PER_REPLY_LINE
    limit = settings.max_llm_calls or len(prompts)
    calls, prompt_tokens, completion_tokens = 0, 0, 0
    for prompt, completion in zip(prompts[:limit], reply_tokens[:limit], strict=True):
        if settings.max_llm_tokens and prompt_tokens + completion_tokens >= settings.max_llm_tokens:
            break  # the run stops at its token budget, after the call that crosses it
        calls += 1
        prompt_tokens += prompt
        completion_tokens += min(completion, max_completion_tokens)
    return Estimate(calls, prompt_tokens, completion_tokens, calls * max_completion_tokens, price)


def _stand_in(sequence: int, accuracy: float) -> Candidate:
    return Candidate(TYPICAL_TEMPLATE, accuracy, 0, 0, 0, sequence)
