"""What every search strategy shares: the pool, the budgets and counters, the LLM ask, the admission of new
templates, scoring and commits. A strategy (strategies/) only decides what to ask.

    score the initial pool: each restart draws its own sample of N (seeded); all are scored in one call
    for each restart, concurrently:             independent climbs, each on its own pool view
        the strategy asks the LLM, step after step (restart, reset, iteration); every step goes through `propose`:
            ask (fitted to the LLM's context); parse; drop invalid lines, the restart's repeats, known rejections
            and lines after the first m; score the rest in one call (those another restart scored come from memory);
            add them to the pool; commit the step
    then answer.py computes the run's answer (selection, ensemble, test accuracy)

A restart's trajectory depends only on the seed and its own LLM replies, never
on timing: it is only told about its own steps, and what another restart
scored enters its pool only when its own LLM proposes it.

Every finished step is written to the journal before the climb moves on, and a
resumed run skips the steps the journal already holds; so a restart repeats no
finished LLM call. The budgets are checked before every LLM call (the scoring
budget also trims every scoring call) and stop the run cleanly. A spent
evaluation budget at the scorer fails the run at once (resumable once the
budget is raised), wherever it is met.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Protocol

import structlog

from optimizer_service import metrics
from optimizer_service.choices import InitialPool
from optimizer_service.llm import ContextTooLong, LlmClient, LlmResult, LlmUnavailable
from optimizer_service.metaprompt import (
    MetaPrompt,
    TaskContext,
    estimate_tokens,
    fit_chat,
    initial_pool_messages,
    template_lines_grammar,
)
from optimizer_service.parsing import ParsedReply, parse_templates
from optimizer_service.pool import INITIAL, Candidate, Pool, template_key
from optimizer_service.scorer_client import ScorerClient, ScorerError
from optimizer_service.seeds import builtin_pool, draw
from optimizer_service.spec import RunSettings
from optimizer_service.store import Step
from promptclimb.scorer.v1 import scorer_pb2

if TYPE_CHECKING:
    from optimizer_service.strategies.base import Strategy

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
    candidates_extra: int = 0
    candidates_reused: int = 0
    ensembles_scored: int = 0
    llm_context_trims: int = 0
    val_scored: int = 0
    class_prompt_sets_scored: int = 0

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


def scorer_refused(err: ScorerError) -> SearchFailed:
    """The run's failure for a scorer refusal; a spent evaluation budget says so first, and how to go on.

    The budget is the optimizer's scorer token's, which every caller's runs share: the scorer's own message (the
    token's name and its usage) is the operator's to read in the log, not the run owner's."""
    if err.budget_spent:
        log.warning("scorer_budget_spent", reason=str(err))
        return SearchFailed(
            "evaluation_budget_spent: the optimizer's scorer budget is spent; once the optimizer's operator raises "
            "it, ResumeRun continues the run"
        )
    return SearchFailed(str(err))


class Journal(Protocol):
    """Where the climb commits its progress; see journal.RunJournal."""

    async def record(
        self,
        candidates: list[Candidate],
        steps: list[Step],
        iteration: tuple[int, int, int] | None,
        rejected: list[tuple[str, str]],
    ) -> None: ...


class Climb:
    """One run's search state and the operations every strategy shares; see the module's docstring."""

    def __init__(
        self,
        run_id: str,
        settings: RunSettings,
        task: scorer_pb2.TaskInfo,
        llm: LlmClient,
        scorer: ScorerClient,
        journal: Journal,
        pool: Pool,
        steps: dict[tuple[int, int, int], Step],
        counters: Counters,
    ) -> None:
        self.run_id, self.settings, self.task = run_id, settings, task
        self.llm, self.scorer, self.journal = llm, scorer, journal
        self.pool, self.steps, self.counters = pool, steps, counters
        self.class_names = list(task.class_names)
        self.context = TaskContext(task.task_id, tuple(task.class_names), settings.task_description)
        self.metaprompt = MetaPrompt(
            self.context, settings.feedback, settings.show_accuracies, settings.templates_per_call
        )
        self._calls_in_flight = 0
        self._scoring_in_flight = 0
        self._being_scored: dict[
            str, asyncio.Future
        ] = {}  # template key -> its accuracy, or the scorer's reason to refuse it
        self._rejected_now: list[tuple[str, str]] = []  # scorer refusals not yet in the journal
        self._budget_reached = ""
        self._active_before = counters.active_seconds
        self._started = time.monotonic()

    # The search --------------------------------------------------------------

    async def run(self, strategy: Strategy) -> str:
        """Scores the initial pool (once), then lets the strategy climb every restart concurrently until it is done or
        a budget runs out; returns the stop reason."""
        if not any(c.initial for c in self.pool):
            try:
                await self.score_initial_pool()
            except BudgetExhausted as stop:
                return stop.limit
        try:
            async with asyncio.TaskGroup() as climbs:
                for restart in range(self.settings.restarts):
                    climbs.create_task(self._climb(strategy, restart))
        except BaseExceptionGroup as group:  # the first failure stops the run; its siblings were cancelled
            raise group.exceptions[0] from None
        return self._budget_reached or "finished"

    async def _climb(self, strategy: Strategy, restart: int) -> None:
        """One independent climb. A budget stops it at its next question; work in flight elsewhere still lands."""
        try:
            await strategy.climb_restart(restart)
        except BudgetExhausted as stop:
            log.info("budget_reached", run_id=self.run_id, restart=restart, limit=stop.limit)
            self._budget_reached = self._budget_reached or stop.limit

    def done(self, restart: int, reset: int, iteration: int) -> bool:
        """Did an earlier life of the run (or this one) finish the step? A resumed run skips it."""
        return (restart, reset, iteration) in self.steps

    def initial_sample(self, restart: int) -> list[str]:
        """The restart's own N templates of the pool, drawn by the run's seed and the restart."""
        seed, size = f"{self.settings.seed}/sample/{restart}", self.settings.initial_pool_size
        if self.settings.initial_pool is InitialPool.BUILTIN:
            return builtin_pool(size, seed)
        baselines = 2 if self.settings.initial_pool is InitialPool.HAND_ENGINEERED else 0  # `{}` and "a photo of a {}."
        listed = self.settings.pool_templates()
        assert listed is not None, "only the LLM-written pool has no list, and it is written, not drawn"
        return draw(listed, size, seed, fixed=baselines)

    async def score_initial_pool(self) -> None:
        if self.settings.initial_pool is InitialPool.LLM:
            candidates, steps = await self.llm_written_pool()
        else:
            if self.settings.initial_pool is InitialPool.GIVEN:  # repeats in the given list
                distinct = self.settings.pool_templates()
                assert distinct is not None, "a given pool is a list"
                self.counters.candidates_duplicate += len(self.settings.initial_templates) - len(distinct)
            samples = [self.initial_sample(restart) for restart in range(self.settings.restarts)]
            fresh = await self.learn([t for sample in samples for t in sample])  # the union, in one Score call
            candidates, steps = [], []
            for restart, sample in enumerate(samples):  # a template several restarts drew counts as scored by the first
                admitted = await self.admit(sample, restart, INITIAL, INITIAL, llm_call="", fresh=fresh)
                fresh = fresh - {template_key(c.template) for c in admitted}
                candidates += admitted
        empty = [r for r in range(self.settings.restarts) if not self.pool.view(r)]
        if empty:
            raise SearchFailed(
                f"no template of restart {empty[0]}'s initial pool could be scored; "
                "check the pool and the scorer's task"
            )
        await self.commit(candidates, steps, None)

    async def llm_written_pool(self) -> tuple[list[Candidate], list[Step]]:
        """N templates written by the LLM from the task's name and class names, asking again if it wrote too few.

        Every restart starts from all of them (its sample of N out of N)."""
        wanted = self.settings.initial_pool_size
        messages = initial_pool_messages(self.context, wanted)
        candidates: list[Candidate] = []
        steps: list[Step] = []
        for ask in range(SEED_ASKS):
            call_id = f"{self.run_id}/seed/{ask}"
            reply = await self.ask(messages, sample=f"{self.settings.seed}/seed/{ask}", call_id=call_id, lines=wanted)
            steps.append(Step(INITIAL, INITIAL, ask, call_id, messages, reply))
            new = self.usable(parse_templates(reply or "", self.class_names), INITIAL)
            candidates += await self.admit(
                new[: wanted - len(candidates)], INITIAL, INITIAL, INITIAL, call_id, first_position=len(candidates)
            )
            if len(candidates) >= wanted:
                break
        else:
            log.warning(
                "initial_pool_short", run_id=self.run_id, wanted=wanted, written=len(candidates), asks=SEED_ASKS
            )
        return candidates, steps

    async def propose(
        self, restart: int, reset: int, iteration: int, transcript: list[dict], shortest: list[dict]
    ) -> None:
        """One step of any strategy: asks the transcript (cut down towards `shortest` while the LLM finds it too
        long), admits the first m usable templates of the reply into the restart's pool, and commits the step."""
        call_id = f"{self.run_id}/{restart}/{reset}/{iteration}"
        messages, reply = await self.question(
            transcript, shortest, sample=f"{self.settings.seed}/{restart}/{reset}/{iteration}", call_id=call_id
        )
        new = self.usable(parse_templates(reply or "", self.class_names), restart)
        m = self.settings.templates_per_call
        self.counters.candidates_extra += len(new[m:])
        metrics.CANDIDATES.labels("extra").inc(len(new[m:]))
        candidates = await self.admit(new[:m], restart, reset, iteration, call_id)
        self.counters.iterations_done += 1
        step = Step(restart, reset, iteration, call_id, messages, reply)
        self.steps[(restart, reset, iteration)] = step
        await self.commit(candidates, [step], (restart, reset, iteration))

    def usable(self, parsed: ParsedReply, restart: int) -> list[str]:
        """The reply's templates that are new to the restart and not known to be refused by the scorer.

        The rest are counted."""
        new, duplicates = self.pool.split_new(parsed.templates, restart)
        refused = [t for t in new if self.pool.rejection(t) is not None]
        self.counters.candidates_invalid += len(parsed.rejected) + len(refused)
        self.counters.candidates_duplicate += len(duplicates)
        metrics.CANDIDATES.labels("invalid").inc(len(parsed.rejected) + len(refused))
        metrics.CANDIDATES.labels("duplicate").inc(len(duplicates))
        return [t for t in new if self.pool.rejection(t) is None]

    async def commit(
        self, candidates: list[Candidate], steps: list[Step], iteration: tuple[int, int, int] | None
    ) -> None:
        """Nothing counts as done until the journal holds it."""
        self.counters.active_seconds = self.active_seconds()
        rejected, self._rejected_now = self._rejected_now, []
        await self.journal.record(candidates, steps, iteration, rejected)

    # The LLM and the scorer, under the budgets --------------------------------

    async def question(
        self, transcript: list[dict], shortest: list[dict], *, sample: str, call_id: str
    ) -> tuple[list[dict], str | None]:
        """Asks the transcript fitted to the LLM's context; if the endpoint still finds it too long, asks a shorter one:
        fewer exchanges, at last `shortest` (the opening ask alone). Returns what was sent and the reply."""
        messages = fit_chat(transcript, self.llm.settings.prompt_budget_tokens)
        while True:
            try:
                return messages, await self.ask(
                    messages, sample=sample, call_id=call_id, lines=self.settings.templates_per_call
                )
            except ContextTooLong:
                shorter = fit_chat(transcript, estimate_tokens(messages) // 2)
                if len(shorter) == len(messages):
                    shorter = shortest
                    if shorter == messages:
                        raise
                log.info(
                    "llm_context_trimmed", call=call_id, messages_before=len(messages), messages_after=len(shorter)
                )
                self.counters.llm_context_trims += 1
                messages = shorter

    async def ask(
        self, messages: list[dict], *, sample: str, call_id: str, lines: int, templates: bool = True
    ) -> str | None:
        """One LLM question asking for `lines` templates (`templates=False`: lines of other text, never held to
        the template grammar).

        None when every attempt came back malformed (counted, skipped)."""
        self.check_llm_budgets()
        self._calls_in_flight += 1
        try:
            grammar = template_lines_grammar(lines) if self.llm.settings.grammar and templates else None
            result = await self.llm.complete(
                messages,
                model=self.settings.llm_model,
                temperature=self.settings.temperature,
                sample=sample,
                call_id=call_id,
                grammar=grammar,
                cache_scope=self.run_id,
                replay_scope=self.settings.replay_run_id,
            )
        except LlmUnavailable as err:
            self.counters.llm_calls += 1
            self.counters.llm_errors += err.errors
            raise
        finally:
            self._calls_in_flight -= 1
        self.counters.add_llm(result)
        return result.content

    async def learn(self, templates: list[str]) -> set[str]:
        """Makes sure the run knows each template's train accuracy or the scorer's refusal, scoring the unknown ones in
        one call and never one that another restart scored or is scoring (that one is awaited). The scoring budget
        trims what is sent. Returns the keys this call scored."""
        unknown: dict[str, str] = {}
        for template in templates:
            key = template_key(template)
            if (
                self.pool.accuracy(template) is None
                and self.pool.rejection(template) is None
                and key not in self._being_scored
            ):
                unknown.setdefault(key, template)
        sent = list(unknown.items())[: self.remaining_scoring_budget()]
        futures = {key: asyncio.get_running_loop().create_future() for key, _ in sent}
        self._being_scored.update(futures)
        try:
            await self._score_and_remember([t for _, t in sent], futures)
        finally:
            for key, future in futures.items():
                del self._being_scored[key]
                if not future.done():
                    future.cancel()
        waits = [self._being_scored[template_key(t)] for t in templates if template_key(t) in self._being_scored]
        if waits:
            await asyncio.wait(waits)
            for future in waits:
                future.result()  # a sibling's scoring failure is this climb's too
        return set(futures)

    async def _score_and_remember(self, templates: list[str], futures: dict[str, asyncio.Future]) -> None:
        if not templates:
            return
        self.counters.scorer_calls += 1
        self._scoring_in_flight += len(templates)  # reserved, so concurrent climbs cannot overshoot the budget
        try:
            results = await self.scorer.score(self.settings.task_id, templates, model_digest=self.task.model_digest)
        except ScorerError as err:
            raise scorer_refused(err) from None
        finally:
            self._scoring_in_flight -= len(templates)
        for template, result in zip(templates, results, strict=True):
            if result.error:
                self.pool.reject(template, result.error)
                self._rejected_now.append((template, result.error))
            else:
                self.pool.remember(template, result.accuracy)
                self.counters.templates_scored += 1
                metrics.CANDIDATES.labels("scored").inc()
            futures[template_key(template)].set_result(None)

    async def admit(
        self,
        templates: list[str],
        restart: int,
        reset: int,
        iteration: int,
        llm_call: str,
        first_position: int = 0,
        fresh: set[str] | None = None,
    ) -> list[Candidate]:
        """Scores (or recalls) the templates and adds them to the restart's pool in the given order.

        A template that a concurrent step of the same restart (OPRO's samples) added while these were scored is a
        duplicate by now, and is counted as one. `fresh`: keys already scored for this admission (so not reused); by
        default, what scoring them now takes."""
        scored_here = await self.learn(templates) if fresh is None else fresh
        candidates = []
        for position, template in enumerate(templates, start=first_position):
            accuracy = self.pool.accuracy(template)
            if self.pool.holds(template, restart):
                self.counters.candidates_duplicate += 1
                metrics.CANDIDATES.labels("duplicate").inc()
            elif self.pool.rejection(template) is not None:
                self.counters.candidates_invalid += 1
                metrics.CANDIDATES.labels("invalid").inc()
            elif accuracy is not None:  # None: left out by the scoring budget
                reused = template_key(template) not in scored_here
                candidate = Candidate(
                    template, accuracy, restart, reset, iteration, self.pool.next_sequence, llm_call, position, reused
                )
                self.pool.add(candidate)
                candidates.append(candidate)
                self.counters.candidates_reused += int(reused)
                metrics.CANDIDATES.labels("reused" if reused else "admitted").inc()
        return candidates

    def active_seconds(self) -> float:
        return self._active_before + time.monotonic() - self._started

    def check_llm_budgets(self) -> None:
        s, c = self.settings, self.counters
        if s.max_llm_calls and c.llm_calls + self._calls_in_flight >= s.max_llm_calls:
            raise BudgetExhausted("max_llm_calls")
        if s.max_llm_tokens and c.llm_prompt_tokens + c.llm_completion_tokens >= s.max_llm_tokens:
            raise BudgetExhausted("max_llm_tokens")
        if s.max_llm_cost_usd and c.llm_cost_usd >= s.max_llm_cost_usd:
            raise BudgetExhausted("max_llm_cost_usd")
        if s.max_scored_templates and c.templates_scored + self._scoring_in_flight >= s.max_scored_templates:
            raise BudgetExhausted("max_scored_templates")
        if s.max_wall_seconds and self.active_seconds() >= s.max_wall_seconds:
            raise BudgetExhausted("max_wall_time")

    def remaining_scoring_budget(self) -> int:
        if not self.settings.max_scored_templates:
            return 1 << 30
        return max(0, self.settings.max_scored_templates - self.counters.templates_scored - self._scoring_in_flight)
