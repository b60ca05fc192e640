"""The chat LLM, reached through any OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, llama-server).

One call here is one question of the climb. Behind it: a bound on requests in
flight; retries with exponential backoff and jitter on 429, 5xx, timeouts,
dropped connections and malformed replies, waiting as long as a Retry-After
header asks; token and cost accounting; and a response cache in the store,
keyed by the run and by everything that determines the answer (endpoint,
model, messages, sampling parameters, sample index), so a resumed run never
pays for a reply twice while another run with the same spec asks afresh
(replaying a run is an explicit option of the spec). Each call sends a `seed`
derived from the run's seed and the call. A reply that stays malformed is
skipped; a prompt the endpoint says exceeds its context raises ContextTooLong
for the caller to shorten; an endpoint that stays down, or refuses us (4xx),
stops the run with the reason.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import cast

import openai
import structlog
from openai.types.chat import ChatCompletionMessageParam
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from optimizer_service import metrics
from optimizer_service.config import LlmSettings
from optimizer_service.store import CachedReply, Store

log = structlog.get_logger(__name__)

CALL_HEADER = "X-Promptclimb-Call"  # names the climb step, for tracing at the endpoint or a proxy


class MalformedReply(Exception):
    """The endpoint answered 200 with something that is not a usable chat completion."""


_CONTEXT_ERROR = re.compile(
    r"context[_ ](?:length|size|window)|exceed_context|maximum context|too many tokens|prompt is too long",
    re.IGNORECASE,
)


def is_context_error(err: BaseException) -> bool:
    """llama-server: 400 "exceeds the available context size"; OpenAI and vLLM: 400 "maximum context length"."""
    refused = isinstance(err, openai.APIStatusError) and err.status_code in (400, 413)
    return refused and bool(_CONTEXT_ERROR.search(str(err)))


class LlmUnavailable(Exception):
    """The endpoint stayed down through every retry, or refused the request; the run cannot go on."""

    def __init__(self, message: str, errors: int) -> None:
        super().__init__(message)
        self.errors = errors  # failed requests before giving up, which the run's counters add up


class ContextTooLong(LlmUnavailable):
    """The endpoint refused the prompt as longer than its context; a shorter prompt may pass."""


@dataclass(frozen=True)
class LlmResult:
    """One question's outcome: the reply text (None: skipped, malformed every time) and what it cost."""

    content: str | None
    errors: int = 0  # failed HTTP requests before the reply
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    cached: bool = False


@dataclass
class _Tally:
    requests: int = 0
    errors: int = 0
    last_error: str = field(default="")


def error_kind(err: BaseException) -> str:
    if isinstance(err, openai.APIStatusError):
        return "429" if err.status_code == 429 else ("5xx" if err.status_code >= 500 else "refused")
    if isinstance(err, openai.APITimeoutError):
        return "timeout"
    if isinstance(err, openai.APIConnectionError):
        return "connection"
    return "malformed"


def is_retryable(err: BaseException) -> bool:
    if isinstance(err, openai.APIStatusError):
        return err.status_code in (408, 409, 429) or err.status_code >= 500
    return isinstance(err, (openai.APIConnectionError, MalformedReply))


def retry_after_seconds(err: BaseException | None) -> float | None:
    """The wait a 429/503 asks for: `retry-after-ms`, or `retry-after` in seconds or as an HTTP date."""
    response = getattr(err, "response", None)
    if response is None:
        return None
    headers = response.headers
    try:
        if "retry-after-ms" in headers:
            return max(0.0, float(headers["retry-after-ms"]) / 1000)
        if "retry-after" in headers:
            value = headers["retry-after"]
            try:
                return max(0.0, float(value))
            except ValueError:
                return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (ValueError, TypeError):
        return None
    return None


