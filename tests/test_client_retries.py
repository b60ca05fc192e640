"""promptclimb.client's retries against a real grpc.aio server that answers scripted rich statuses.

The server speaks both services' generated stubs and fails each call as told
(a gRPC code, the google.rpc details the error model sends), then answers.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import grpc
import pytest
import pytest_asyncio
from google.protobuf.duration_pb2 import Duration
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from typing_extensions import override

from promptclimb.client import CallError, Optimizer, Retry, Scorer
from promptclimb.optimizer.v1 import optimizer_pb2, optimizer_pb2_grpc
from promptclimb.scorer.v1 import scorer_pb2, scorer_pb2_grpc

FAST = Retry(attempts=4, initial_backoff_s=0.05, max_backoff_s=0.2)
SCORE = scorer_pb2.ScoreRequest(task_id="shapes", templates=["a photo of a {}."])


def retry_info(seconds: float) -> error_details_pb2.RetryInfo:
    delay = Duration()
    delay.FromMilliseconds(int(seconds * 1000))
    return error_details_pb2.RetryInfo(retry_delay=delay)


@dataclass
class Failure:
    code: grpc.StatusCode
    details: tuple = ()
    sleep_s: float = 0.0
    trailer_code: grpc.StatusCode | None = None  # a details trailer that claims another code than the call's


class ScriptedServer(scorer_pb2_grpc.ScorerServicer, optimizer_pb2_grpc.OptimizerServicer):
    """Fails the next calls as `script` says (rich status in the trailers, as grpcio-status sends it), then answers."""

    def __init__(self) -> None:
        self.script: list[Failure] = []
        self.calls: list[float] = []
        self.request_ids: list[str] = []
        self.address = ""  # host:port, once serving

    async def _next(self, context) -> None:
        self.calls.append(time.monotonic())
        if not self.script:
            return
        failure = self.script.pop(0)
        await asyncio.sleep(failure.sleep_s)
        status = status_pb2.Status(
            code=(failure.trailer_code or failure.code).value[0], message=f"scripted {failure.code.name}"
        )
        for detail in failure.details:
            status.details.add().Pack(detail)
        rich = rpc_status.to_status(status)
        await context.abort(failure.code, rich.details, rich.trailing_metadata)

    @override
    async def Score(self, request, context):
        await self._next(context)
        return scorer_pb2.ScoreResponse(
            results=[scorer_pb2.TemplateScore(template=t, accuracy=0.5, correct=4, total=8) for t in request.templates]
        )

    @override
    async def StartRun(self, request, context):
        self.request_ids.append(request.request_id)
        await self._next(context)
        return optimizer_pb2.Run(run_id=f"run-for-{request.request_id}")


@pytest_asyncio.fixture
async def server():
    # The stubs mark every method abstract; the generated bases answer the ones not scripted here UNIMPLEMENTED.
    scripted = ScriptedServer()  # type: ignore[abstract]
    grpc_server = grpc.aio.server()
    scorer_pb2_grpc.add_ScorerServicer_to_server(scripted, grpc_server)
    optimizer_pb2_grpc.add_OptimizerServicer_to_server(scripted, grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    await grpc_server.start()
    scripted.address = f"127.0.0.1:{port}"
    yield scripted
    await grpc_server.stop(0)


@pytest.mark.parametrize("code", [grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED])
async def test_a_refusal_with_retry_info_is_retried_after_its_delay(server, code):
    server.script = [Failure(code, (retry_info(0.4),))]
    async with Scorer(server.address, retry=FAST, deadline_s=10) as scorer:
        reply = await scorer.score(SCORE)
    assert reply.results[0].accuracy == 0.5
    assert len(server.calls) == 2
    assert server.calls[1] - server.calls[0] >= 0.4


@pytest.mark.parametrize(
    "code", [grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED, grpc.StatusCode.UNAVAILABLE]
)
async def test_a_refusal_without_retry_info_surfaces_at_once_with_its_details(server, code):
    """The services' one retry rule (ErrorDetails.retryable): a server's refusal is retried only with RetryInfo; only
    the transport's failures (no details at all) are retried without."""
    reason = error_details_pb2.ErrorInfo(reason="EVALUATION_BUDGET_SPENT", domain="scorer.promptclimb")
    server.script = [Failure(code, (reason,))]
    async with Scorer(server.address, retry=FAST) as scorer:
        with pytest.raises(CallError) as caught:
            await scorer.score(SCORE)
    assert len(server.calls) == 1
    err = caught.value
    assert err.code == code and err.attempts == 1 and err.method == "Score"
    info = err.detail(error_details_pb2.ErrorInfo)
    assert info is not None and info.reason == "EVALUATION_BUDGET_SPENT"
    assert err.detail(error_details_pb2.RetryInfo) is None


