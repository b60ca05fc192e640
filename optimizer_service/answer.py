"""The run's answer, computed once after any strategy: the selected template, the found ensemble, test accuracy.

Selection has one rule. The pool's rank (pool.rank: train accuracy, then the documented tie-break) orders the
run's distinct templates. Where the scorer offers a validation split (a few-shot sample disjoint from train,
which no strategy climbs on) and the run selects on it, the best `val_candidates` of that order are scored on val
and the answer is the one with the highest val accuracy, ties going to the better train rank. Without val, the
answer is the pool's best. `selected` is that rule as a pure function: the service, the CLI, the benchmark and
the demo all read the run's selection from it (through Run.selected), never re-deriving it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import grpc
import structlog

from optimizer_service.climb import Climb, scorer_refused
from optimizer_service.pool import Candidate
from optimizer_service.scorer_client import ScorerError
from optimizer_service.store import ClassPrompts
from promptclimb.scorer.v1 import scorer_pb2

log = structlog.get_logger(__name__)

ENSEMBLE_CANDIDATES = 16  # the best single templates greedy forward selection chooses among
ENSEMBLE_MEMBERS_PER_CALL = 128  # ensemble members per Score call, well under the scorer's default request limit (256)


@dataclass(frozen=True)
class Ensemble:
    templates: tuple[str, ...]
    accuracy: float


def selected(ranked: Sequence[Candidate], val: Mapping[int, float]) -> Candidate | None:
    """The run's selection among its distinct templates in pool rank order (Pool.best): the best val accuracy among
    those scored on val (ties: the better train rank), else the first."""
    on_val = [c for c in ranked if c.sequence in val]
    if not on_val:
        return ranked[0] if ranked else None
    return max(on_val, key=lambda c: val[c.sequence])  # max keeps the first of equals: the better train rank


def has_val(task: scorer_pb2.TaskInfo) -> bool:
    """Does the scorer offer a validation split for the task? (An older scorer does not.)"""
    return any(s.split == scorer_pb2.SPLIT_VAL and s.num_images > 0 for s in task.splits)


async def val_accuracies(climb: Climb) -> dict[int, float]:
    """Val accuracy of the run's best `val_candidates` templates by candidate sequence; none when the run does not
    select on val or the scorer has no val split."""
    settings = climb.settings
    if not settings.select_on_val or not has_val(climb.task):
        return {}
    best = climb.pool.best(settings.val_candidates)
    try:
        results = await climb.scorer.score(
            settings.task_id, [c.template for c in best], scorer_pb2.SPLIT_VAL, climb.task.model_digest
        )
    except ScorerError as err:
        raise scorer_refused(err) from None
    climb.counters.val_scored += len(best)
    return {c.sequence: r.accuracy for c, r in zip(best, results, strict=True) if not r.error}


async def ensemble(climb: Climb) -> Ensemble | None:
    """Greedy forward selection on the train split: from the best single template, add the one of the run's best
    templates that most raises the ensemble's accuracy, while one strictly does, up to ensemble_size members.

    None with ensemble_size 1, or when the scorer refuses ensembles (the run keeps its single best)."""
    best_singles = climb.pool.best(ENSEMBLE_CANDIDATES)
    if climb.settings.ensemble_size < 2 or not best_singles:
        return None
    ranked = [c.template for c in best_singles]
    chosen, accuracy = [ranked[0]], best_singles[0].accuracy
    while len(chosen) < climb.settings.ensemble_size and (others := [t for t in ranked if t not in chosen]):
        try:
            results = await score_ensembles(climb, [[*chosen, t] for t in others], scorer_pb2.SPLIT_TRAIN)
        except ScorerError as err:
            if err.budget_spent:
                raise scorer_refused(err) from None
            log.warning("ensemble_skipped", run_id=climb.run_id, reason=str(err))
            return None
        climb.counters.ensembles_scored += len(results)
        best = max(
            range(len(others)), key=lambda i: (not results[i].error, results[i].accuracy, -i)
        )  # ties: the better single
        if results[best].error or results[best].accuracy <= accuracy:
            break
        chosen.append(others[best])
        accuracy = results[best].accuracy
    return Ensemble(tuple(chosen), accuracy)


async def score_ensembles(
    climb: Climb, ensembles: list[list[str]], split: scorer_pb2.Split
) -> list[scorer_pb2.EnsembleScore]:
    """Scores the ensembles in as many calls as keep each under ENSEMBLE_MEMBERS_PER_CALL members."""
    per_call = max(1, ENSEMBLE_MEMBERS_PER_CALL // max(len(e) for e in ensembles))
    results = []
    for first in range(0, len(ensembles), per_call):
        results += await climb.scorer.score_ensembles(
            climb.settings.task_id, ensembles[first : first + per_call], split, climb.task.model_digest
        )
    return results


async def test_accuracies(
    climb: Climb, best: list[Candidate], ensemble: Ensemble | None
) -> tuple[dict[int, float], float | None]:
    """Test accuracy of the reported templates and the ensemble, if our scorer token has the test right; else none.

    Called only for a run whose owner has the optimizer's test right (runs.py)."""
    try:
        results = await climb.scorer.score(
            climb.settings.task_id, [c.template for c in best], scorer_pb2.SPLIT_TEST, climb.task.model_digest
        )
        tested = (
            (await score_ensembles(climb, [list(ensemble.templates)], scorer_pb2.SPLIT_TEST))[0] if ensemble else None
        )
    except ScorerError as err:
        skip_test(climb, err)
        return {}, None
    singles = {c.sequence: r.accuracy for c, r in zip(best, results, strict=True) if not r.error}
    return singles, tested.accuracy if tested is not None and not tested.error else None


async def with_test_accuracy(climb: Climb, found: ClassPrompts) -> ClassPrompts:
    """A per-class strategy's prompts with their test accuracy, if our scorer token has the test right; else as
    they are. Called only for a run whose owner has the optimizer's test right (runs.py)."""
    try:
        (result,) = await climb.scorer.score_class_prompt_sets(
            climb.settings.task_id, [found.prompts], scorer_pb2.SPLIT_TEST, climb.task.model_digest
        )
    except ScorerError as err:
        skip_test(climb, err)
        return found
    return found if result.error else replace(found, test_accuracy=result.accuracy)


def skip_test(climb: Climb, err: ScorerError) -> None:
    """A refused test-split call: a spent evaluation budget fails the run; anything else (our scorer token lacks the
    test right) leaves test accuracy out."""
    if err.budget_spent:
        raise scorer_refused(err) from None
    level = log.info if err.code == grpc.StatusCode.PERMISSION_DENIED else log.warning
    level("test_accuracy_skipped", run_id=climb.run_id, reason=str(err))
