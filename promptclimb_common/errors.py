"""The error model of both services: a gRPC status plus the standard rich details a client can act on.

Every refusal carries a `google.rpc.Status` (the `grpc-status-details-bin`
trailer, through grpcio-status) whose details hold:

- `ErrorInfo`: domain `promptclimb.dev` and a reason from `Reason` below (the
  list the protos document), so a client branches on a stable name, not on text;
- `RetryInfo`: only on what is worth retrying, with the delay to wait first;
- `QuotaFailure`: on a spent evaluation budget (subject: the token's name);
- `BadRequest`: the offending field of an invalid argument.

Servers raise `ServiceError` (or build one) and `abort` with it; clients read a
failed call back with `details_of`.
"""

from __future__ import annotations

import enum
import functools
import inspect
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar, cast

import grpc
from google.protobuf import duration_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

DOMAIN = "promptclimb.dev"
M = TypeVar("M", bound=Message)


class Reason(enum.StrEnum):
    """ErrorInfo reasons. The protos list each with its status code; names never change within v1."""

    # Either service
    TOKEN_MISSING = "TOKEN_MISSING"  # UNAUTHENTICATED: no token, or one the server does not know
    RIGHT_MISSING = "RIGHT_MISSING"  # PERMISSION_DENIED: the token lacks the call's right
    RATE_LIMITED = "RATE_LIMITED"  # RESOURCE_EXHAUSTED + RetryInfo: the token's request rate
    INVALID_FIELD = "INVALID_FIELD"  # INVALID_ARGUMENT + BadRequest: a field breaks a rule
    STATE_UNAVAILABLE = "STATE_UNAVAILABLE"  # UNAVAILABLE + RetryInfo: the service's database or quota store
    OWNER_SHARE_REACHED = "OWNER_SHARE_REACHED"  # RESOURCE_EXHAUSTED + RetryInfo: the caller's calls or streams at once
    # Scorer
    TEST_SPLIT_FORBIDDEN = "TEST_SPLIT_FORBIDDEN"  # PERMISSION_DENIED: SPLIT_TEST without the `test` right
    TASK_NOT_FOUND = "TASK_NOT_FOUND"  # NOT_FOUND
    QUEUE_FULL = "QUEUE_FULL"  # RESOURCE_EXHAUSTED + RetryInfo: the encoder queue is full for now
    EVALUATION_BUDGET_SPENT = "EVALUATION_BUDGET_SPENT"  # RESOURCE_EXHAUSTED + QuotaFailure: not worth retrying
    REQUEST_TOO_LARGE = "REQUEST_TOO_LARGE"  # INVALID_ARGUMENT + BadRequest: can never fit a server bound
    MODEL_MISMATCH = "MODEL_MISMATCH"  # FAILED_PRECONDITION: the request pins a model_digest the server does not serve
    # Optimizer
    RUN_NOT_FOUND = "RUN_NOT_FOUND"  # NOT_FOUND: unknown, or another caller's run
    RUN_STATE_CONFLICT = "RUN_STATE_CONFLICT"  # FAILED_PRECONDITION: the run's state does not allow the call
    TOO_MANY_RUNS = "TOO_MANY_RUNS"  # RESOURCE_EXHAUSTED + RetryInfo: the service's queue, or the caller's share of it
    OWNER_BUDGET_SPENT = "OWNER_BUDGET_SPENT"  # RESOURCE_EXHAUSTED + QuotaFailure: the caller's scored-template share
    MODEL_NOT_ALLOWED = "MODEL_NOT_ALLOWED"  # INVALID_ARGUMENT + BadRequest: llm_model outside --llm-allowed-models
    SCORER_UNAVAILABLE = "SCORER_UNAVAILABLE"  # UNAVAILABLE + RetryInfo
    REQUEST_ID_REUSED = "REQUEST_ID_REUSED"  # ALREADY_EXISTS: the caller's request_id started a run with another spec


@dataclass(eq=False)
class ServiceError(Exception):
    """One refusal: status code, reason, message, and the details that fit it."""

    code: grpc.StatusCode
    reason: Reason
    message: str
    retry_after_s: float | None = None  # RetryInfo: set only when a retry after this delay may succeed
    bad_field: str = ""  # BadRequest: the offending field
    quota_subject: str = ""  # QuotaFailure: whose quota is spent
    metadata: dict[str, str] = field(default_factory=dict)  # ErrorInfo metadata (e.g. the bound a request broke)

    def __str__(self) -> str:
        return self.message

    def to_status(self) -> grpc.Status:
        details = [error_details_pb2.ErrorInfo(reason=self.reason.value, domain=DOMAIN, metadata=self.metadata)]
        if self.retry_after_s is not None:
            delay = duration_pb2.Duration()
            delay.FromNanoseconds(int(self.retry_after_s * 1e9))
            details.append(error_details_pb2.RetryInfo(retry_delay=delay))
        if self.quota_subject:
            details.append(
                error_details_pb2.QuotaFailure(
                    violations=[
                        error_details_pb2.QuotaFailure.Violation(subject=self.quota_subject, description=self.message)
                    ]
                )
            )
        if self.bad_field:
            details.append(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(field=self.bad_field, description=self.message)
                    ]
                )
            )
        status = status_pb2.Status(code=getattr(code_pb2, self.code.name), message=self.message)
        for detail in details:
            status.details.add().Pack(detail)
        return rpc_status.to_status(status)


