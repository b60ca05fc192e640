"""The pool of scored templates: what the climb knows so far.

Every template is scored at most once per run; a candidate whose key matches a
scored one is a duplicate. Each restart climbs on its own view of the pool:
the shared initial pool plus what that restart found. Ties in accuracy go to
the earlier candidate, so rankings are deterministic, which a resumed run
relies on to rebuild the same meta-prompts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

INITIAL = -1  # restart/reset/iteration of the initial pool's candidates


def template_key(template: str) -> str:
    """Two templates are the same if they differ only in case and spacing (CLIP lowercases and splits on spaces)."""
    return " ".join(template.split()).casefold()


@dataclass(frozen=True)
class Candidate:
    template: str
    accuracy: float
    restart: int
    reset: int
    iteration: int
    sequence: int  # order of scoring within the run, from 0
    llm_call: str = ""  # the LLM call that proposed it (empty for built-in or given seeds)

    @property
    def initial(self) -> bool:
        return self.restart == INITIAL


class Pool:
    def __init__(self, candidates: Iterable[Candidate] = ()) -> None:
        self._by_key: dict[str, Candidate] = {}
        self._order: list[Candidate] = []
        for candidate in candidates:
            self.add(candidate)

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, template: str) -> bool:
        return template_key(template) in self._by_key

    def __iter__(self):
        return iter(self._order)

    @property
    def next_sequence(self) -> int:
        return len(self._order)

    def add(self, candidate: Candidate) -> None:
        key = template_key(candidate.template)
        if key in self._by_key:
            raise ValueError(f"template already in the pool: {candidate.template!r}")
        self._by_key[key] = candidate
        self._order.append(candidate)

    def split_new(self, templates: Iterable[str]) -> tuple[list[str], list[str]]:
        """(new templates, duplicates of scored ones or of earlier ones in the list), order kept."""
        new, duplicates, seen = [], [], set(self._by_key)
        for template in templates:
            key = template_key(template)
            (duplicates if key in seen else new).append(template)
            seen.add(key)
        return new, duplicates

    def view(self, restart: int) -> list[Candidate]:
        """What one restart climbs on: the initial pool and its own finds."""
        return [c for c in self._order if c.initial or c.restart == restart]

    def top(self, k: int, restart: int) -> list[Candidate]:
        """The k best of the restart's view, best first."""
        return sorted(self.view(restart), key=lambda c: (-c.accuracy, c.sequence))[:k]

    def bottom(self, k: int, restart: int) -> list[Candidate]:
        """The k worst of the restart's view, worst first, never overlapping the top k."""
        view = self.view(restart)
        good = {c.sequence for c in self.top(k, restart)}
        worst_first = sorted(view, key=lambda c: (c.accuracy, -c.sequence))
        return [c for c in worst_first if c.sequence not in good][:k]

    def best(self, n: int = 1) -> list[Candidate]:
        """The n best of the whole run, best first."""
        return sorted(self._order, key=lambda c: (-c.accuracy, c.sequence))[:n]

    def mean_accuracy(self) -> float:
        return sum(c.accuracy for c in self._order) / len(self._order) if self._order else 0.0
