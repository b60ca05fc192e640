"""Dollars by default (issue 28, problem 5): the genai-prices table, the override, and unknown as unknown."""

from __future__ import annotations

from optimizer_service.choices import Conversation
from optimizer_service.config import OPENAI_BASE_URL, LlmSettings
from optimizer_service.estimate import TYPICAL_TEMPLATE, Estimate, estimate_run
from optimizer_service.metaprompt import MetaPrompt, TaskContext, estimate_tokens
from optimizer_service.pool import Candidate
from optimizer_service.prices import Price, format_usd, table_price
from optimizer_service.spec import RunSettings
from optimizer_service.strategies.edit import COMBINE, EDITS, edit_ask


def test_a_provider_model_is_priced_from_the_table():
    price = table_price("gpt-4o-mini", OPENAI_BASE_URL)
    assert price == Price(0.15, 0.6)  # genai-prices 0.2.3's list price, USD per million tokens
    assert LlmSettings(base_url=OPENAI_BASE_URL, model="gpt-4o-mini").price_of("gpt-4o-mini") == price


def test_a_self_hosted_endpoint_has_no_price_even_for_a_known_model_name():
    assert table_price("gpt-4o-mini", "http://127.0.0.1:8080/v1") is None  # not billed at OpenAI's price
    assert table_price("scripted-model", OPENAI_BASE_URL) is None
    assert LlmSettings(model="m").price_of("m") is None
    assert LlmSettings(model="m", price=Price(1, 2)).price_of("m") == Price(1, 2)  # --llm-price wins


def test_unknown_cost_is_shown_as_unknown_never_zero():
    assert format_usd(None) == "unknown" and format_usd(0.0) == "$0.0000" and format_usd(12.345) == "$12.35"


def test_the_estimate_counts_one_call_per_iteration_and_grows_a_chat():
    settings = RunSettings(task_id="t", llm_model="m", strategy="hill_climb", restarts=2, resets=1, iterations=3)
    chat = estimate_run(settings, Price(1, 1), prompt_budget_tokens=10_000, max_completion_tokens=100)
    stateless = estimate_run(
        RunSettings(
            task_id="t",
            llm_model="m",
            strategy="hill_climb",
            restarts=2,
            resets=1,
            iterations=3,
            conversation=Conversation.STATELESS,
        ),
        None,
        prompt_budget_tokens=10_000,
        max_completion_tokens=100,
    )
    assert chat.llm_calls == stateless.llm_calls == 6
    assert chat.prompt_tokens > stateless.prompt_tokens > 0 and chat.max_completion_tokens == 600
    assert chat.usd == (chat.prompt_tokens + chat.completion_tokens) / 1e6 and stateless.usd is None
    capped = estimate_run(
        RunSettings(task_id="t", llm_model="m", restarts=2, resets=1, iterations=3, max_llm_calls=4),
        None,
        prompt_budget_tokens=10_000,
        max_completion_tokens=100,
    )
    assert capped.llm_calls == 4


def test_the_estimate_of_an_edit_run_is_one_edit_ask_per_call_never_a_growing_chat():
    def estimate(iterations: int, **knobs) -> Estimate:
        settings = RunSettings(task_id="t", llm_model="m", restarts=2, resets=1, iterations=iterations, **knobs)
        return estimate_run(settings, None, prompt_budget_tokens=10_000, max_completion_tokens=100)

    edit = estimate(3)  # the default strategy; its settings still hold conversation CHAT, which edit never reads
    assert edit.llm_calls == 6 and estimate(6).prompt_tokens == 2 * edit.prompt_tokens  # no growth per call
    settings = RunSettings(task_id="t", llm_model="m")
    meta = MetaPrompt(TaskContext("t", ("class",) * 10, ""), settings.feedback, True, settings.templates_per_call)
    parents = [Candidate(TYPICAL_TEMPLATE, 0.5, 0, 0, 0, i) for i in range(2)]
    asks = [edit_ask(meta, op, parents[: 2 if op == COMBINE else 1]) for op in [*EDITS, COMBINE]]
    assert edit.prompt_tokens == 6 * max(estimate_tokens(meta.opening_with(ask)) for ask in asks)  # leans high
    hill_climb = estimate(3, strategy="hill_climb", conversation=Conversation.STATELESS)
    assert edit.prompt_tokens != hill_climb.prompt_tokens
