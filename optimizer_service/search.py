"""The hill climb of "Language Models as Black-Box Optimizers for Vision-Language Models" (CVPR 2024).

    score the initial pool
    for each restart, concurrently:                 independent climbs
        for each reset:                             a fresh conversation from the current pool
            for each iteration:
                good, bad = top-k, bottom-k of the pool (bad only with positive+negative feedback)
                ask the LLM for m new templates     (chat: the turn also reports the last accuracies)
                parse, drop invalid and already-scored templates
                score the rest in one call; add them to the pool
    report the best templates (and their test accuracy, if our scorer token may see it)

Every finished step is written to the journal before the climb moves on, and a
resumed run skips the steps the journal already holds, rebuilding the chat
from them; so a restart repeats no finished LLM call. The budgets are checked
before every LLM call (the scoring budget also trims every scoring call) and
stop the run cleanly.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, fields
from typing import Protocol

import grpc
import structlog

from optimizer_service import metrics
from optimizer_service.baselines import A_PHOTO_OF, PLAIN, hand_engineered
from optimizer_service.config import Conversation, Feedback, InitialPool, RunSettings
from optimizer_service.llm import LlmClient, LlmResult, LlmUnavailable
from optimizer_service.metaprompt import MetaPrompt, initial_pool_messages, template_lines_grammar
from optimizer_service.parsing import parse_templates
from optimizer_service.pool import INITIAL, Candidate, Pool
from optimizer_service.scorer_client import ScorerClient, ScorerError
from optimizer_service.seeds import builtin_pool
from optimizer_service.store import Step
from promptclimb.scorer.v1 import scorer_pb2

log = structlog.get_logger(__name__)

SEED_ASKS = 3  # LLM-written initial pool: asks before settling for fewer than N templates


@dataclass
class Counters:
    llm_calls: int = 0
    llm_prompt_tokens: int = 0
    llm_completion_tokens: int = 0
    llm_errors: int = 0
    llm_cost_usd: float = 0.0
    llm_cache_hits: int = 0
    scorer_calls: int = 0
    templates_scored: int = 0
    candidates_duplicate: int = 0
    candidates_invalid: int = 0
    iterations_done: int = 0
    iterations_total: int = 0
    active_seconds: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Counters:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def add_llm(self, result: LlmResult) -> None:
        self.llm_calls += 0 if result.cached else 1
        self.llm_cache_hits += 1 if result.cached else 0
        self.llm_errors += result.errors
        self.llm_prompt_tokens += result.prompt_tokens
        self.llm_completion_tokens += result.completion_tokens
        self.llm_cost_usd += result.cost_usd


class BudgetExhausted(Exception):
    """A hard limit was reached; the run stops cleanly, named by the limit."""

    def __init__(self, limit: str) -> None:
        super().__init__(limit)
        self.limit = limit


class SearchFailed(Exception):
    """The search cannot go on (nothing to climb from, the scorer refuses); the run fails with this reason."""


class Journal(Protocol):
    """Where the climb commits its progress; see runs.RunJournal."""

    def record(self, candidates: list[Candidate], steps: list[Step], iteration: tuple[int, int, int] | None) -> None: ...


class HillClimb:
    def __init__(self, run_id: str, settings: RunSettings, task: scorer_pb2.TaskInfo, llm: LlmClient, scorer: ScorerClient,
                 journal: Journal, pool: Pool, steps: dict[tuple[int, int, int], Step], counters: Counters) -> None:
        self.run_id, self.settings, self.task = run_id, settings, task
        self.llm, self.scorer, self.journal = llm, scorer, journal
        self.pool, self.steps, self.counters = pool, steps, counters
        self.class_names = list(task.class_names)
        self.metaprompt = MetaPrompt(task.task_id, settings.feedback, settings.show_accuracies, settings.templates_per_call)
        self._calls_in_flight = 0
        self._scoring_in_flight = 0
        self._budget_reached = ""
        self._active_before = counters.active_seconds
        self._started = time.monotonic()

    # The algorithm ----------------------------------------------------------

    async def run(self) -> str:
        """Climbs until done or a budget runs out; returns the stop reason."""
        if not any(c.initial for c in self.pool):
            try:
                await self.score_initial_pool()
            except BudgetExhausted as stop:
                return stop.limit
        try:
            async with asyncio.TaskGroup() as climbs:
                for restart in range(self.settings.restarts):
                    climbs.create_task(self.climb(restart))
        except BaseExceptionGroup as group:  # the first failure stops the run; its siblings were cancelled
            raise group.exceptions[0] from None
        return self._budget_reached or "finished"

    async def climb(self, restart: int) -> None:
        """One independent climb. A budget stops it at its next question; work in flight elsewhere still lands."""
        try:
            for reset in range(self.settings.resets):
                for iteration in range(self.settings.iterations):
                    if (restart, reset, iteration) not in self.steps:
                        await self.iterate(restart, reset, iteration)
        except BudgetExhausted as stop:
            log.info("budget_reached", run_id=self.run_id, restart=restart, limit=stop.limit)
            self._budget_reached = self._budget_reached or stop.limit

    async def score_initial_pool(self) -> None:
        if self.settings.initial_pool is InitialPool.LLM:
            candidates, steps = await self.llm_written_pool()
        else:
            if self.settings.initial_pool is InitialPool.BUILTIN:
                templates = builtin_pool(self.settings.initial_pool_size, self.settings.seed)
            elif self.settings.initial_pool is InitialPool.HAND_ENGINEERED:
                pool = [PLAIN, A_PHOTO_OF, *hand_engineered(self.settings.hand_engineered_dataset)]
                templates = list(dict.fromkeys(pool))[: self.settings.initial_pool_size]
            else:
                templates = list(self.settings.initial_templates)
            new, duplicates = self.pool.split_new(templates)
            self.counters.candidates_duplicate += len(duplicates)
            candidates, steps = await self.score(new, INITIAL, INITIAL, INITIAL, llm_call=""), []
        if not candidates:
            raise SearchFailed("no template of the initial pool could be scored; check the pool and the scorer's task")
        self.commit(candidates, steps, None)

    async def llm_written_pool(self) -> tuple[list[Candidate], list[Step]]:
        """N templates written by the LLM from the task's name and class names, asking again if it wrote too few."""
        wanted = self.settings.initial_pool_size
        messages = initial_pool_messages(self.task.task_id, self.class_names, wanted)
        candidates: list[Candidate] = []
        steps: list[Step] = []
        for ask in range(SEED_ASKS):
            call_id = f"{self.run_id}/seed/{ask}"
            reply = await self.ask(messages, sample=f"{self.settings.seed}/seed/{ask}", call_id=call_id, lines=wanted)
            steps.append(Step(INITIAL, INITIAL, ask, call_id, messages, reply))
            parsed = parse_templates(reply or "", self.class_names)
            new, duplicates = self.pool.split_new(parsed.templates)
            self.count_unusable(parsed.rejected, duplicates)
            candidates += await self.score(new[: wanted - len(candidates)], INITIAL, INITIAL, INITIAL, call_id)
            if len(candidates) >= wanted:
                break
        return candidates, steps

    async def iterate(self, restart: int, reset: int, iteration: int) -> None:
        k = self.settings.top_k
        good = self.pool.top(k, restart) if self.settings.feedback is not Feedback.NONE else []
        bad = self.pool.bottom(k, restart) if self.settings.feedback is Feedback.POSITIVE_NEGATIVE else []
        messages = self.messages_for(restart, reset, iteration, good, bad)
        call_id = f"{self.run_id}/{restart}/{reset}/{iteration}"
        reply = await self.ask(messages, sample=f"{self.settings.seed}/{restart}/{reset}/{iteration}", call_id=call_id,
                               lines=self.settings.templates_per_call)
        parsed = parse_templates(reply or "", self.class_names)
        new, duplicates = self.pool.split_new(parsed.templates)
        candidates = await self.score(new, restart, reset, iteration, call_id)
        self.count_unusable(parsed.rejected, duplicates)
        self.counters.iterations_done += 1
        step = Step(restart, reset, iteration, call_id, messages, reply)
        self.steps[(restart, reset, iteration)] = step
        self.commit(candidates, [step], (restart, reset, iteration))

    def commit(self, candidates: list[Candidate], steps: list[Step], iteration: tuple[int, int, int] | None) -> None:
        """Nothing counts as done until the journal holds it."""
        self.counters.active_seconds = self.active_seconds()
        self.journal.record(candidates, steps, iteration)

    def count_unusable(self, invalid: list, duplicates: list[str]) -> None:
        self.counters.candidates_invalid += len(invalid)
        self.counters.candidates_duplicate += len(duplicates)
        metrics.CANDIDATES.labels("invalid").inc(len(invalid))
        metrics.CANDIDATES.labels("duplicate").inc(len(duplicates))

    def messages_for(self, restart: int, reset: int, iteration: int, good: list[Candidate], bad: list[Candidate]) -> list[dict]:
        """Stateless, or a new reset: the opening ask. Chat: the previous exchange plus a feedback turn."""
        previous = self.steps.get((restart, reset, iteration - 1))
        if self.settings.conversation is Conversation.STATELESS or previous is None:
            return self.metaprompt.opening(good, bad)
        if previous.reply is None:  # skipped: same view of the pool, so the same question again
            return previous.messages
        results = [c for c in self.pool.view(restart) if (c.reset, c.iteration) == (reset, iteration - 1)]
        parsed = parse_templates(previous.reply, self.class_names)
        unusable = len(parsed.templates) + len(parsed.rejected) - len(results)
        return [*previous.messages, {"role": "assistant", "content": previous.reply},
                self.metaprompt.follow_up(results, unusable, good, bad)]

    # LLM and scorer, under the budgets -------------------------------------

    async def ask(self, messages: list[dict], *, sample: str, call_id: str, lines: int) -> str | None:
        """One LLM question asking for `lines` templates; None when every attempt came back malformed (counted, skipped)."""
        self.check_llm_budgets()
        self._calls_in_flight += 1
        try:
            grammar = template_lines_grammar(lines) if self.llm.settings.grammar else None
            result = await self.llm.complete(messages, model=self.settings.llm_model, temperature=self.settings.temperature,
                                             sample=sample, call_id=call_id, grammar=grammar)
        except LlmUnavailable as err:
            self.counters.llm_calls += 1
            self.counters.llm_errors += err.errors
            raise
        finally:
            self._calls_in_flight -= 1
        self.counters.add_llm(result)
        return result.content

    async def score(self, templates: list[str], restart: int, reset: int, iteration: int, llm_call: str) -> list[Candidate]:
        """Scores new templates on the train split in one call; returns them as pool candidates."""
        templates = templates[:self.remaining_scoring_budget()]
        if not templates:
            return []
        self.counters.scorer_calls += 1
        self._scoring_in_flight += len(templates)  # reserved, so concurrent climbs cannot overshoot the budget
        try:
            results = await self.scorer.score(self.settings.task_id, templates)
        except ScorerError as err:
            raise SearchFailed(str(err)) from None
        finally:
            self._scoring_in_flight -= len(templates)
        candidates = []
        for template, result in zip(templates, results, strict=True):
            if result.error:
                self.counters.candidates_invalid += 1
                metrics.CANDIDATES.labels("invalid").inc()
            elif template in self.pool:  # another restart scored it while we waited
                self.counters.candidates_duplicate += 1
                metrics.CANDIDATES.labels("duplicate").inc()
            else:
                candidate = Candidate(template, result.accuracy, restart, reset, iteration, self.pool.next_sequence, llm_call)
                self.pool.add(candidate)
                candidates.append(candidate)
                self.counters.templates_scored += 1
                metrics.CANDIDATES.labels("scored").inc()
        return candidates

    def active_seconds(self) -> float:
        return self._active_before + time.monotonic() - self._started

    def check_llm_budgets(self) -> None:
        s, c = self.settings, self.counters
        if s.max_llm_calls and c.llm_calls + self._calls_in_flight >= s.max_llm_calls:
            raise BudgetExhausted("max_llm_calls")
        if s.max_llm_tokens and c.llm_prompt_tokens + c.llm_completion_tokens >= s.max_llm_tokens:
            raise BudgetExhausted("max_llm_tokens")
        if s.max_scored_templates and c.templates_scored + self._scoring_in_flight >= s.max_scored_templates:
            raise BudgetExhausted("max_scored_templates")
        if s.max_wall_seconds and self.active_seconds() >= s.max_wall_seconds:
            raise BudgetExhausted("max_wall_seconds")

    def remaining_scoring_budget(self) -> int:
        if not self.settings.max_scored_templates:
            return 1 << 30
        return max(0, self.settings.max_scored_templates - self.counters.templates_scored - self._scoring_in_flight)

    # The result -------------------------------------------------------------

    async def test_accuracies(self, best: list[Candidate]) -> dict[int, float]:
        """Test accuracy of the final best templates only, if our scorer token has the test right; else none."""
        try:
            results = await self.scorer.score(self.settings.task_id, [c.template for c in best], scorer_pb2.SPLIT_TEST)
        except ScorerError as err:
            level = log.info if err.code == grpc.StatusCode.PERMISSION_DENIED else log.warning
            level("test_accuracy_skipped", run_id=self.run_id, reason=str(err))
            return {}
        return {c.sequence: r.accuracy for c, r in zip(best, results, strict=True) if not r.error}
