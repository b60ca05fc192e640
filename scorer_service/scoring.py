"""Candidate accuracy: fill, tokenize once, encode (cache first), classify, count.

Only counts leave this module. A candidate gives each class one or more
prompts: a template fills its `{}` with the class name (one prompt per class),
an ensemble (the CLIP authors' prompt ensembling) gives each class its members
filled, a class prompt set (CuPL-style) gives each class its own prompts. A
class's embedding is the renormalised mean of the normalised embeddings of its
distinct prompts, distinct by token ids: a repeat, or a case or whitespace
variant that CLIP's tokenizer reads alike, is not a weight (weights would let a
caller interpolate between prompts and probe single images). With one distinct
prompt per class, that prompt's embedding is used as it is, so a one-member
ensemble scores exactly as its template.

Every prompt the cache lacks is tokenized once: its ids decide whether it fits
the model's context, which prompts are alike, and are what the encoder reads.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import NamedTuple, TypeVar

import torch

from promptclimb_common.templates import PLACEHOLDER, Problem, fill, template_problem, text_problem
from scorer_service import metrics
from scorer_service.batcher import TextEncodeBatcher
from scorer_service.datasets import Task
from scorer_service.features import SplitFeatures
from scorer_service.model import ClipEncoder

T = TypeVar("T")
TokenIds = tuple[int, ...]


class CachedPrompt(NamedTuple):
    ids: TokenIds
    embedding: torch.Tensor


class TextEmbeddingCache:
    """LRU cache of prompt embeddings and token ids, bounded in bytes; safe to share between threads.

    An entry costs its embedding, its prompt, its ids, and the bookkeeping of a
    tensor, a tuple and a dict entry (measured at 150-650 bytes), which
    dominates for small models. The ids let a cached prompt be told apart from
    its variants without tokenizing it again.
    """

    ENTRY_OVERHEAD_BYTES = 512
    ID_BYTES = 8

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[str, CachedPrompt] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, prompt: str) -> CachedPrompt | None:
        with self._lock:
            entry = self._entries.get(prompt)
            if entry is not None:
                self._entries.move_to_end(prompt)
            return entry

    def put(self, prompt: str, ids: TokenIds, embedding: torch.Tensor) -> None:
        """Keeps a copy: `embedding` is usually a row of a whole encoder batch, which
        a view would keep alive, far beyond what the bound counts."""
        entry = CachedPrompt(ids, embedding)
        size = self._size(prompt, entry)
        if size > self.max_bytes:
            return
        entry = CachedPrompt(ids, embedding.clone())
        with self._lock:
            if prompt in self._entries:
                return
            self._entries[prompt] = entry
            self.bytes += size
            while self.bytes > self.max_bytes:
                old_prompt, old = self._entries.popitem(last=False)
                self.bytes -= self._size(old_prompt, old)
            metrics.TEXT_CACHE_BYTES.set(self.bytes)
            metrics.TEXT_CACHE_ENTRIES.set(len(self._entries))

    def _size(self, prompt: str, entry: CachedPrompt) -> int:
        embedding = entry.embedding
        return (
            embedding.numel() * embedding.element_size()
            + len(prompt.encode())
            + len(entry.ids) * self.ID_BYTES
            + self.ENTRY_OVERHEAD_BYTES
        )


@dataclass(frozen=True)
class Candidates:
    """One Score call's candidates as the request gives them: templates, ensembles (lists of templates), and class
    prompt sets (per class, in label order, its prompts)."""

    templates: Sequence[str] = ()
    ensembles: Sequence[Sequence[str]] = ()
    class_prompt_sets: Sequence[Sequence[Sequence[str]]] = ()


@dataclass(frozen=True)
class CandidateScore:
    """One candidate's count of correct images; with per-class counts when they were asked for."""

    correct: int = 0
    total: int = 0
    error: str = ""
    reason: str = ""  # the error's TemplateErrorReason name without its prefix
    class_correct: tuple[int, ...] = ()
    class_total: tuple[int, ...] = ()

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0


@dataclass(frozen=True)
class Scores:
    """Results in request order, one list per kind of candidate."""

    templates: list[CandidateScore]
    ensembles: list[CandidateScore]
    class_prompt_sets: list[CandidateScore]


