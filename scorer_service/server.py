"""The Scorer gRPC service: validation, auth and status codes around TemplateScorer."""

from __future__ import annotations

import asyncio
import sqlite3

import grpc
import structlog
from prometheus_client import start_http_server

from promptclimb.scorer.v1 import scorer_pb2, scorer_pb2_grpc
from promptclimb_common.auth import Authenticator, load_tokens
from promptclimb_common.grpc_runtime import GrpcService
from promptclimb_common.paging import PageError, decode_token, encode_token, page_size
from scorer_service import metrics
from scorer_service.batcher import QueueFullError, TextEncodeBatcher
from scorer_service.config import ScorerConfig
from scorer_service.coop import load_coop_task
from scorer_service.datasets import TEST, TRAIN, Task, build_task, load_image_folder
from scorer_service.features import SplitFeatures, load_split_features
from scorer_service.model import ClipEncoder, ModelIdentity, default_batch_prompts, load_clip
from scorer_service.quota import BudgetExhaustedError, EvaluationLedger
from scorer_service.scoring import TemplateScorer, TextEmbeddingCache

log = structlog.get_logger(__name__)

SERVICE_NAME = scorer_pb2.DESCRIPTOR.services_by_name["Scorer"].full_name
SPLIT_NAMES = {scorer_pb2.SPLIT_UNSPECIFIED: TRAIN, scorer_pb2.SPLIT_TRAIN: TRAIN, scorer_pb2.SPLIT_TEST: TEST}
SPLIT_ENUMS = {TRAIN: scorer_pb2.SPLIT_TRAIN, TEST: scorer_pb2.SPLIT_TEST}
QUEUE_RETRY_SECONDS = 1.0
TASKS_PAGE_SIZE, MAX_TASKS_PAGE_SIZE = 100, 1000
LEDGER_FILE = "evaluations.sqlite"


class ScorerServicer(scorer_pb2_grpc.ScorerServicer):
    def __init__(
        self,
        tasks: dict[str, Task],
        features: dict[tuple[str, str], SplitFeatures],
        scorer: TemplateScorer,
        auth: Authenticator,
        ledger: EvaluationLedger,
        max_templates_per_request: int,
        model: ModelIdentity,
    ) -> None:
        self.model = model
        self.tasks = tasks
        self.features = features
        self.scorer = scorer
        self.auth = auth
        self.ledger = ledger
        self.max_templates_per_request = max_templates_per_request

    async def ListTasks(self, request, context):
        await self.auth.require(context, "score")
        try:
            size = page_size(request.page_size, TASKS_PAGE_SIZE, MAX_TASKS_PAGE_SIZE)
            after = decode_token(request.page_token, (str,))
        except PageError as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        ids = [task_id for task_id in sorted(self.tasks) if after is None or task_id > after[0]]
        page = ids[:size]
        return scorer_pb2.ListTasksResponse(tasks=[self._task_info(self.tasks[task_id]) for task_id in page],
                                            next_page_token=encode_token([page[-1]]) if len(ids) > size else "")

    async def GetTask(self, request, context):
        await self.auth.require(context, "score")
        return self._task_info(await self._task(request.task_id, context))

    async def _task(self, task_id: str, context) -> Task:
        task = self.tasks.get(task_id)
        if task is None:
            known = ", ".join(sorted(self.tasks)) or "none"
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown task_id {task_id!r}; this server has: {known}")
        return task

    def _task_info(self, task: Task) -> scorer_pb2.TaskInfo:
        return scorer_pb2.TaskInfo(
            task_id=task.task_id,
            class_names=task.class_names,
            num_classes=len(task.class_names),
            splits=[scorer_pb2.SplitInfo(split=SPLIT_ENUMS[name], num_images=len(images)) for name, images in task.splits.items()],
            model_name=self.scorer.encoder.name,
            shots=task.shots,
            seed=task.seed,
            context_length=self.scorer.encoder.context_length,
            model_digest=self.model.digest,
            model_version=self.model.version,
        )

    async def Score(self, request, context):
        principal = await self.auth.require(context, "test" if request.split == scorer_pb2.SPLIT_TEST else "score")
        split = SPLIT_NAMES.get(request.split)
        if split is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown split {request.split}; use SPLIT_TRAIN or SPLIT_TEST")
        task = await self._task(request.task_id, context)
        if request.model_digest and request.model_digest != self.model.digest:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"model_digest {request.model_digest} was pinned, but this server scores with model_digest "
                f"{self.model.digest} (version {self.model.version!r}); nothing was scored: send the request to a "
                "server with the pinned model, or pin the new digest to start over with it",
            )
        # The request limit bounds one call's encoding work, so it counts every ensemble member; the
        # budget bounds what a token can learn, one accuracy per template or ensemble.
        count = len(request.templates) + len(request.ensembles)
        work = len(request.templates) + sum(len(e.templates) for e in request.ensembles)
        if count == 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no templates or ensembles to score: send at least one")
        if work > self.max_templates_per_request:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{work} templates in one request (ensemble members included); the limit is "
                f"{self.max_templates_per_request}: split the request",
            )
        structlog.contextvars.bind_contextvars(task=task.task_id, split=split, templates=count)
        metrics.TOKEN_REQUESTS.labels(principal.name, split).inc()
        try:
            self.ledger.charge(principal.name, count, principal.evaluation_budget)
        except BudgetExhaustedError as err:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{err}; ask the scorer's operator for more")
        try:
            scores, ensemble_scores = await self.scorer.score_candidates(
                task, split, self.features[task.task_id, split], list(request.templates),
                [list(e.templates) for e in request.ensembles],
            )
        except QueueFullError as err:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"server busy: {err}; retry in {QUEUE_RETRY_SECONDS:.0f} s",
                trailing_metadata=(("retry-after-s", f"{QUEUE_RETRY_SECONDS:.3f}"),),
            )
        log.info("scored", invalid=sum(1 for s in [*scores, *ensemble_scores] if s.error))
        return scorer_pb2.ScoreResponse(
            split=SPLIT_ENUMS[split],
            model_digest=self.model.digest,
            model_version=self.model.version,
            results=[
                scorer_pb2.TemplateScore(template=s.template, accuracy=s.accuracy, correct=s.correct, total=s.total, error=s.error)
                for s in scores
            ],
            ensemble_results=[
                scorer_pb2.EnsembleScore(templates=s.templates, accuracy=s.accuracy, correct=s.correct, total=s.total, error=s.error)
                for s in ensemble_scores
            ],
        )