def cache_key(scope: str, base_url: str, model: str, messages: list[dict], sampling: dict, sample: str) -> str:
    """`scope` is the run whose replies may answer (its own, or the one it replays)."""
    blob = json.dumps(
        {
            "scope": scope,
            "endpoint": base_url.rstrip("/"),
            "model": model,
            "messages": messages,
            "sampling": sampling,
            "sample": sample,
        },
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def call_seed(sample: str) -> int:
    """The LLM's `seed` for one call: a 31-bit number derived from the sample name (which holds the run's seed)."""
    return int.from_bytes(hashlib.sha256(sample.encode()).digest()[:4], "big") & 0x7FFFFFFF


class LlmClient:
    def __init__(self, settings: LlmSettings, store: Store | None) -> None:
        self.settings = settings
        self._store = store if settings.cache else None
        self._limit = asyncio.Semaphore(settings.concurrency)
        self._client = openai.AsyncOpenAI(
            api_key=settings.api_key, base_url=settings.base_url, max_retries=0, timeout=settings.timeout_s
        )
        self._backoff = wait_exponential_jitter(
            multiplier=settings.backoff_initial_s, max=settings.backoff_max_s, jitter=settings.backoff_initial_s
        )

    async def close(self) -> None:
        await self._client.close()

    def _wait(self, state: RetryCallState) -> float:
        hinted = retry_after_seconds(state.outcome.exception() if state.outcome else None)
        if hinted is not None:
            return min(hinted, self.settings.backoff_max_s)
        return self._backoff(state)

    async def complete(
        self,
        messages: list[dict],
        *,
        model: str,
        temperature: float,
        sample: str,
        call_id: str,
        cache_scope: str,
        replay_scope: str = "",
        grammar: str | None = None,
    ) -> LlmResult:
        """Asks once, retrying what can be retried; answers from the cache if this exact question was answered before in
        `cache_scope` (the run) or `replay_scope` (a run it replays). The reply is stored under `cache_scope`.

        `sample` names the call within its run (seed included); `grammar` (GBNF) constrains the reply on llama.cpp
        endpoints."""
        sampling: dict = {
            "temperature": temperature,
            self.settings.token_limit_field: self.settings.max_completion_tokens,
        }
        if self.settings.send_seed:
            sampling["seed"] = call_seed(sample)
        if grammar:
            sampling["extra_body"] = {"grammar": grammar}
        key = cache_key(cache_scope, self.settings.base_url, model, messages, sampling, sample)
        if self._store is not None:
            for scope in filter(None, (cache_scope, replay_scope)):
                hit = self._store.cached_reply(
                    cache_key(scope, self.settings.base_url, model, messages, sampling, sample)
                )
                if hit is not None:
                    metrics.LLM_CALLS.labels(model, "cached").inc()
                    return LlmResult(hit.content, prompt_tokens=0, completion_tokens=0, cached=True)
        tally = _Tally()
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.settings.max_attempts),
            wait=self._wait,
            retry=retry_if_exception(is_retryable),
            reraise=True,
        )
        try:
            reply: tuple[str, int, int] = await retrying(self._request, messages, model, sampling, call_id, tally)
        except MalformedReply:
            log.warning("llm_reply_skipped", call=call_id, attempts=tally.requests, error=tally.last_error)
            return LlmResult(None, tally.errors)
        except openai.OpenAIError as err:
            if is_context_error(err):
                raise ContextTooLong(
                    f"LLM endpoint {self.settings.base_url} refused the prompt as too long for its "
                    f"context ({tally.last_error}); set --llm-context-tokens to the model's context "
                    "size",
                    tally.errors,
                ) from err
            message = (
                f"LLM endpoint {self.settings.base_url} failed after {tally.requests} attempt(s): {tally.last_error}"
            )
            wants_new_field = "max_completion_tokens" in tally.last_error
            if wants_new_field and self.settings.token_limit_field != "max_completion_tokens":
                message += " (this model wants --llm-token-limit-field max_completion_tokens)"
            raise LlmUnavailable(message, tally.errors) from err
        content, prompt_tokens, completion_tokens = reply
        if self._store is not None:
            await self._store.cache_reply(key, CachedReply(content, prompt_tokens, completion_tokens))
        price = self.settings.price_of(model)
        cost = price.cost(prompt_tokens, completion_tokens) if price else 0.0  # unknown: the report says so
        return LlmResult(content, tally.errors, prompt_tokens, completion_tokens, cost)

    async def _request(
        self, messages: list[dict], model: str, sampling: dict, call_id: str, tally: _Tally
    ) -> tuple[str, int, int]:
        """One HTTP request; every failure is counted and re-raised for the retry policy to judge."""
        tally.requests += 1
        try:
            async with self._limit:
                started = time.perf_counter()
                try:
                    response = await self._client.chat.completions.create(
                        # metaprompt's role/content dicts are the chat messages the API types
                        model=model,
                        messages=cast("list[ChatCompletionMessageParam]", messages),
                        extra_headers={CALL_HEADER: call_id},
                        **sampling,
                    )
                finally:
                    metrics.LLM_SECONDS.labels(model).observe(time.perf_counter() - started)
            content = _content_of(response)
        except (openai.APIError, MalformedReply, ValueError) as err:
            readable = isinstance(err, (openai.APIError, MalformedReply))
            failure = err if readable else MalformedReply(f"unreadable body: {err}")
            tally.errors += 1
            tally.last_error = f"{error_kind(failure)}: {str(failure)[:200]}"
            metrics.LLM_CALLS.labels(model, "error").inc()
            metrics.LLM_ERRORS.labels(model, error_kind(failure)).inc()
            log.info("llm_request_failed", call=call_id, kind=error_kind(failure), error=str(failure)[:200])
            if failure is err:
                raise
            raise failure from err
        usage = response.usage
        prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
        completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
        metrics.LLM_CALLS.labels(model, "success").inc()
        metrics.LLM_TOKENS.labels(model, "prompt").inc(prompt_tokens)
        metrics.LLM_TOKENS.labels(model, "completion").inc(completion_tokens)
        return content, prompt_tokens, completion_tokens


def _content_of(response: object) -> str:
    choices = getattr(response, "choices", None)
    if not choices:
        raise MalformedReply("reply has no choices")
    message = getattr(choices[0], "message", None)
    content = getattr(message, "content", None)
    if not isinstance(content, str) or not content.strip():
        raise MalformedReply("reply has an empty message")
    return content
