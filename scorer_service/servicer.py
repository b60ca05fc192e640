"""The Scorer's RPC handlers: validation, auth, quota and status codes around TemplateScorer."""

from __future__ import annotations

import grpc
import structlog
from typing_extensions import override

from promptclimb.scorer.v1 import scorer_pb2, scorer_pb2_grpc
from promptclimb_common import errors
from promptclimb_common.auth import Authenticator
from promptclimb_common.errors import FailureTable, Reason, ServiceError, abort, invalid
from promptclimb_common.grpc_runtime import caller_label
from promptclimb_common.paging import PageError, decode_token, encode_token, page_size
from scorer_service import metrics
from scorer_service.batcher import QueueFullError
from scorer_service.datasets import TEST, TRAIN, VAL, Task
from scorer_service.features import SplitFeatures
from scorer_service.identity import ModelIdentity
from scorer_service.quota import BudgetExhaustedError, QuotaStore, QuotaStoreError
from scorer_service.request_bounds import ScoreBounds, score_request_problem
from scorer_service.scoring import Candidates, CandidateScore, TemplateScorer

log = structlog.get_logger(__name__)
Context = grpc.aio.ServicerContext

SERVICE_NAME = scorer_pb2.DESCRIPTOR.services_by_name["Scorer"].full_name
SPLIT_NAMES = {
    scorer_pb2.SPLIT_UNSPECIFIED: TRAIN,
    scorer_pb2.SPLIT_TRAIN: TRAIN,
    scorer_pb2.SPLIT_TEST: TEST,
    scorer_pb2.SPLIT_VAL: VAL,
}
SPLIT_ENUMS = {TRAIN: scorer_pb2.SPLIT_TRAIN, TEST: scorer_pb2.SPLIT_TEST, VAL: scorer_pb2.SPLIT_VAL}
QUEUE_RETRY_SECONDS = 1.0
TASKS_PAGE_SIZE, MAX_TASKS_PAGE_SIZE = 100, 1000
QUOTA_STORE_RETRY_SECONDS = 1.0


def _budget_spent(err: BudgetExhaustedError) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        Reason.EVALUATION_BUDGET_SPENT,
        f"{err}; ask the scorer's operator for more",
        quota_subject=f"token:{err.token}",
        metadata={"used": str(err.used), "budget": str(err.budget)},
    )


def _quota_store_failed(err: QuotaStoreError) -> ServiceError:
    log.error("quota_store_failed", reason=str(err))
    return ServiceError(
        grpc.StatusCode.UNAVAILABLE,
        Reason.STATE_UNAVAILABLE,
        "the scorer's quota store is unavailable; retry shortly",
        retry_after_s=QUOTA_STORE_RETRY_SECONDS,
    )


# The status and reason of every known failure (the proto lists them); promptclimb_common.errors.maps_failures.
FAILURES: FailureTable = {
    BudgetExhaustedError: _budget_spent,
    QuotaStoreError: _quota_store_failed,
    QueueFullError: lambda err: ServiceError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        Reason.QUEUE_FULL,
        f"server busy: {err}; retry in {QUEUE_RETRY_SECONDS:.0f} s",
        retry_after_s=QUEUE_RETRY_SECONDS,
    ),
    PageError: lambda err: invalid(err.field, str(err)),
}
maps_failures = errors.maps_failures(FAILURES)


