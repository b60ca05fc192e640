"""The pool of scored templates: what each restart's climb knows so far.

Each restart climbs on its own view: its own initial sample and what its own
LLM proposed. The run as a whole scores every template at most once: a
template one restart scored enters another restart's view from the run's
memory, with the same accuracy and no second Score call. Templates the scorer
rejected are remembered too, so they are never sent again.

Ties in accuracy are broken by a rule that does not depend on timing: the
template the restart met first wins, i.e. its initial sample in drawn order,
then by (reset, iteration, place in the reply). Across restarts (the run's
best) the lower restart then wins. So a restart's rankings, and therefore its
meta-prompts, are the same in every run with the same seed and LLM replies,
which is also what a resumed run relies on.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

INITIAL = -1  # reset/iteration of initial-pool candidates (and restart of an initial pool shared by every restart)


def template_key(template: str) -> str:
    """Two templates are the same if they differ only in case and spacing (CLIP lowercases and splits on spaces)."""
    return " ".join(template.split()).casefold()


@dataclass(frozen=True)
class Candidate:
    template: str
    accuracy: float
    restart: int  # INITIAL: an initial pool every restart shares (the LLM-written one)
    reset: int
    iteration: int
    sequence: int  # order of admission within the run, from 0 (identity; it depends on timing, rankings never use it)
    llm_call: str = ""  # the LLM call that proposed it (empty for built-in or given seeds)
    position: int = 0  # place within its step: in the drawn sample, or among the reply's kept lines
    reused: bool = False  # taken from the run's memory: another restart had scored it

    @property
    def initial(self) -> bool:
        return self.iteration == INITIAL

    @property
    def met(self) -> tuple[int, int, int]:
        """When its restart met it; earlier wins a tie."""
        return self.reset, self.iteration, self.position


def rank(candidate: Candidate) -> tuple:
    """Sort key, best first: accuracy, then the documented tie-break."""
    return -candidate.accuracy, candidate.met, candidate.restart


class Pool:
    """Every admission of the run, viewed per restart, and the run's memory of scores and rejections."""

    def __init__(self, candidates: Iterable[Candidate] = (), rejected: Iterable[tuple[str, str]] = ()) -> None:
        self._order: list[Candidate] = []
        self._views: dict[int, dict[str, Candidate]] = {}
        self._accuracy: dict[str, float] = {}
        self._rejected: dict[str, str] = {}
        for candidate in candidates:
            self.add(candidate)
        for template, reason in rejected:
            self.reject(template, reason)

    def __len__(self) -> int:
        return len(self._order)

    def __iter__(self) -> Iterator[Candidate]:
        return iter(self._order)

    @property
    def next_sequence(self) -> int:
        return len(self._order)

    def add(self, candidate: Candidate) -> None:
        key = template_key(candidate.template)
        view = self._views.setdefault(candidate.restart, {})
        if key in view:
            raise ValueError(f"template already in restart {candidate.restart}'s pool: {candidate.template!r}")
        view[key] = candidate
        self._order.append(candidate)
        self._accuracy.setdefault(key, candidate.accuracy)

    def holds(self, template: str, restart: int) -> bool:
        """Is the template in this restart's view?"""
        key = template_key(template)
        return key in self._views.get(restart, {}) or key in self._views.get(INITIAL, {})

    def accuracy(self, template: str) -> float | None:
        """Its train accuracy if any restart of the run scored it."""
        return self._accuracy.get(template_key(template))

    def remember(self, template: str, accuracy: float) -> None:
        """A score learnt before any restart admits the template (it is being admitted now)."""
        self._accuracy.setdefault(template_key(template), accuracy)

    def reject(self, template: str, reason: str) -> None:
        self._rejected.setdefault(template_key(template), reason)

    def rejection(self, template: str) -> str | None:
        """Why the scorer refused it, if it did."""
        return self._rejected.get(template_key(template))

    def split_new(self, templates: Iterable[str], restart: int) -> tuple[list[str], list[str]]:
        """(templates new to this restart, repeats of its own or of earlier ones in the list), order kept."""
        new: list[str] = []
        duplicates: list[str] = []
        seen: set[str] = set()
        for template in templates:
            key = template_key(template)
            (duplicates if key in seen or self.holds(template, restart) else new).append(template)
            seen.add(key)
        return new, duplicates

    def view(self, restart: int) -> list[Candidate]:
        """What one restart climbs on: a shared initial pool (if any), its own sample and its own finds."""
        return [c for c in self._order if c.restart in (INITIAL, restart)]

    def top(self, k: int, restart: int) -> list[Candidate]:
        """The k best of the restart's view, best first."""
        return sorted(self.view(restart), key=rank)[:k]

    def bottom(self, k: int, restart: int) -> list[Candidate]:
        """The k worst of the restart's view, worst first, never overlapping the top k."""
        ranked = sorted(self.view(restart), key=rank)
        return ranked[k:][::-1][:k]

    def best(self, n: int = 1) -> list[Candidate]:
        """The n best distinct templates of the whole run, best first (each as its restart met it first)."""
        return distinct(sorted(self._order, key=rank))[:n]

    def mean_accuracy(self) -> float:
        """Mean train accuracy over the run's distinct templates."""
        return sum(self._accuracy.values()) / len(self._accuracy) if self._accuracy else 0.0


def distinct(candidates: Iterable[Candidate]) -> list[Candidate]:
    """The first candidate of each template, order kept."""
    seen: set[str] = set()
    kept = []
    for candidate in candidates:
        key = template_key(candidate.template)
        if key not in seen:
            seen.add(key)
            kept.append(candidate)
    return kept
