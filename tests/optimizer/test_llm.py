"""The LLM client against the scripted OpenAI-compatible server: retries, skips, accounting, cache, bounds."""

from __future__ import annotations

import asyncio

import httpx2
import openai
import pytest

from optimizer_service.config import LlmSettings
from optimizer_service.llm import CALL_HEADER, ContextTooLong, LlmClient, LlmUnavailable, call_seed, retry_after_seconds
from optimizer_service.metaprompt import template_lines_grammar
from optimizer_service.prices import Price
from optimizer_service.store import Store
from tests.optimizer.scripted_llm import (
    EMPTY_CHOICES,
    GARBAGE,
    NOT_UTF8,
    TRUNCATED_JSON,
    Delay,
    Drop,
    Fail,
    Raw,
    Reply,
    ScriptedLLM,
)

MESSAGES = [{"role": "user", "content": "Write 2 new templates"}]
NULL_CONTENT = Raw(b'{"choices": [{"index": 0, "message": {"role": "assistant", "content": null}}]}')


def settings(url: str, **overrides) -> LlmSettings:
    values = {
        "base_url": url,
        "model": "scripted",
        "api_key": "placeholder",
        "concurrency": 4,
        "timeout_s": 5.0,
        "max_attempts": 3,
        "backoff_initial_s": 0.01,
        "backoff_max_s": 0.2,
    }
    return LlmSettings(**{**values, **overrides})


async def ask(client: LlmClient, sample: str = "0", call_id: str = "run/0/0/0", scope: str = "run", replay: str = ""):
    return await client.complete(
        MESSAGES,
        model="scripted",
        temperature=1.0,
        sample=sample,
        call_id=call_id,
        cache_scope=scope,
        replay_scope=replay,
    )


async def test_a_reply_is_returned_with_its_tokens_cost_and_call_header(tmp_path):
    with ScriptedLLM([Reply("- a {}", prompt_tokens=1000, completion_tokens=500)]) as llm:
        client = LlmClient(settings(llm.url, price=Price(2.0, 8.0)), Store.open(tmp_path))
        result = await ask(client, call_id="run/1/0/3")
        await client.close()
    assert (result.content, result.prompt_tokens, result.completion_tokens) == ("- a {}", 1000, 500)
    assert result.cost_usd == pytest.approx((1000 * 2.0 + 500 * 8.0) / 1e6)
    assert (len(llm.seen), result.errors, result.cached) == (1, 0, False)
    [seen] = llm.seen
    assert seen.headers[CALL_HEADER.lower()] == "run/1/0/3"
    assert seen.body["model"] == "scripted" and seen.body["temperature"] == 1.0 and seen.body["messages"] == MESSAGES


@pytest.mark.parametrize(
    "fault",
    [
        Fail(429, {"retry-after": "0.05"}),
        Fail(429, {"retry-after-ms": "30"}),
        Fail(500),
        Fail(503),
        Drop(),
        Delay(1.5, Reply("- too late {}")),
        TRUNCATED_JSON,
        NOT_UTF8,
        EMPTY_CHOICES,
        GARBAGE,
        NULL_CONTENT,
        Reply("   "),
    ],
    ids=[
        "429-retry-after",
        "429-retry-after-ms",
        "500",
        "503",
        "connection-reset",
        "timeout",
        "truncated-json",
        "not-utf8",
        "empty-choices",
        "garbage",
        "null-content",
        "blank-content",
    ],
)
async def test_each_passing_fault_is_retried_and_counted(fault, tmp_path):
    with ScriptedLLM([fault, Reply("- a fine {}")]) as llm:
        client = LlmClient(settings(llm.url, timeout_s=0.5), None)
        result = await ask(client)
        await client.close()
    assert result.content == "- a fine {}"
    assert (len(llm.seen), result.errors) == (2, 1)
    assert [s.answered for s in llm.seen][-1] == "reply"