def load_tasks(config: ScorerConfig, encoder: ClipEncoder, identity: str) -> tuple[dict[str, Task], dict[tuple[str, str], SplitFeatures]]:
    """Builds every task and loads (or computes) its image features (cached under the model's `identity`)."""
    tasks, features = {}, {}
    for source in config.tasks:
        if source.coop_dataset:
            task = load_coop_task(source.task_id, source.coop_dataset, source.root, config.shots, config.seed)
        else:
            dataset = load_image_folder(source.root, config.split_seed, config.test_fraction)
            task = build_task(source.task_id, dataset, config.shots, config.seed)
        tasks[task.task_id] = task
        for split, images in task.splits.items():
            features[task.task_id, split] = load_split_features(
                encoder, identity, images, config.cache_dir, config.image_batch_size, f"{task.task_id}/{split}"
            )
        log.info("task_ready", task=task.task_id, classes=len(task.class_names),
                 **{f"{split}_images": len(images) for split, images in task.splits.items()})
    return tasks, features


def open_ledger(config: ScorerConfig) -> EvaluationLedger:
    try:
        return EvaluationLedger(config.state_dir / LEDGER_FILE)
    except (OSError, sqlite3.Error) as err:
        state = next(p for p in config.writable_paths() if p.flag == "--state-dir")
        raise state.error(f"its evaluation ledger {LEDGER_FILE} cannot be written ({err})") from None


class ScorerApp:
    """The whole scorer process: model, tasks, batcher, gRPC server, metrics endpoint."""

    def __init__(self, config: ScorerConfig) -> None:
        self.config = config
        self.service: GrpcService | None = None
        self.batcher: TextEncodeBatcher | None = None
        self.ledger: EvaluationLedger | None = None

    async def start(self) -> int:
        """Opens the ledger, loads everything, then serves; returns the bound gRPC port."""
        config = self.config
        self.ledger = open_ledger(config)  # first: an unwritable --state-dir fails before minutes of loading
        auth = Authenticator(load_tokens(config.tokens_file, "PROMPTCLIMB_TOKENS"), config.anonymous_rights)
        encoder = await asyncio.to_thread(load_clip, config.model, config.device, config.dtype, config.cpu_matmul)
        model = ModelIdentity.of(encoder, await asyncio.to_thread(encoder.identity), config.model_version)
        metrics.MODEL_INFO.info({"model": config.model, "device": str(encoder.device), "dtype": str(encoder.dtype).removeprefix("torch."),
                                 "digest": model.digest, "version": model.version})
        log.info("model_identity", model_digest=model.digest, model_version=model.version)
        tasks, features = await asyncio.to_thread(load_tasks, config, encoder, model.digest)
        batch_prompts = config.max_batch_prompts or default_batch_prompts(encoder.device)
        self.batcher = TextEncodeBatcher(
            encoder.encode_text, batch_prompts, config.max_batch_delay_ms / 1000, config.max_queued_prompts
        )
        log.info("batching", max_batch_prompts=batch_prompts, max_batch_delay_ms=config.max_batch_delay_ms)
        self.batcher.start()
        scorer = TemplateScorer(encoder, self.batcher, TextEmbeddingCache(config.text_cache_bytes), config.max_template_bytes)
        servicer = ScorerServicer(tasks, features, scorer, auth, self.ledger, config.max_templates_per_request, model)
        if config.metrics_port:
            start_http_server(config.metrics_port, addr=config.host)
            log.info("metrics_serving", port=config.metrics_port)
        self.service = GrpcService(
            [(scorer_pb2_grpc.add_ScorerServicer_to_server, servicer, SERVICE_NAME)],
            host=config.host,
            port=config.port,
            tls=config.tls,
            max_message_bytes=config.max_message_bytes,
            max_concurrent_rpcs=config.max_concurrent_rpcs,
            grace_seconds=config.grace_seconds,
        )
        log.info("auth", enabled=auth.enabled, anonymous_rights=sorted(config.anonymous_rights) if not auth.enabled else [])
        return await self.service.start()

    async def stop(self) -> None:
        """Drains the server, then releases the encoder thread and the ledger."""
        if self.service:
            await self.service.stop()
        await self._release()

    async def _release(self) -> None:
        if self.batcher:
            await self.batcher.close()
        if self.ledger:
            self.ledger.close()

    async def run_until_signalled(self) -> None:
        await self.start()
        try:
            await self.service.serve_until_signalled()
        finally:
            await self._release()