@dataclass
class _Plan:
    """A call's candidates checked, each valid one as its prompts per class, with every prompt's token ids and what
    the cache already holds."""

    problems: dict[str, Problem | None] = field(default_factory=dict)  # each distinct template (members too)
    set_problems: list[Problem | None] = field(default_factory=list)
    ensemble_problems: list[Problem | None] = field(default_factory=list)
    ids: dict[str, TokenIds] = field(default_factory=dict)  # every prompt of a valid template or set
    cached: dict[str, torch.Tensor] = field(default_factory=dict)  # prompt: embedding, those in the cache
    prefixes: dict[str, str | None] = field(default_factory=dict)  # prompt: its template's text before `{}`

    @property
    def missing(self) -> list[str]:
        """The prompts to encode, in a fixed order."""
        return [p for p in self.ids if p not in self.cached]


class TemplateScorer:
    """Scores candidates on a task split; owns the text cache and the validity rules.

    A big call's CPU work takes seconds (tokenizing 256 templates x 1,000 classes
    alone does), so none of it runs on the event loop: filling, checking and the
    cache run on a few `prepare` threads, so a small call is not held up by a
    big one's tokenizing; the accuracy matmul runs on one thread of its own, so
    torch computes on two threads at most (it and the batcher's encoder), each
    with torch's intra-op threads, never one team per concurrent call. A call
    its client cancels stops its prepare thread between templates (and leaves
    the encoder, see the batcher).
    """

    PREPARE_THREADS = 4

    def __init__(
        self, encoder: ClipEncoder, batcher: TextEncodeBatcher, cache: TextEmbeddingCache, max_template_bytes: int
    ) -> None:
        self.encoder = encoder
        self.batcher = batcher
        self.cache = cache
        self.max_template_bytes = max_template_bytes
        self._prepare = ThreadPoolExecutor(max_workers=self.PREPARE_THREADS, thread_name_prefix="score-prepare")
        self._accuracy = ThreadPoolExecutor(max_workers=1, thread_name_prefix="score-accuracy")

    def close(self) -> None:
        """Waits for the threads' work in hand (none once the server has drained), then ends them."""
        self._prepare.shutdown(wait=True)
        self._accuracy.shutdown(wait=True)

    async def score_candidates(
        self, task: Task, split: str, features: SplitFeatures, candidates: Candidates, per_class: bool = False
    ) -> Scores:
        """Scores every candidate in one encoder pass; results in request order, invalid ones with `error`;
        `per_class`: with each class's count of correct images."""
        plan = await _run_abandonable(self._prepare, self._plan, task, candidates)
        missing = plan.missing
        encoded = (
            await self.batcher.encode([plan.ids[p] for p in missing], [plan.prefixes[p] for p in missing])
            if missing
            else None
        )
        return await _run_in(self._accuracy, self._scores, task, split, features, candidates, plan, encoded, per_class)

    def _plan(self, task: Task, candidates: Candidates, abandoned: threading.Event) -> _Plan:
        """Checks every template and class prompt set, tokenizing the prompts the cache lacks, one template or set at
        a time; stops (Abandoned) at the next one once `abandoned` is set."""
        plan = _Plan()
        templates = list(dict.fromkeys([*candidates.templates, *(t for e in candidates.ensembles for t in e)]))
        units = len(templates) + len(candidates.class_prompt_sets)
        for done, template in enumerate(templates):
            if abandoned.is_set():
                self._abandon(task, templates[done:], candidates.class_prompt_sets, done, units)
            plan.problems[template] = self._template_problem(plan, task, template)
        for done, prompt_set in enumerate(candidates.class_prompt_sets, start=len(templates)):
            if abandoned.is_set():
                self._abandon(task, [], candidates.class_prompt_sets[done - len(templates) :], done, units)
            plan.set_problems.append(self._set_problem(plan, task, prompt_set))
        plan.ensemble_problems = [_ensemble_problem(e, plan.problems) for e in candidates.ensembles]
        metrics.TEXT_CACHE_HITS.inc(len(plan.cached))
        metrics.TEXT_CACHE_MISSES.inc(len(plan.ids) - len(plan.cached))
        return plan

    @staticmethod
    def _abandon(
        task: Task, templates: Sequence[str], sets: Sequence[Sequence[Sequence[str]]], done: int, units: int
    ) -> None:
        left = len(templates) * len(task.class_names) + sum(len(c) for s in sets for c in s)
        metrics.ABANDONED_PROMPTS.inc(left)
        raise Abandoned(f"stopped after {done} of {units} templates and class prompt sets: the call was cancelled")

    def _template_problem(self, plan: _Plan, task: Task, template: str) -> Problem | None:
        problem = template_problem(template, self.max_template_bytes)
        if problem:
            return problem
        prompts = [fill(template, c) for c in task.class_names]
        long = self._tokenize(plan, prompts, template.split(PLACEHOLDER, 1)[0])
        if long is not None:
            prompt, length = long
            return Problem(
                f"template fills to {length} tokens (for {prompt!r}); the model reads at most "
                f"{self.encoder.context_length}",
                "EXCEEDS_CONTEXT",
            )
        return None

    def _set_problem(self, plan: _Plan, task: Task, prompt_set: Sequence[Sequence[str]]) -> Problem | None:
        for label, prompts in enumerate(prompt_set):
            where = f"class {label} ({task.class_names[label]!r})"
            if not prompts:
                return Problem(f"{where} has no prompts", "EMPTY_CLASS")
            for index, prompt in enumerate(prompts):
                problem = text_problem(prompt, self.max_template_bytes)
                if problem:
                    return Problem(f"{where} prompt {index}: {problem}", "INVALID_PROMPT")
        long = self._tokenize(plan, [p for prompts in prompt_set for p in prompts], None)
        if long is not None:
            prompt, length = long
            label = next(label for label, prompts in enumerate(prompt_set) if prompt in prompts)
            return Problem(
                f"class {label} ({task.class_names[label]!r}) prompt {list(prompt_set[label]).index(prompt)} "
                f"({prompt!r}) is {length} tokens; the model reads at most {self.encoder.context_length}",
                "INVALID_PROMPT",
            )
        return None

    def _tokenize(self, plan: _Plan, prompts: list[str], prefix: str | None) -> tuple[str, int] | None:
        """Records the ids of `prompts` (from the cache, else tokenizing those not seen in this call) and their
        prefix; returns the longest prompt and its length if it exceeds the context, recording nothing then."""
        found = {p: self.cache.get(p) for p in prompts if p not in plan.ids}
        fresh = [p for p, entry in found.items() if entry is None]
        fresh_ids = dict(zip(fresh, self.encoder.tokenizer.token_ids(fresh), strict=True)) if fresh else {}
        if fresh_ids:
            longest = max(fresh_ids, key=lambda p: len(fresh_ids[p]))
            if len(fresh_ids[longest]) > self.encoder.context_length:
                return longest, len(fresh_ids[longest])
        for prompt, entry in found.items():
            if entry is not None:
                plan.ids[prompt] = entry.ids
                plan.cached[prompt] = entry.embedding
            else:
                plan.ids[prompt] = tuple(fresh_ids[prompt])
            plan.prefixes[prompt] = prefix
        return None

    def _scores(
        self,
        task: Task,
        split: str,
        features: SplitFeatures,
        candidates: Candidates,
        plan: _Plan,
        encoded: torch.Tensor | None,
        per_class: bool,
    ) -> Scores:
        """Caches the newly encoded prompts, then counts each valid candidate's correct predictions."""
        embedding_of = dict(plan.cached)
        for prompt, embedding in zip(plan.missing, encoded if encoded is not None else (), strict=True):
            embedding_of[prompt] = embedding
            self.cache.put(prompt, plan.ids[prompt], embedding)
        names = task.class_names
        prompts_of: list[list[list[str]] | None] = [
            [[fill(t, c)] for c in names] if plan.problems[t] is None else None for t in candidates.templates
        ]
        prompts_of += [
            [[fill(t, c) for t in e] for c in names] if problem is None else None
            for e, problem in zip(candidates.ensembles, plan.ensemble_problems, strict=True)
        ]
        prompts_of += [
            [list(c) for c in s] if problem is None else None
            for s, problem in zip(candidates.class_prompt_sets, plan.set_problems, strict=True)
        ]
        problems = [
            *(plan.problems[t] for t in candidates.templates),
            *plan.ensemble_problems,
            *plan.set_problems,
        ]
        rows = {p: row for row, p in enumerate(embedding_of)}
        matrix = torch.stack(list(embedding_of.values())) if embedding_of else None
        valid = [prompts for prompts in prompts_of if prompts is not None]
        counts = iter(
            _count_correct([_class_embeddings(matrix, rows, plan.ids, prompts) for prompts in valid], features)
            if matrix is not None
            else []
        )
        class_total = tuple(torch.bincount(features.labels.cpu(), minlength=len(names)).tolist()) if per_class else ()
        scores = []
        for problem in problems:
            if problem is not None:
                scores.append(CandidateScore(error=problem, reason=problem.reason))
                continue
            correct, class_correct = next(counts)
            scores.append(
                CandidateScore(
                    correct, features.size, class_correct=class_correct if per_class else (), class_total=class_total
                )
            )
        metrics.TEMPLATES_SCORED.labels(task.task_id, split).inc(len(valid))
        metrics.TEMPLATES_REJECTED.labels(task.task_id).inc(len(problems) - len(valid))
        ensembles_start = len(candidates.templates)
        sets_start = ensembles_start + len(candidates.ensembles)
        return Scores(scores[:ensembles_start], scores[ensembles_start:sets_start], scores[sets_start:])