async def test_a_reply_malformed_every_time_is_skipped_not_raised():
    with ScriptedLLM([GARBAGE, EMPTY_CHOICES, TRUNCATED_JSON]) as llm:
        client = LlmClient(settings(llm.url, max_attempts=3), None)
        result = await ask(client)
        await client.close()
    assert result.content is None
    assert (len(llm.seen), result.errors) == (3, 3)


async def test_an_endpoint_that_stays_down_raises_unavailable_with_its_counts():
    with ScriptedLLM([Fail(500), Fail(503), Fail(500)]) as llm:
        client = LlmClient(settings(llm.url, max_attempts=3), None)
        with pytest.raises(LlmUnavailable, match="after 3 attempt") as caught:
            await ask(client)
        await client.close()
    assert (len(llm.seen), caught.value.errors) == (3, 3)


@pytest.mark.parametrize("status", [400, 401, 404])
async def test_a_refusal_is_not_retried(status):
    with ScriptedLLM([Fail(status), Reply("- never asked {}")]) as llm:
        client = LlmClient(settings(llm.url), None)
        with pytest.raises(LlmUnavailable, match="refused"):
            await ask(client)
        await client.close()
    assert len(llm.seen) == 1


async def test_the_token_limit_goes_in_the_field_the_model_wants():
    wants_new_field = Fail(
        400,
        message="Unsupported parameter: 'max_tokens' is not supported with this model. "
        "Use 'max_completion_tokens' instead.",
    )
    with ScriptedLLM([wants_new_field, Reply("- a {}")]) as llm:
        client = LlmClient(settings(llm.url, max_completion_tokens=77), None)
        with pytest.raises(LlmUnavailable, match="wants --llm-token-limit-field max_completion_tokens"):
            await ask(client)
        await client.close()
        client = LlmClient(settings(llm.url, max_completion_tokens=77, token_limit_field="max_completion_tokens"), None)
        assert (await ask(client)).content == "- a {}"
        await client.close()
    first, second = (seen.body for seen in llm.seen)
    assert first["max_tokens"] == 77 and "max_completion_tokens" not in first
    assert second["max_completion_tokens"] == 77 and "max_tokens" not in second


async def test_the_response_cache_answers_identical_questions_and_only_those(tmp_path):
    store = Store.open(tmp_path)
    with ScriptedLLM() as llm:
        client = LlmClient(settings(llm.url), store)
        first = await ask(client, sample="s1")
        again = await ask(client, sample="s1", call_id="another/call")
        other_sample = await ask(client, sample="s2")
        await client.close()
        uncached = LlmClient(settings(llm.url, cache=False), store)
        fresh = await ask(uncached, sample="s1")
        await uncached.close()
    assert again.cached and again.content == first.content and again.prompt_tokens == 0
    assert not other_sample.cached and other_sample.content != first.content
    assert not fresh.cached and fresh.content != first.content
    assert len(llm.seen) == 3


async def test_requests_in_flight_stay_within_the_concurrency_bound():
    with ScriptedLLM([Delay(0.2, Reply(f"- slow {i} {{}}")) for i in range(6)]) as llm:
        client = LlmClient(settings(llm.url, concurrency=2), None)
        results = await asyncio.gather(*(ask(client, sample=str(i)) for i in range(6)))
        await client.close()
    assert all(r.content for r in results)
    assert llm.most_in_flight == 2


def _rate_limited(headers: dict[str, str]) -> openai.RateLimitError:
    request = httpx2.Request("POST", "http://llm/v1/chat/completions")
    return openai.RateLimitError(
        "slow down", response=httpx2.Response(429, headers=headers, request=request), body=None
    )


def test_retry_after_is_read_in_milliseconds_seconds_or_as_a_date():
    assert retry_after_seconds(_rate_limited({"retry-after-ms": "1500"})) == 1.5
    assert retry_after_seconds(_rate_limited({"retry-after": "7"})) == 7.0
    assert retry_after_seconds(_rate_limited({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})) == 0.0  # in the past
    assert retry_after_seconds(_rate_limited({})) is None
    assert retry_after_seconds(ValueError("not an HTTP error")) is None