async def test_unavailable_is_retried_with_backoff_up_to_the_attempts(server):
    server.script = [Failure(grpc.StatusCode.UNAVAILABLE)] * 2
    async with Scorer(server.address, retry=FAST) as scorer:
        assert (await scorer.score(SCORE)).results[0].total == 8
    assert len(server.calls) == 3
    server.script = [Failure(grpc.StatusCode.UNAVAILABLE)] * 5
    async with Scorer(server.address, retry=FAST) as scorer:
        with pytest.raises(CallError) as caught:
            await scorer.score(SCORE)
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE and caught.value.attempts == FAST.attempts
    assert len(server.calls) == 3 + FAST.attempts


async def test_other_codes_are_never_retried_even_with_retry_info(server):
    server.script = [Failure(grpc.StatusCode.INVALID_ARGUMENT, (retry_info(0.1),))]
    async with Scorer(server.address, retry=FAST) as scorer:
        with pytest.raises(CallError) as caught:
            await scorer.score(SCORE)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT and len(server.calls) == 1


async def test_details_that_contradict_the_call_are_not_acted_on(server):
    server.script = [Failure(grpc.StatusCode.RESOURCE_EXHAUSTED, (retry_info(0.1),), trailer_code=grpc.StatusCode.OK)]
    async with Scorer(server.address, retry=FAST) as scorer:
        with pytest.raises(CallError) as caught:
            await scorer.score(SCORE)
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and caught.value.status is None
    assert len(server.calls) == 1


async def test_a_retry_delay_beyond_the_deadline_is_not_waited_for(server):
    server.script = [Failure(grpc.StatusCode.RESOURCE_EXHAUSTED, (retry_info(30),))]
    started = time.monotonic()
    async with Scorer(server.address, retry=FAST, deadline_s=2) as scorer:
        with pytest.raises(CallError) as caught:
            await scorer.score(SCORE)
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert time.monotonic() - started < 1.5 and len(server.calls) == 1


async def test_the_deadline_bounds_every_attempt_together(server):
    server.script = [Failure(grpc.StatusCode.UNAVAILABLE, sleep_s=0.3), Failure(grpc.StatusCode.UNAVAILABLE, sleep_s=5)]
    started = time.monotonic()
    async with Scorer(server.address, retry=FAST) as scorer:
        with pytest.raises(CallError) as caught:
            await scorer.score(SCORE, deadline_s=1.0)
    elapsed = time.monotonic() - started
    assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and caught.value.attempts == 2
    assert 0.9 <= elapsed < 2.0


async def test_start_run_is_retried_under_one_request_id(server):
    """A lost StartRun answer is retried safely: every attempt carries the same request_id, so the service returns
    the run the first attempt started instead of starting a second one."""
    request = optimizer_pb2.StartRunRequest(spec=optimizer_pb2.RunSpec(task_id="shapes"))
    server.script = [Failure(grpc.StatusCode.UNAVAILABLE), Failure(grpc.StatusCode.UNAVAILABLE)]
    async with Optimizer(server.address, retry=FAST) as optimizer:
        run = await optimizer.start_run(request)
        assert len(server.request_ids) == 3 and len(set(server.request_ids)) == 1 and server.request_ids[0]
        assert run.run_id == f"run-for-{server.request_ids[0]}"
        assert not request.request_id  # the caller's message is left as it was
        chosen = optimizer_pb2.StartRunRequest(spec=request.spec, request_id="mine")
        assert (await optimizer.start_run(chosen)).run_id == "run-for-mine"
