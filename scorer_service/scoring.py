"""Template accuracy: fill, encode (cache first), classify, count.

Only counts leave this module. A template's class prompts are embedded (from
the LRU cache where possible, otherwise through the shared batcher), compared
with the split's image features, and the argmax over classes is checked
against the labels. An ensemble (the CLIP authors' prompt ensembling) is
classified against, per class, the renormalised mean of its distinct members'
normalised prompt embeddings (a repeated member is not a weight: weights would
let a caller interpolate between templates and probe single images); its
members go through the same cache and batch.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import torch

from promptclimb_common.templates import PLACEHOLDER, Problem, fill, template_problem
from scorer_service import metrics
from scorer_service.batcher import TextEncodeBatcher
from scorer_service.datasets import Task
from scorer_service.features import SplitFeatures
from scorer_service.model import ClipEncoder

T = TypeVar("T")


class TextEmbeddingCache:
    """LRU cache of prompt embeddings, bounded in bytes; safe to share between threads.

    An entry costs its embedding, its prompt, and the bookkeeping of a tensor and
    a dict entry (measured at 150-650 bytes), which dominates for small models.
    """

    ENTRY_OVERHEAD_BYTES = 512

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, prompt: str) -> torch.Tensor | None:
        with self._lock:
            embedding = self._entries.get(prompt)
            if embedding is not None:
                self._entries.move_to_end(prompt)
            return embedding

    def put(self, prompt: str, embedding: torch.Tensor) -> None:
        """Keeps a copy: `embedding` is usually a row of a whole encoder batch, which
        a view would keep alive, far beyond what the bound counts."""
        size = self._size(prompt, embedding)
        if size > self.max_bytes:
            return
        copy = embedding.clone()
        with self._lock:
            if prompt in self._entries:
                return
            self._entries[prompt] = copy
            self.bytes += size
            while self.bytes > self.max_bytes:
                old_prompt, old = self._entries.popitem(last=False)
                self.bytes -= self._size(old_prompt, old)
            metrics.TEXT_CACHE_BYTES.set(self.bytes)
            metrics.TEXT_CACHE_ENTRIES.set(len(self._entries))

    def _size(self, prompt: str, embedding: torch.Tensor) -> int:
        return embedding.numel() * embedding.element_size() + len(prompt.encode()) + self.ENTRY_OVERHEAD_BYTES


class _Accuracy:
    correct: int
    total: int
    error: str

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0


@dataclass(frozen=True)
class TemplateScore(_Accuracy):
    template: str
    correct: int = 0
    total: int = 0
    error: str = ""
    reason: str = ""  # the error's TemplateErrorReason name without its prefix


@dataclass(frozen=True)
class EnsembleScore(_Accuracy):
    templates: tuple[str, ...]
    correct: int = 0
    total: int = 0
    error: str = ""
    reason: str = ""


@dataclass(frozen=True)
class _Plan:
    """A call's templates filled and checked, and what the cache already holds of their prompts."""

    prompts_of: dict[str, list[str]]  # each distinct template (ensemble members too): its class prompts
    problems: dict[str, Problem | None]
    ensemble_problems: list[Problem | None]
    cached: dict[str, torch.Tensor]  # prompt: embedding, for the valid templates' prompts in the cache
    missing: dict[str, str]  # prompt: its template's text before the class name, for those to encode