class ScorerServicer(scorer_pb2_grpc.ScorerServicer):
    def __init__(
        self,
        tasks: dict[str, Task],
        features: dict[tuple[str, str], SplitFeatures],
        scorer: TemplateScorer,
        auth: Authenticator,
        quota: QuotaStore,
        bounds: ScoreBounds,
        model: ModelIdentity,
    ) -> None:
        self.model = model
        self.tasks = tasks
        self.features = features
        self.scorer = scorer
        self.auth = auth
        self.quota = quota
        self.bounds = bounds

    @override
    @maps_failures
    async def ListTasks(self, request: scorer_pb2.ListTasksRequest, context: Context) -> scorer_pb2.ListTasksResponse:
        await self.auth.require(context, "score")
        size = page_size(request.page_size, TASKS_PAGE_SIZE, MAX_TASKS_PAGE_SIZE)
        after = decode_token(request.page_token, (str,))
        ids = [task_id for task_id in sorted(self.tasks) if after is None or task_id > after[0]]
        page = ids[:size]
        return scorer_pb2.ListTasksResponse(
            tasks=[self._task_info(self.tasks[task_id]) for task_id in page],
            next_page_token=encode_token([page[-1]]) if len(ids) > size else "",
        )

    @override
    @maps_failures
    async def GetTask(self, request: scorer_pb2.GetTaskRequest, context: Context) -> scorer_pb2.TaskInfo:
        await self.auth.require(context, "score")
        return self._task_info(await self._task(request.task_id, context))

    async def _task(self, task_id: str, context: Context) -> Task:
        task = self.tasks.get(task_id)
        if task is None:
            known = ", ".join(sorted(self.tasks)) or "none"
            await abort(
                context,
                ServiceError(
                    grpc.StatusCode.NOT_FOUND,
                    Reason.TASK_NOT_FOUND,
                    f"unknown task_id {task_id!r}; this server has: {known}",
                ),
            )
        return task

    def _task_info(self, task: Task) -> scorer_pb2.TaskInfo:
        return scorer_pb2.TaskInfo(
            task_id=task.task_id,
            class_names=task.class_names,
            num_classes=len(task.class_names),
            splits=[
                scorer_pb2.SplitInfo(split=SPLIT_ENUMS[name], num_images=len(images))
                for name, images in task.splits.items()
            ],
            model_name=self.scorer.encoder.name,
            shots=task.shots,
            val_shots=task.val_shots,
            seed=task.seed,
            context_length=self.scorer.encoder.context_length,
            model_digest=self.model.digest,
            model_version=self.model.version,
        )

    @override
    @maps_failures
    async def Score(self, request: scorer_pb2.ScoreRequest, context: Context) -> scorer_pb2.ScoreResponse:
        test = request.split == scorer_pb2.SPLIT_TEST
        principal = await self.auth.require(
            context, "test" if test else "score", Reason.TEST_SPLIT_FORBIDDEN if test else Reason.RIGHT_MISSING
        )
        split = SPLIT_NAMES.get(request.split)
        if split is None:
            await abort(
                context, invalid("split", f"unknown split {request.split}; use SPLIT_TRAIN, SPLIT_VAL or SPLIT_TEST")
            )
        task = await self._task(request.task_id, context)
        if split not in task.splits:
            await abort(
                context,
                invalid("split", f"task {task.task_id!r} has no {split} split; its server runs without --val-shots"),
            )
        if request.model_digest and request.model_digest != self.model.digest:
            await abort(
                context,
                ServiceError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    Reason.MODEL_MISMATCH,
                    f"model_digest {request.model_digest} was pinned, but this server scores with model_digest "
                    f"{self.model.digest} (version {self.model.version!r}); nothing was scored: send the request to a "
                    "server with the pinned model, or pin the new digest to start over with it",
                    metadata={"pinned": request.model_digest, "served": self.model.digest},
                ),
            )
        if request.per_class_accuracy and split == TEST:
            await abort(
                context,
                invalid(
                    "per_class_accuracy",
                    "per-class accuracy is given on the train and val splits, never on test: ask without "
                    "per_class_accuracy, or on SPLIT_TRAIN or SPLIT_VAL",
                ),
            )
        problem = score_request_problem(request, len(task.class_names), self.bounds)
        if problem is not None:
            await abort(context, problem)
        count = len(request.templates) + len(request.ensembles) + len(request.class_prompt_sets)
        structlog.contextvars.bind_contextvars(task=task.task_id, split=split, templates=count)
        metrics.TOKEN_REQUESTS.labels(caller_label(principal.name), split).inc()
        await self.quota.charge(principal.name, count, principal.evaluation_budget)
        try:
            scores = await self.scorer.score_candidates(
                task,
                split,
                self.features[task.task_id, split],
                Candidates(
                    list(request.templates),
                    [list(e.templates) for e in request.ensembles],
                    [[list(c.prompts) for c in s.classes] for s in request.class_prompt_sets],
                ),
                request.per_class_accuracy,
            )
        except BaseException:  # a full queue (maps_failures answers it), a cancelled call: nothing was scored
            await self._refund(principal.name, count)
            raise
        invalid_count = sum(1 for s in [*scores.templates, *scores.ensembles, *scores.class_prompt_sets] if s.error)
        await self._refund(principal.name, invalid_count)  # an invalid template tells nothing: not charged
        metrics.TOKEN_EVALUATIONS.labels(caller_label(principal.name)).inc(count - invalid_count)
        log.info("scored", invalid=invalid_count)
        return scorer_pb2.ScoreResponse(
            split=SPLIT_ENUMS[split],
            model_digest=self.model.digest,
            model_version=self.model.version,
            results=[
                scorer_pb2.TemplateScore(template=t, **_result_fields(s))
                for t, s in zip(request.templates, scores.templates, strict=True)
            ],
            ensemble_results=[
                scorer_pb2.EnsembleScore(templates=e.templates, **_result_fields(s))
                for e, s in zip(request.ensembles, scores.ensembles, strict=True)
            ],
            class_prompt_set_results=[
                scorer_pb2.ClassPromptSetScore(**_result_fields(s)) for s in scores.class_prompt_sets
            ],
        )

    async def _refund(self, token: str, count: int) -> None:
        try:
            await self.quota.refund(token, count)
        except QuotaStoreError as err:  # the caller keeps the charge; never fail the call for it
            log.error("quota_refund_failed", token=token, count=count, reason=str(err))


def _result_fields(score: CandidateScore) -> dict:
    """The fields every kind of candidate result shares; the TemplateErrorReason by its value's name (protobuf takes
    enum values by name)."""
    return {
        "accuracy": score.accuracy,
        "correct": score.correct,
        "total": score.total,
        "error": score.error,
        "error_reason": f"TEMPLATE_ERROR_REASON_{score.reason or 'UNSPECIFIED'}",
        "class_accuracies": [
            scorer_pb2.ClassAccuracy(accuracy=correct / total if total else 0.0, correct=correct, total=total)
            for correct, total in zip(score.class_correct, score.class_total, strict=True)
        ],
    }
