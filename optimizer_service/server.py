"""The Optimizer gRPC service: thin RPC handlers over the RunManager, and the process that serves them.

Each handler authenticates and validates its input; `maps_failures` turns
every known failure into the status and ErrorInfo reason the proto documents
(promptclimb_common/errors.py), with a message a caller can act on. The shared
interceptor turns anything unforeseen into INTERNAL, so one bad request never
takes the service down. Every handler passes its caller on: runs belong to
their owner.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import grpc
import structlog
from typing_extensions import override

from optimizer_service.config import OptimizerConfig
from optimizer_service.llm import LlmClient
from optimizer_service.runs import (
    OwnerBudgetSpent,
    RequestIdReused,
    RunManager,
    RunNotFound,
    RunStateError,
    TooManyRuns,
)
from optimizer_service.scorer_client import ScorerClient, ScorerUnavailable
from optimizer_service.spec import ModelNotAllowed, SpecError
from optimizer_service.store import Store, StoreError
from promptclimb.optimizer.v1 import optimizer_pb2 as pb
from promptclimb.optimizer.v1 import optimizer_pb2_grpc
from promptclimb_common import errors
from promptclimb_common.auth import Authenticator, load_tokens, reload_tokens
from promptclimb_common.errors import FailureTable, Reason, ServiceError, abort, invalid
from promptclimb_common.grpc_runtime import GrpcService
from promptclimb_common.paging import PageError
from promptclimb_common.paths import require_writable
from promptclimb_common.serving_args import ServingConfig

log = structlog.get_logger(__name__)

Context = grpc.aio.ServicerContext
SERVICE_NAME = "promptclimb.optimizer.v1.Optimizer"
MAX_RUN_ID = 64

RETRY_S = 5.0  # RetryInfo of what passes: a full queue of runs, an unreachable scorer or database
# Longest first: a field whose name is a prefix of another's is no match for it.
SPEC_FIELDS = tuple(sorted(pb.RunSpec.DESCRIPTOR.fields_by_name, key=len, reverse=True))


def _spec_error(err: SpecError) -> ServiceError:
    """INVALID_ARGUMENT naming the spec field its message starts with."""
    message = str(err)
    field = next((f"spec.{f}" for f in SPEC_FIELDS if message.startswith(f)), "spec")
    return invalid(
        field, message, Reason.MODEL_NOT_ALLOWED if isinstance(err, ModelNotAllowed) else Reason.INVALID_FIELD
    )


def _retry_later(code: grpc.StatusCode, reason: Reason) -> Callable[[Exception], ServiceError]:
    return lambda err: ServiceError(code, reason, str(err), retry_after_s=RETRY_S)


# The status and reason of every known failure (the proto lists them).
FAILURES: FailureTable = {
    SpecError: _spec_error,
    PageError: lambda err: invalid(err.field, str(err)),
    RequestIdReused: lambda err: ServiceError(grpc.StatusCode.ALREADY_EXISTS, Reason.REQUEST_ID_REUSED, str(err)),
    RunNotFound: lambda err: ServiceError(grpc.StatusCode.NOT_FOUND, Reason.RUN_NOT_FOUND, str(err)),
    RunStateError: lambda err: ServiceError(grpc.StatusCode.FAILED_PRECONDITION, Reason.RUN_STATE_CONFLICT, str(err)),
    TooManyRuns: lambda err: ServiceError(
        grpc.StatusCode.RESOURCE_EXHAUSTED, Reason.TOO_MANY_RUNS, str(err), retry_after_s=RETRY_S, metadata=err.metadata
    ),
    OwnerBudgetSpent: lambda err: ServiceError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        Reason.OWNER_BUDGET_SPENT,
        str(err),
        quota_subject=f"owner:{err.owner}",
        metadata={"used": str(err.used), "share": str(err.share)},
    ),
    ScorerUnavailable: _retry_later(grpc.StatusCode.UNAVAILABLE, Reason.SCORER_UNAVAILABLE),
    StoreError: _retry_later(grpc.StatusCode.UNAVAILABLE, Reason.STATE_UNAVAILABLE),
}
maps_failures = errors.maps_failures(FAILURES)


async def _run_id(context: grpc.aio.ServicerContext, run_id: str) -> str:
    if not run_id or len(run_id) > MAX_RUN_ID or not run_id.isascii() or not run_id.isalnum():
        await abort(context, invalid("run_id", "run_id must be the id StartRun returned (up to 64 letters and digits)"))
    return run_id


class OptimizerServicer(optimizer_pb2_grpc.OptimizerServicer):
    def __init__(self, manager: RunManager, auth: Authenticator) -> None:
        self.manager, self.auth = manager, auth

    @override
    @maps_failures
    async def StartRun(self, request: pb.StartRunRequest, context: Context) -> pb.Run:
        caller = await self.auth.require(context, "run")
        return await self.manager.start(request.spec, caller, request.request_id)

    @override
    @maps_failures
    async def GetRun(self, request: pb.GetRunRequest, context: Context) -> pb.Run:
        caller = await self.auth.require(context, "run")
        return self.manager.get(await _run_id(context, request.run_id), caller)

    @override
    @maps_failures
    async def WatchRun(self, request: pb.WatchRunRequest, context: Context) -> AsyncIterator[pb.RunEvent]:
        caller = await self.auth.require(context, "run")
        run_id = await _run_id(context, request.run_id)
        if request.after_sequence < 0:
            await abort(context, invalid("after_sequence", "after_sequence must be >= 0"))
        async for event in self.manager.watch(run_id, caller, request.after_sequence):
            yield event

    @override
    @maps_failures
    async def CancelRun(self, request: pb.CancelRunRequest, context: Context) -> pb.Run:
        caller = await self.auth.require(context, "run")
        return await self.manager.cancel(await _run_id(context, request.run_id), caller)

    @override
    @maps_failures
    async def ResumeRun(self, request: pb.ResumeRunRequest, context: Context) -> pb.Run:
        caller = await self.auth.require(context, "run")
        return await self.manager.resume(await _run_id(context, request.run_id), caller)

    @override
    @maps_failures
    async def ListRuns(self, request: pb.ListRunsRequest, context: Context) -> pb.ListRunsResponse:
        caller = await self.auth.require(context, "run")
        runs, next_page_token = self.manager.list(
            caller, request.page_size, request.page_token, list(request.states), request.view
        )
        return pb.ListRunsResponse(runs=runs, next_page_token=next_page_token)


def optimizer_service(config: ServingConfig, manager: RunManager, auth: Authenticator) -> GrpcService:
    """The gRPC server of the service (not started), with each caller's share of its calls (call_shares.py)."""
    return GrpcService(
        [(optimizer_pb2_grpc.add_OptimizerServicer_to_server, OptimizerServicer(manager, auth), SERVICE_NAME)],
        host=config.host,
        port=config.port,
        tls=config.tls,
        grace_seconds=config.grace_seconds,
        max_concurrent_rpcs=config.max_concurrent_rpcs,
        shares=config.share_limits,
        owner_of=auth.owner_of,
        metrics_port=config.metrics_port,
        metrics_host=config.metrics_host,
        metrics_caller_labels=config.metrics_caller_labels,
        port_file=config.port_file,
    )


async def serve(config: OptimizerConfig) -> None:
    """Opens the state, resumes unfinished runs and serves until SIGTERM; runs in flight resume at the next start."""
    require_writable(config.writable_paths())
    store = Store.open(config.state_dir)
    auth = Authenticator(load_tokens(config.tokens_file, "PROMPTCLIMB_TOKENS"), config.anonymous_rights)
    llm = LlmClient(config.llm, store)
    scorer = ScorerClient(config.scorer)
    manager = RunManager(
        store,
        llm,
        scorer,
        max_active_runs=config.max_active_runs,
        default_model=config.llm.model,
        limits=config.limits,
        shares=config.shares,
    )
    service = optimizer_service(config, manager, auth)
    await service.start()
    log.info(
        "optimizer_serving",
        port=service.port,
        state_dir=str(config.state_dir),
        scorer=config.scorer.address,
        llm=config.llm.base_url,
        auth=auth.enabled,
        resumed=manager.resume_unfinished(),
    )
    try:
        await service.serve_until_signalled(lambda: reload_tokens(auth, config.tokens_file, "PROMPTCLIMB_TOKENS"))
    finally:
        await manager.shutdown()
        await llm.close()
        await scorer.close()
        store.close()