class TemplateScorer:
    """Scores templates on a task split; owns the text cache and the validity rules.

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
        self, task: Task, split: str, features: SplitFeatures, templates: list[str], ensembles: Sequence[Sequence[str]]
    ) -> tuple[list[TemplateScore], list[EnsembleScore]]:
        """Scores templates and ensembles in one encoder pass; results in request order, invalid ones with `error`."""
        plan = await _run_abandonable(self._prepare, self._plan, task, templates, ensembles)
        missing = list(plan.missing)
        encoded = await self.batcher.encode(missing, list(plan.missing.values())) if missing else None
        return await _run_in(self._accuracy, self._scores, task, split, features, templates, ensembles, plan, encoded)

    def _plan(
        self, task: Task, templates: list[str], ensembles: Sequence[Sequence[str]], abandoned: threading.Event
    ) -> _Plan:
        """Fills and checks every template (tokenizing the prompts the cache lacks) and looks its prompts up;
        stops (Abandoned) at the next template once `abandoned` is set."""
        members = dict.fromkeys([*templates, *(t for ensemble in ensembles for t in ensemble)])
        prompts_of = {t: [fill(t, c) for c in task.class_names] for t in members}
        problems: dict[str, Problem | None] = {}
        for t, prompts in prompts_of.items():
            if abandoned.is_set():
                metrics.ABANDONED_PROMPTS.inc(len(task.class_names) * (len(prompts_of) - len(problems)))
                raise Abandoned(f"stopped after {len(problems)} of {len(prompts_of)} templates: the call was cancelled")
            problems[t] = self._problem(t, prompts)
        ensemble_problems = [self._ensemble_problem(ensemble, problems) for ensemble in ensembles]
        prefix_of = {p: t.split(PLACEHOLDER, 1)[0] for t in prompts_of if problems[t] is None for p in prompts_of[t]}
        found = {p: self.cache.get(p) for p in prefix_of}
        cached = {p: embedding for p, embedding in found.items() if embedding is not None}
        metrics.TEXT_CACHE_HITS.inc(len(cached))
        metrics.TEXT_CACHE_MISSES.inc(len(found) - len(cached))
        missing = {p: prefix for p, prefix in prefix_of.items() if p not in cached}
        return _Plan(prompts_of, problems, ensemble_problems, cached, missing)

    def _problem(self, template: str, prompts: list[str]) -> Problem | None:
        problem = template_problem(template, self.max_template_bytes)
        if problem:
            return problem
        unseen = [p for p in prompts if self.cache.get(p) is None]
        if unseen:
            lengths = self.encoder.tokenizer.lengths(unseen)
            longest = max(range(len(unseen)), key=lengths.__getitem__)
            if lengths[longest] > self.encoder.context_length:
                return Problem(
                    f"template fills to {lengths[longest]} tokens (for {unseen[longest]!r}); "
                    f"the model reads at most {self.encoder.context_length}",
                    "EXCEEDS_CONTEXT",
                )
        return None

    @staticmethod
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

    def _scores(
        self,
        task: Task,
        split: str,
        features: SplitFeatures,
        templates: list[str],
        ensembles: Sequence[Sequence[str]],
        plan: _Plan,
        encoded: torch.Tensor | None,
    ) -> tuple[list[TemplateScore], list[EnsembleScore]]:
        """Caches the newly encoded prompts, then counts each valid template's and ensemble's correct predictions."""
        embedding_of = dict(plan.cached)
        for prompt, embedding in zip(plan.missing, encoded if encoded is not None else (), strict=True):
            embedding_of[prompt] = embedding
            self.cache.put(prompt, embedding)
        problems = plan.problems
        class_embeddings = {
            t: torch.stack([embedding_of[p] for p in prompts])
            for t, prompts in plan.prompts_of.items()
            if problems[t] is None
        }
        scored_templates = [t for t in dict.fromkeys(templates) if problems[t] is None]
        scored_ensembles = [e for e, problem in zip(ensembles, plan.ensemble_problems, strict=True) if problem is None]
        correct_of = _count_correct(
            [class_embeddings[t] for t in scored_templates]
            + [_ensemble_embeddings([class_embeddings[t] for t in dict.fromkeys(e)]) for e in scored_ensembles],
            features,
        )
        correct = dict(zip(scored_templates, correct_of[: len(scored_templates)], strict=True))
        ensemble_correct = iter(correct_of[len(scored_templates) :])
        metrics.TEMPLATES_SCORED.labels(task.task_id, split).inc(len(scored_templates) + len(scored_ensembles))
        metrics.TEMPLATES_REJECTED.labels(task.task_id).inc(
            len(dict.fromkeys(templates)) - len(scored_templates) + len(ensembles) - len(scored_ensembles)
        )
        template_scores = [
            TemplateScore(t, correct[t], features.size)
            if (problem := problems[t]) is None
            else TemplateScore(t, error=problem, reason=problem.reason)
            for t in templates
        ]
        ensemble_scores = [
            EnsembleScore(tuple(e), next(ensemble_correct), features.size)
            if problem is None
            else EnsembleScore(tuple(e), error=problem, reason=problem.reason)
            for e, problem in zip(ensembles, plan.ensemble_problems, strict=True)
        ]
        return template_scores, ensemble_scores


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
def _count_correct(class_embeddings: list[torch.Tensor], features: SplitFeatures, image_chunk: int = 8192) -> list[int]:
    """Correct zero-shot predictions per template, in image chunks to bound memory."""
    counts = []
    for embeddings in class_embeddings:  # [classes, dim]
        correct = 0
        for start in range(0, features.size, image_chunk):
            logits = features.features[start : start + image_chunk] @ embeddings.T
            correct += int((logits.argmax(dim=-1) == features.labels[start : start + image_chunk]).sum())
        counts.append(correct)
    return counts


def _ensemble_embeddings(member_embeddings: list[torch.Tensor]) -> torch.Tensor:
    """Per class, the renormalised mean of the members' normalised embeddings ([classes, dim])."""
    mean = torch.stack(member_embeddings).float().mean(dim=0)
    return torch.nn.functional.normalize(mean, dim=-1).to(member_embeddings[0].dtype)
