"""The Python client of promptclimb's services: how another team calls the scorer and the optimizer.

    from promptclimb.client import Scorer, Tls
    from promptclimb.scorer.v1 import scorer_pb2

    async with Scorer("scorer.example:50051", token=os.environ["SCORER_TOKEN"], tls=Tls(ca="ca.pem")) as scorer:
        reply = await scorer.score(scorer_pb2.ScoreRequest(task_id="pets", templates=["a photo of a {}."]))

Each method is one RPC: it takes the request message and returns the response
message of the generated stubs. `SyncScorer` and `SyncOptimizer` are the same
clients for code that does not await (scripts, notebooks): their methods block,
and they work whether or not the calling thread runs an event loop. Every call has a deadline (the client's
`deadline_s` unless the call names its own) that bounds all its attempts
together. Retries follow the services' error model, by the one rule both
services and the optimizer's scorer client share (`ErrorDetails.retryable` in
promptclimb_common/errors.py):

- a failure whose rich status carries a `google.rpc.RetryInfo` is retried after
  the delay it names (a full queue, a rate limit or share, a store fault);
- a transport failure (UNAVAILABLE or DEADLINE_EXCEEDED with no rich status:
  the server is down or unreachable) is retried with jittered exponential
  backoff; every call is safe to repeat (StartRun gets a `request_id` when its
  request has none, so a repeat returns the run the first attempt started);
- anything else is raised at once, as is a retry whose wait would outlast the
  deadline. Failures surface as `CallError`, with the rich status's details.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Coroutine, Generator
from dataclasses import dataclass
from typing import Any, Generic, Self, TypeVar

import grpc
from google.protobuf.message import Message
from google.rpc import status_pb2
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_exponential_jitter,
)

from promptclimb.optimizer.v1 import optimizer_pb2, optimizer_pb2_grpc
from promptclimb.scorer.v1 import scorer_pb2, scorer_pb2_grpc
from promptclimb_common.channels import ClientTls, bearer_metadata, open_channel
from promptclimb_common.errors import details_of, rich_status, status_detail

__all__ = ["CallError", "Optimizer", "Retry", "Scorer", "SyncOptimizer", "SyncScorer", "Tls"]

Tls = ClientTls
M = TypeVar("M", bound=Message)
_Reply = TypeVar("_Reply", bound=Message)
_T = TypeVar("_T")


@dataclass(frozen=True)
class Retry:
    """At most `attempts` tries per call; UNAVAILABLE waits from `initial_backoff_s`, doubling up to `max_backoff_s`."""

    attempts: int = 5
    initial_backoff_s: float = 0.25
    max_backoff_s: float = 10.0


class CallError(Exception):
    """A call failed for good: its gRPC `code`, the server's `message`, and the rich `status` when it sent one."""

    def __init__(
        self, method: str, code: grpc.StatusCode, message: str, status: status_pb2.Status | None, attempts: int
    ) -> None:
        super().__init__(
            f"{method}: {code.name}: {message}" + (f" (after {attempts} attempts)" if attempts > 1 else "")
        )
        self.method, self.code, self.message, self.status, self.attempts = method, code, message, status, attempts

    def detail(self, kind: type[M]) -> M | None:
        """The first detail of that type in the rich status (ErrorInfo, RetryInfo, QuotaFailure, BadRequest...)."""
        return status_detail(self.status, kind)


def _retryable(err: BaseException) -> bool:
    return isinstance(err, grpc.aio.AioRpcError) and details_of(err).retryable


