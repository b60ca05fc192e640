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
from scorer_service.scoring import TemplateScorer

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
        max_templates_per_request: int,
        model: ModelIdentity,
        max_queued_prompts: int,
    ) -> None:
        self.model = model
        self.tasks = tasks
        self.features = features
        self.scorer = scorer
        self.auth = auth
        self.quota = quota
        self.max_templates_per_request = max_templates_per_request
        self.max_queued_prompts = max_queued_prompts

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
        await self._check_size(context, request, task)
        count = len(request.templates) + len(request.ensembles)
        structlog.contextvars.bind_contextvars(task=task.task_id, split=split, templates=count)
        metrics.TOKEN_REQUESTS.labels(caller_label(principal.name), split).inc()
        await self.quota.charge(principal.name, count, principal.evaluation_budget)
        try:
            scores, ensemble_scores = await self.scorer.score_candidates(
                task,
                split,
                self.features[task.task_id, split],
                list(request.templates),
                [list(e.templates) for e in request.ensembles],
            )
        except BaseException:  # a full queue (maps_failures answers it), a cancelled call: nothing was scored
            await self._refund(principal.name, count)
            raise
        invalid_count = sum(1 for s in [*scores, *ensemble_scores] if s.error)
        await self._refund(principal.name, invalid_count)  # an invalid template tells nothing: not charged
        metrics.TOKEN_EVALUATIONS.labels(caller_label(principal.name)).inc(count - invalid_count)
        log.info("scored", invalid=invalid_count)
        return scorer_pb2.ScoreResponse(
            split=SPLIT_ENUMS[split],
            model_digest=self.model.digest,
            model_version=self.model.version,
            results=[
                scorer_pb2.TemplateScore(
                    template=s.template,
                    accuracy=s.accuracy,
                    correct=s.correct,
                    total=s.total,
                    error=s.error,
                    error_reason=_reason(s.reason),
                )
                for s in scores
            ],
            ensemble_results=[
                scorer_pb2.EnsembleScore(
                    templates=s.templates,
                    accuracy=s.accuracy,
                    correct=s.correct,
                    total=s.total,
                    error=s.error,
                    error_reason=_reason(s.reason),
                )
                for s in ensemble_scores
            ],
        )

    async def _check_size(self, context: Context, request: scorer_pb2.ScoreRequest, task: Task) -> None:
        """Refuses, as INVALID_ARGUMENT, what could never be served: retrying it would not help.

        The request limit bounds one call's encoding work, so it counts every ensemble member; the budget bounds
        what a token can learn, one accuracy per template or ensemble."""
        if not request.templates and not request.ensembles:
            await abort(context, invalid("templates", "no templates or ensembles to score: send at least one"))
        members = [*request.templates, *(t for e in request.ensembles for t in e.templates)]
        if len(members) > self.max_templates_per_request:
            await abort(
                context,
                invalid(
                    "templates",
                    f"{len(members)} templates in one request (ensemble members included); the limit is "
                    f"{self.max_templates_per_request}: split the request",
                    Reason.REQUEST_TOO_LARGE,
                    limit=str(self.max_templates_per_request),
                ),
            )
        prompts = len(set(members)) * len(task.class_names)
        if prompts > self.max_queued_prompts:
            await abort(
                context,
                invalid(
                    "templates",
                    f"{prompts} class prompts in one request ({len(set(members))} distinct templates x "
                    f"{len(task.class_names)} classes); the encoder queue holds at most {self.max_queued_prompts}: "
                    "split the request",
                    Reason.REQUEST_TOO_LARGE,
                    limit=str(self.max_queued_prompts),
                ),
            )

    async def _refund(self, token: str, count: int) -> None:
        try:
            await self.quota.refund(token, count)
        except QuotaStoreError as err:  # the caller keeps the charge; never fail the call for it
            log.error("quota_refund_failed", token=token, count=count, reason=str(err))


def _reason(name: str) -> str:
    """The TemplateErrorReason value's name (protobuf takes enum values by name)."""
    return f"TEMPLATE_ERROR_REASON_{name or 'UNSPECIFIED'}"
