"""The bounds of one Score call: every list and nested list is counted before any work, empty entries included.

A request is work in proportion to what it lists, and an empty entry is still
an entry: 2,000,000 empty ensembles in a 4 MB message once cost 24 s of server
work and 3 GiB, unbounded and uncharged. So each list is bounded by a server
flag (ScorerConfig), and the counts are taken in an order where every loop runs
over a list already bounded. A request over a bound could never be served:
it is refused as INVALID_ARGUMENT with REQUEST_TOO_LARGE, the list's field
path and the `limit`, and nothing is charged.
"""

from __future__ import annotations

from dataclasses import dataclass

from promptclimb.scorer.v1 import scorer_pb2
from promptclimb_common.errors import Reason, ServiceError, invalid


@dataclass(frozen=True)
class ScoreBounds:
    """The per-call bounds, from the scorer's flags of the same names."""

    max_candidates_per_request: int
    max_templates_per_request: int
    max_prompts_per_class: int
    max_prompts_per_candidate: int
    max_prompts_per_request: int
    max_queued_prompts: int


def too_large(field: str, message: str, limit: int) -> ServiceError:
    return invalid(
        field, f"{message}; the limit is {limit}: split the request", Reason.REQUEST_TOO_LARGE, limit=str(limit)
    )


def score_request_problem(
    request: scorer_pb2.ScoreRequest, num_classes: int, bounds: ScoreBounds
) -> ServiceError | None:
    """Why the request cannot be served, or None; reads every list through a bound already checked."""
    lists = {
        "templates": len(request.templates),
        "ensembles": len(request.ensembles),
        "class_prompt_sets": len(request.class_prompt_sets),
    }
    candidates = sum(lists.values())
    if not candidates:
        return invalid("templates", "no templates, ensembles or class prompt sets to score: send at least one")
    if candidates > bounds.max_candidates_per_request:
        return too_large(
            max(lists, key=lists.__getitem__),
            f"{candidates} candidates in one request (templates, ensembles and class prompt sets, empty ones included)",
            bounds.max_candidates_per_request,
        )
    members = len(request.templates) + sum(len(e.templates) for e in request.ensembles)
    if members > bounds.max_templates_per_request:
        return too_large(
            "templates",
            f"{members} templates in one request (ensemble members included)",
            bounds.max_templates_per_request,
        )
    class_prompts = 0
    for i, prompt_set in enumerate(request.class_prompt_sets):
        if len(prompt_set.classes) != num_classes:
            return invalid(
                f"class_prompt_sets[{i}].classes",
                f"class prompt set {i} has {len(prompt_set.classes)} classes; the task has {num_classes}: send one "
                "list of prompts per class, in the task's class_names order",
            )
        in_set = 0
        for j, prompts in enumerate(prompt_set.classes):
            if len(prompts.prompts) > bounds.max_prompts_per_class:
                return too_large(
                    f"class_prompt_sets[{i}].classes[{j}].prompts",
                    f"class {j} of class prompt set {i} has {len(prompts.prompts)} prompts",
                    bounds.max_prompts_per_class,
                )
            in_set += len(prompts.prompts)
        if in_set > bounds.max_prompts_per_candidate:
            return too_large(
                f"class_prompt_sets[{i}]",
                f"class prompt set {i} has {in_set} prompts",
                bounds.max_prompts_per_candidate,
            )
        class_prompts += in_set
    if class_prompts > bounds.max_prompts_per_request:
        return too_large(
            "class_prompt_sets",
            f"{class_prompts} prompts in the request's class prompt sets",
            bounds.max_prompts_per_request,
        )
    distinct_templates = len({*request.templates, *(t for e in request.ensembles for t in e.templates)})
    to_encode = distinct_templates * num_classes + class_prompts
    if to_encode > bounds.max_queued_prompts:
        return invalid(
            "templates",
            f"{to_encode} class prompts to encode in one request ({distinct_templates} distinct templates x "
            f"{num_classes} classes + {class_prompts} prompts of class prompt sets); the encoder queue holds at most "
            f"{bounds.max_queued_prompts}: split the request",
            Reason.REQUEST_TOO_LARGE,
            limit=str(bounds.max_queued_prompts),
        )
    return None