class _Client:
    """One channel, its token and TLS, and the deadline and retry rules every call of it follows."""

    def __init__(
        self,
        address: str,
        *,
        token: str | None = None,
        tls: Tls | None = None,
        deadline_s: float = 60.0,
        retry: Retry = Retry(),
    ) -> None:
        if deadline_s <= 0 or retry.attempts < 1:
            raise ValueError("deadline_s must be > 0 and retry.attempts at least 1")
        self.address, self.deadline_s, self.retry = address, deadline_s, retry
        self._channel = open_channel(address, tls)
        self._metadata = bearer_metadata(token)
        self._backoff = wait_exponential_jitter(
            multiplier=retry.initial_backoff_s, max=retry.max_backoff_s, jitter=retry.initial_backoff_s
        )

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _wait(self, state: RetryCallState) -> float:
        err = state.outcome.exception() if state.outcome else None
        hinted = details_of(err).retry_after_s if isinstance(err, grpc.aio.AioRpcError) else None
        return hinted if hinted is not None else self._backoff(state)

    async def _unary(
        self, method: grpc.aio.UnaryUnaryMultiCallable[Any, _Reply], request: Message, deadline_s: float | None
    ) -> _Reply:
        """Calls the stub's `method` under the deadline, retrying as the module's docstring says."""
        name = type(request).__name__.removesuffix("Request")  # buf lint: every RPC's request is <RPC>Request
        budget = self.deadline_s if deadline_s is None else deadline_s
        started = time.monotonic()
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.retry.attempts) | stop_before_delay(budget),
            wait=self._wait,
            retry=retry_if_exception(_retryable),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    left = max(budget - (time.monotonic() - started), 0.001)
                    return await method(request, timeout=left, metadata=self._metadata)
        except grpc.aio.AioRpcError as err:
            raise CallError(
                name, err.code(), err.details() or "", rich_status(err), retrying.statistics.get("attempt_number", 1)
            ) from err
        raise AssertionError("tenacity ends an attempt loop by returning or raising")


class Scorer(_Client):
    """The Scorer service (promptclimb.scorer.v1): templates in, accuracy out."""

    def __init__(self, address: str, **options: Any) -> None:
        super().__init__(address, **options)
        self._stub = scorer_pb2_grpc.ScorerStub(self._channel)

    async def list_tasks(
        self, request: scorer_pb2.ListTasksRequest | None = None, *, deadline_s: float | None = None
    ) -> scorer_pb2.ListTasksResponse:
        return await self._unary(self._stub.ListTasks, request or scorer_pb2.ListTasksRequest(), deadline_s)

    async def get_task(
        self, request: scorer_pb2.GetTaskRequest, *, deadline_s: float | None = None
    ) -> scorer_pb2.TaskInfo:
        return await self._unary(self._stub.GetTask, request, deadline_s)

    async def score(
        self, request: scorer_pb2.ScoreRequest, *, deadline_s: float | None = None
    ) -> scorer_pb2.ScoreResponse:
        return await self._unary(self._stub.Score, request, deadline_s)


class Optimizer(_Client):
    """The Optimizer service (promptclimb.optimizer.v1): runs of the prompt search."""

    def __init__(self, address: str, **options: Any) -> None:
        super().__init__(address, **options)
        self._stub = optimizer_pb2_grpc.OptimizerStub(self._channel)

    async def start_run(
        self, request: optimizer_pb2.StartRunRequest, *, deadline_s: float | None = None
    ) -> optimizer_pb2.Run:
        """Fills in a `request_id` when the request has none, so every retry of this call returns the one run the
        first attempt may have started; the copy sent is returned to no one, the caller's request is left as it is."""
        if not request.request_id:
            filled = optimizer_pb2.StartRunRequest()
            filled.CopyFrom(request)
            filled.request_id = uuid.uuid4().hex
            request = filled
        return await self._unary(self._stub.StartRun, request, deadline_s)

    async def get_run(
        self, request: optimizer_pb2.GetRunRequest, *, deadline_s: float | None = None
    ) -> optimizer_pb2.Run:
        return await self._unary(self._stub.GetRun, request, deadline_s)

    async def list_runs(
        self, request: optimizer_pb2.ListRunsRequest | None = None, *, deadline_s: float | None = None
    ) -> optimizer_pb2.ListRunsResponse:
        return await self._unary(self._stub.ListRuns, request or optimizer_pb2.ListRunsRequest(), deadline_s)

    async def cancel_run(
        self, request: optimizer_pb2.CancelRunRequest, *, deadline_s: float | None = None
    ) -> optimizer_pb2.Run:
        return await self._unary(self._stub.CancelRun, request, deadline_s)

    async def resume_run(
        self, request: optimizer_pb2.ResumeRunRequest, *, deadline_s: float | None = None
    ) -> optimizer_pb2.Run:
        return await self._unary(self._stub.ResumeRun, request, deadline_s)

    async def watch_run(
        self, request: optimizer_pb2.WatchRunRequest, *, deadline_s: float | None = None
    ) -> AsyncGenerator[optimizer_pb2.RunEvent]:
        """The run's events until it ends. A stream lasts as long as the run: no deadline unless given, no retries."""
        call = self._stub.WatchRun(request, timeout=deadline_s, metadata=self._metadata)
        try:
            async for event in call:
                yield event
        except grpc.aio.AioRpcError as err:
            raise CallError("WatchRun", err.code(), err.details() or "", rich_status(err), 1) from err
        finally:
            call.cancel()