def invalid(field_name: str, message: str, reason: Reason = Reason.INVALID_FIELD, **metadata: str) -> ServiceError:
    """INVALID_ARGUMENT naming the field."""
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, reason, message, bad_field=field_name, metadata=metadata)


async def abort(context: grpc.aio.ServicerContext, error: ServiceError) -> NoReturn:
    await context.abort_with_status(error.to_status())


# What a service's handlers may fail with, and the ServiceError each becomes. First match wins: a subclass goes
# before its base class.
FailureTable = Mapping[type[Exception], Callable[[Any], ServiceError]]
Handler = TypeVar("Handler", bound=Callable[..., Any])


def maps_failures(table: FailureTable) -> Callable[[Handler], Handler]:
    """A decorator for an aio servicer's handlers (unary or streaming) that aborts each known failure with the status
    `table` gives it; a raised ServiceError is aborted as it is.

    Both services declare their table once and put this on every handler, so a handler raises and never builds a
    status inline; anything not in the table is the interceptor's (INTERNAL, logged).
    """
    known: tuple[type[Exception], ...] = (ServiceError, *table)

    def service_error(err: Exception) -> ServiceError:
        if isinstance(err, ServiceError):
            return err
        return next(build(err) for kind, build in table.items() if isinstance(err, kind))

    def decorate(handler: Handler) -> Handler:
        if inspect.isasyncgenfunction(handler):

            @functools.wraps(handler)
            async def stream(self: object, request: Message, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                try:
                    async for item in handler(self, request, context):
                        yield item
                except known as err:
                    await abort(context, service_error(err))

            return cast(Handler, stream)

        @functools.wraps(handler)
        async def unary(self: object, request: Message, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await handler(self, request, context)
            except known as err:
                await abort(context, service_error(err))

        return cast(Handler, unary)

    return decorate


# The codes whose RetryInfo a client acts on; on any other code a retry cannot help, whatever the details say.
PASSING_CODES = (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED, grpc.StatusCode.UNAVAILABLE)


@dataclass(frozen=True)
class ErrorDetails:
    """What a client reads from a failed call: the code, the message and the rich details, where sent."""

    code: grpc.StatusCode
    message: str
    reason: str = ""  # ErrorInfo.reason; empty when the server sent none (a transport failure)
    domain: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    retry_after_s: float | None = None
    fields: tuple[str, ...] = ()  # BadRequest field violations
    quota_subjects: tuple[str, ...] = ()  # QuotaFailure violations

    @property
    def retryable(self) -> bool:
        """The one retry rule of every client of ours: worth retrying when the server said so (RetryInfo on a code
        that can pass), or when the failure is the transport's (no details at all: the server is down or away)."""
        if self.retry_after_s is not None:
            return self.code in PASSING_CODES
        return not self.reason and self.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def rich_status(err: grpc.RpcError) -> status_pb2.Status | None:
    """A failed call's google.rpc.Status; None when it sent none (or one that contradicts the call's own status)."""
    try:
        # grpcio-status reads code(), details() and trailing_metadata() alone, which an AioRpcError has too;
        # its stubs accept only a grpc.Call.
        status: status_pb2.Status | None = rpc_status.from_call(err)  # type: ignore[arg-type]
        return status
    except ValueError:
        return None


def status_detail(status: status_pb2.Status | None, kind: type[M]) -> M | None:
    """The first detail of that type in the status, unpacked."""
    for packed in status.details if status else ():
        if packed.Is(kind.DESCRIPTOR):
            found = kind()
            packed.Unpack(found)
            return found
    return None


def details_of(err: grpc.RpcError) -> ErrorDetails:
    """Reads the google.rpc.Status of a failed call (sync or aio); a status without one gives only code and message."""
    code, message = err.code(), err.details() or ""
    status = rich_status(err)
    values: dict = {}
    if (info := status_detail(status, error_details_pb2.ErrorInfo)) is not None:
        values.update(reason=info.reason, domain=info.domain, metadata=dict(info.metadata))
    if (retry := status_detail(status, error_details_pb2.RetryInfo)) is not None:
        values["retry_after_s"] = retry.retry_delay.ToNanoseconds() / 1e9
    if (bad := status_detail(status, error_details_pb2.BadRequest)) is not None:
        values["fields"] = tuple(v.field for v in bad.field_violations)
    if (quota := status_detail(status, error_details_pb2.QuotaFailure)) is not None:
        values["quota_subjects"] = tuple(v.subject for v in quota.violations)
    return ErrorDetails(code, message, **values)