def _ensemble_problem(ensemble: Sequence[str], problems: dict[str, Problem | None]) -> Problem | None:
    if not ensemble:
        return Problem("ensemble has no templates", "EMPTY_ENSEMBLE")
    return next(
        (
            Problem(f"ensemble member {i} ({t!r}): {problems[t]}", "INVALID_MEMBER")
            for i, t in enumerate(ensemble)
            if problems[t]
        ),
        None,
    )


def _class_embeddings(
    matrix: torch.Tensor, rows: dict[str, int], ids: dict[str, TokenIds], prompts_of_class: list[list[str]]
) -> torch.Tensor:
    """[classes, dim]: per class, the renormalised mean of its distinct (by token ids) prompts' embeddings; a class
    with one distinct prompt gets that prompt's embedding as it is."""
    distinct = [_distinct_rows(prompts, rows, ids) for prompts in prompts_of_class]
    if all(len(class_rows) == 1 for class_rows in distinct):
        return matrix[[class_rows[0] for class_rows in distinct]]
    flat = [row for class_rows in distinct for row in class_rows]
    labels = torch.tensor([label for label, class_rows in enumerate(distinct) for _ in class_rows])
    sums = torch.zeros(len(distinct), matrix.shape[1], dtype=torch.float32, device=matrix.device)
    sums.index_add_(0, labels.to(matrix.device), matrix[flat].float())
    sizes = torch.tensor([len(class_rows) for class_rows in distinct], dtype=torch.float32, device=matrix.device)
    mean = sums / sizes[:, None]
    return torch.nn.functional.normalize(mean, dim=-1).to(matrix.dtype)