_AsyncClient = TypeVar("_AsyncClient", bound=_Client)


class _LoopThread:
    """An event loop of its own on a daemon thread, where a sync client's async twin lives.

    A notebook's thread already runs a loop, so `asyncio.run` fails there and awaiting is not an option for a
    plain function; a loop on another thread serves both cases. A grpc.aio channel belongs to the loop it was
    opened on, so the twin is built on this loop too.
    """

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="promptclimb-client", daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        """The coroutine's result, run on the loop; an interrupted wait (Ctrl-C) cancels the call."""
        future: concurrent.futures.Future[_T] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


class _SyncClient(Generic[_AsyncClient]):
    """A blocking face on an async client: each call runs on the client's own loop thread."""

    def __init__(self, make: Callable[[], _AsyncClient]) -> None:
        self._loop = _LoopThread()

        async def build() -> _AsyncClient:
            return make()

        try:
            self._async = self._loop.run(build())
        except BaseException:
            self._loop.stop()
            raise

    def _call(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        return self._loop.run(coroutine)

    def close(self) -> None:
        self._loop.run(self._async.close())
        self._loop.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SyncScorer(_SyncClient[Scorer]):
    """`Scorer` for code that does not await: the same options and methods, each blocking until its answer."""

    def __init__(self, address: str, **options: Any) -> None:
        super().__init__(lambda: Scorer(address, **options))

    def list_tasks(
        self, request: scorer_pb2.ListTasksRequest | None = None, *, deadline_s: float | None = None
    ) -> scorer_pb2.ListTasksResponse:
        return self._call(self._async.list_tasks(request, deadline_s=deadline_s))

    def get_task(self, request: scorer_pb2.GetTaskRequest, *, deadline_s: float | None = None) -> scorer_pb2.TaskInfo:
        return self._call(self._async.get_task(request, deadline_s=deadline_s))

    def score(self, request: scorer_pb2.ScoreRequest, *, deadline_s: float | None = None) -> scorer_pb2.ScoreResponse:
        return self._call(self._async.score(request, deadline_s=deadline_s))


class SyncOptimizer(_SyncClient[Optimizer]):
    """`Optimizer` for code that does not await: the same options and methods, each blocking until its answer."""

    def __init__(self, address: str, **options: Any) -> None:
        super().__init__(lambda: Optimizer(address, **options))

    def start_run(
        self, request: optimizer_pb2.StartRunRequest, *, deadline_s: float | None = None
    ) -> optimizer_pb2.Run:
        return self._call(self._async.start_run(request, deadline_s=deadline_s))

    def get_run(self, request: optimizer_pb2.GetRunRequest, *, deadline_s: float | None = None) -> optimizer_pb2.Run:
        return self._call(self._async.get_run(request, deadline_s=deadline_s))

    def list_runs(
        self, request: optimizer_pb2.ListRunsRequest | None = None, *, deadline_s: float | None = None
    ) -> optimizer_pb2.ListRunsResponse:
        return self._call(self._async.list_runs(request, deadline_s=deadline_s))

    def cancel_run(
        self, request: optimizer_pb2.CancelRunRequest, *, deadline_s: float | None = None
    ) -> optimizer_pb2.Run:
        return self._call(self._async.cancel_run(request, deadline_s=deadline_s))

    def resume_run(
        self, request: optimizer_pb2.ResumeRunRequest, *, deadline_s: float | None = None
    ) -> optimizer_pb2.Run:
        return self._call(self._async.resume_run(request, deadline_s=deadline_s))

    def watch_run(
        self, request: optimizer_pb2.WatchRunRequest, *, deadline_s: float | None = None
    ) -> Generator[optimizer_pb2.RunEvent]:
        """The run's events until it ends, each as it arrives; leaving the loop early closes the stream."""
        stream = self._async.watch_run(request, deadline_s=deadline_s)

        async def next_event() -> optimizer_pb2.RunEvent | None:
            return await anext(stream, None)

        try:
            while (event := self._call(next_event())) is not None:
                yield event
        finally:
            self._call(stream.aclose())