def test_the_wait_honors_retry_after_up_to_the_backoff_cap():
    from tenacity import RetryCallState, Retrying

    client = LlmClient(settings("http://127.0.0.1:9/v1", backoff_max_s=10.0), None)
    state = RetryCallState(Retrying(), None, (), {})
    state.set_exception((openai.RateLimitError, _rate_limited({"retry-after": "4"}), None))
    assert client._wait(state) == 4.0
    state.set_exception((openai.RateLimitError, _rate_limited({"retry-after": "600"}), None))
    assert client._wait(state) == 10.0


async def test_a_grammar_goes_in_the_request_body_and_the_cache_key(tmp_path):
    grammar = template_lines_grammar(2)
    with ScriptedLLM([Reply("- a {}\n- b {}\n"), Reply("- c {}\n- d {}\n")]) as llm:
        client = LlmClient(settings(llm.url), Store.open(tmp_path))
        constrained = await client.complete(
            MESSAGES,
            model="scripted",
            temperature=1.0,
            sample="0",
            call_id="r/0/0/0",
            cache_scope="run",
            grammar=grammar,
        )
        free = await ask(client)  # same question without the grammar: not answered from the cache
        await client.close()
    assert (constrained.content, free.content) == ("- a {}\n- b {}\n", "- c {}\n- d {}\n")
    assert llm.seen[0].body["grammar"] == grammar
    assert "grammar" not in llm.seen[1].body
    assert grammar.startswith("root ::= line line\n") and '"{}"' in grammar


async def test_each_call_sends_a_seed_derived_from_its_sample_and_none_when_told_not_to(tmp_path):
    with ScriptedLLM() as llm:
        client = LlmClient(settings(llm.url), None)
        await ask(client, sample="7/0/0/0")
        await ask(client, sample="7/0/0/1")
        await ask(client, sample="7/0/0/0")
        await client.close()
        silent = LlmClient(settings(llm.url, send_seed=False), None)
        await ask(silent, sample="7/0/0/0")
        await silent.close()
    seeds = [s.body.get("seed") for s in llm.seen]
    assert seeds[0] == seeds[2] == call_seed("7/0/0/0") and seeds[1] == call_seed("7/0/0/1") != seeds[0]
    assert all(isinstance(seed, int) and 0 <= seed < 2**31 for seed in seeds[:3])
    assert seeds[3] is None


async def test_the_reply_cache_answers_only_its_own_run_or_the_run_it_replays(tmp_path):
    with ScriptedLLM() as llm:
        client = LlmClient(settings(llm.url), Store.open(tmp_path))
        first = await ask(client, scope="run-a")
        again = await ask(client, scope="run-a")  # a resumed run-a: answered from the cache
        other = await ask(client, scope="run-b")  # the same question from another run: asked afresh
        replay = await ask(client, scope="run-c", replay="run-a")  # an explicit replay of run-a
        await client.close()
    assert len(llm.seen) == 2
    assert (again.cached, other.cached, replay.cached) == (True, False, True)
    assert again.content == replay.content == first.content != other.content


@pytest.mark.parametrize(
    "message",
    [
        "the request exceeds the available context size, try increasing it",
        "This model's maximum context length is 4097 tokens. However, your messages resulted in 5000",
    ],
)
async def test_a_context_length_refusal_is_not_retried_and_says_what_it_is(message, tmp_path):
    with ScriptedLLM([Fail(400, message=message)]) as llm:
        client = LlmClient(settings(llm.url), None)
        with pytest.raises(ContextTooLong, match="--llm-context-tokens") as caught:
            await ask(client)
        await client.close()
    assert len(llm.seen) == 1 and caught.value.errors == 1