def _distinct_rows(prompts: list[str], rows: dict[str, int], ids: dict[str, TokenIds]) -> list[int]:
    """The embedding rows of `prompts`, one per distinct token ids (the first prompt with them)."""
    first: dict[TokenIds, int] = {}
    for prompt in prompts:
        first.setdefault(ids[prompt], rows[prompt])
    return list(first.values())


class Abandoned(Exception):
    """Work stopped because the call that wanted it was cancelled; nobody reads its result."""


async def _run_abandonable(executor: ThreadPoolExecutor, function: Callable[..., T], *args: object) -> T:
    """`function(*args, abandoned)` on one of the executor's threads; `abandoned` is set when the awaiting call is
    cancelled, so the thread can stop instead of finishing work nobody will read."""
    abandoned = threading.Event()
    try:
        return await _run_in(executor, function, *args, abandoned)
    except asyncio.CancelledError:
        abandoned.set()
        raise


async def _run_in(executor: ThreadPoolExecutor, function: Callable[..., T], *args: object) -> T:
    """`function(*args)` on one of the executor's threads, in the caller's context (its log fields)."""
    context = contextvars.copy_context()
    return await asyncio.get_running_loop().run_in_executor(executor, functools.partial(context.run, function, *args))


@torch.inference_mode()
def _count_correct(
    class_embeddings: list[torch.Tensor], features: SplitFeatures, image_chunk: int = 8192
) -> list[tuple[int, tuple[int, ...]]]:
    """Correct zero-shot predictions per candidate, in all and per class, in image chunks to bound memory."""
    counts = []
    for embeddings in class_embeddings:  # [classes, dim]
        per_class = torch.zeros(len(embeddings), dtype=torch.long)
        for start in range(0, features.size, image_chunk):
            labels = features.labels[start : start + image_chunk]
            predictions = (features.features[start : start + image_chunk] @ embeddings.T).argmax(dim=-1)
            per_class += torch.bincount(labels[predictions == labels], minlength=len(embeddings)).cpu()
        counts.append((int(per_class.sum()), tuple(per_class.tolist())))
    return counts
