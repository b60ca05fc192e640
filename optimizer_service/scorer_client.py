"""gRPC client of the scorer: the only way the optimizer learns how good a template is.

A scorer can restart under a run (a new pod, a rolled deployment), so calls
that fail for passing reasons are retried until the grace period ends: those
the scorer marks retryable with RetryInfo (a full queue, a rate limit) after
the delay it names, and transport failures (UNAVAILABLE or DEADLINE_EXCEEDED
without details) with backoff. Everything else (unknown task, bad token, no
right, a spent evaluation budget, a request too large) surfaces at once as
ScorerError with the scorer's ErrorInfo reason (promptclimb_common/errors.py).
A run pins the scorer's model digest: a scorer that serves another model
refuses the call (FAILED_PRECONDITION, MODEL_MISMATCH), and that surfaces as
ModelChanged, so one run never mixes accuracies of two models.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TypeVar

import grpc
import structlog
from google.protobuf.message import Message
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_delay, wait_exponential_jitter

from optimizer_service import metrics
from optimizer_service.config import ScorerSettings
from promptclimb.scorer.v1 import scorer_pb2, scorer_pb2_grpc
from promptclimb_common.channels import ClientTls, bearer_metadata, open_channel
from promptclimb_common.errors import ErrorDetails, Reason, details_of

log = structlog.get_logger(__name__)
_Request = TypeVar("_Request", bound=Message)
_Reply = TypeVar("_Reply", bound=Message)
_Result = TypeVar("_Result", bound=Message)


class ScorerError(Exception):
    """The scorer refused the request; retrying will not help.

    `code` is its gRPC status, `reason` its ErrorInfo reason."""

    def __init__(self, code: grpc.StatusCode, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.code, self.reason = code, reason

    @property
    def budget_spent(self) -> bool:
        return self.reason == Reason.EVALUATION_BUDGET_SPENT


class ScorerUnavailable(Exception):
    """The scorer stayed unreachable past the grace period."""


class ModelChanged(Exception):
    """The scorer now serves another model than the pinned digest; the message names both."""


def _details(err: BaseException | None) -> ErrorDetails | None:
    return details_of(err) if isinstance(err, grpc.aio.AioRpcError) else None


def _retryable(err: BaseException) -> bool:
    details = _details(err)
    return details is not None and details.retryable


class ScorerClient:
    def __init__(
        self, settings: ScorerSettings, *, backoff_initial_s: float = 0.2, backoff_max_s: float = 10.0
    ) -> None:
        self.settings = settings
        tls = ClientTls(settings.tls_ca, settings.tls_cert, settings.tls_key) if settings.tls else None
        self._channel = open_channel(settings.address, tls)
        self._stub = scorer_pb2_grpc.ScorerStub(self._channel)
        self._metadata = bearer_metadata(settings.token)
        self._backoff = wait_exponential_jitter(
            multiplier=backoff_initial_s, max=backoff_max_s, jitter=backoff_initial_s
        )
        self._backoff_max_s = backoff_max_s

    async def close(self) -> None:
        await self._channel.close()

    def _wait(self, state: RetryCallState) -> float:
        """The scorer's RetryInfo delay where it gave one (within the longest backoff), else exponential backoff."""
        details = _details(state.outcome.exception() if state.outcome else None)
        hint = details.retry_after_s if details else None
        return min(hint, self._backoff_max_s) if hint is not None else self._backoff(state)

    async def _call(
        self, what: str, method: grpc.aio.UnaryUnaryMultiCallable[_Request, _Reply], request: _Request, grace_s: float
    ) -> _Reply:
        """One RPC with retries on passing failures for up to `grace_s` seconds.

        With a grace period, a call also waits (within its deadline) for a scorer that is
        reconnecting, instead of failing at once; without one, it fails fast.
        """
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_delay(grace_s), wait=self._wait, retry=retry_if_exception(_retryable), reraise=True
            ):
                with attempt:
                    try:
                        return await method(
                            request,
                            timeout=self.settings.deadline_s,
                            metadata=self._metadata,
                            wait_for_ready=grace_s > 0,
                        )
                    except grpc.aio.AioRpcError as err:
                        details = details_of(err)
                        if details.retryable:
                            log.info(
                                "scorer_call_retrying",
                                call=what,
                                code=err.code().name,
                                reason=details.reason,
                                details=err.details(),
                            )
                        raise
        except grpc.aio.AioRpcError as err:
            details = details_of(err)
            if (
                details.reason == Reason.MODEL_MISMATCH
                and isinstance(request, scorer_pb2.ScoreRequest)
                and request.model_digest
            ):
                raise ModelChanged(f"scorer model changed: {err.details()}") from None
            if details.retryable:
                raise ScorerUnavailable(
                    f"scorer at {self.settings.address} unavailable for over {grace_s:g} s "
                    f"({err.code().name}: {err.details()})"
                ) from None
            reason = f" ({details.reason})" if details.reason else ""
            raise ScorerError(
                err.code(), f"scorer refused {what}: {err.code().name}{reason}: {err.details()}", details.reason
            ) from None
        raise AssertionError("tenacity ends an attempt loop by returning or raising")

    async def task(self, task_id: str, grace_s: float | None = None) -> scorer_pb2.TaskInfo:
        """The task's description (class names, model digest and all).

        ScorerError(NOT_FOUND) names the tasks there are."""
        grace = self.settings.grace_s if grace_s is None else grace_s
        return await self._call("GetTask", self._stub.GetTask, scorer_pb2.GetTaskRequest(task_id=task_id), grace)

    async def score(
        self,
        task_id: str,
        templates: list[str],
        split: scorer_pb2.Split = scorer_pb2.SPLIT_TRAIN,
        model_digest: str = "",
    ) -> list[scorer_pb2.TemplateScore]:
        """Scores the templates in one call (on the model `model_digest`, if set), results in request order."""
        reply = await self._score(
            scorer_pb2.ScoreRequest(task_id=task_id, templates=templates, split=split, model_digest=model_digest)
        )
        return _one_each(reply.results, len(templates), "templates")

    async def score_ensembles(
        self, task_id: str, ensembles: list[list[str]], split: scorer_pb2.Split, model_digest: str = ""
    ) -> list[scorer_pb2.EnsembleScore]:
        """Scores prompt ensembles (each one accuracy) in one call; results come back in request order."""
        request = scorer_pb2.ScoreRequest(
            task_id=task_id,
            split=split,
            model_digest=model_digest,
            ensembles=[scorer_pb2.TemplateEnsemble(templates=e) for e in ensembles],
        )
        return _one_each((await self._score(request)).ensemble_results, len(ensembles), "ensembles")

    async def score_class_prompt_sets(
        self,
        task_id: str,
        sets: Sequence[Sequence[Sequence[str]]],
        split: scorer_pb2.Split,
        model_digest: str = "",
        per_class_accuracy: bool = False,
    ) -> list[scorer_pb2.ClassPromptSetScore]:
        """Scores class prompt sets (per class, in label order, its prompts; each one accuracy, and with
        `per_class_accuracy` each class's) in one call; results come back in request order."""
        request = scorer_pb2.ScoreRequest(
            task_id=task_id,
            split=split,
            model_digest=model_digest,
            per_class_accuracy=per_class_accuracy,
            class_prompt_sets=[
                scorer_pb2.ClassPromptSet(classes=[scorer_pb2.ClassPrompts(prompts=c) for c in s]) for s in sets
            ],
        )
        return _one_each((await self._score(request)).class_prompt_set_results, len(sets), "class prompt sets")

    async def _score(self, request: scorer_pb2.ScoreRequest) -> scorer_pb2.ScoreResponse:
        started = time.perf_counter()
        code = "OK"
        try:
            return await self._call("Score", self._stub.Score, request, self.settings.grace_s)
        except ScorerError as err:
            code = err.code.name
            raise
        except ScorerUnavailable:
            code = "UNAVAILABLE"
            raise
        except ModelChanged:
            code = "FAILED_PRECONDITION"
            raise
        finally:
            metrics.SCORER_CALLS.labels(code).inc()
            metrics.SCORER_SECONDS.observe(time.perf_counter() - started)


def _one_each(results: Sequence[_Result], sent: int, what: str) -> list[_Result]:
    """The results of one Score call's candidates of a kind: one per candidate sent, or the scorer is broken."""
    if len(results) != sent:
        raise ScorerError(grpc.StatusCode.INTERNAL, f"scorer answered {len(results)} results for {sent} {what}")
    return list(results)
