"""The scorer process's life: open the ledger, load model and tasks, serve, drain and release on stop."""

from __future__ import annotations

import asyncio
import ipaddress
import sqlite3

import structlog

from promptclimb.scorer.v1 import scorer_pb2_grpc
from promptclimb_common.auth import AuthConfigError, Authenticator, TokenEntry, load_tokens, reload_tokens
from promptclimb_common.grpc_runtime import GrpcService
from scorer_service import metrics
from scorer_service.batcher import TextEncodeBatcher
from scorer_service.config import ScorerConfig
from scorer_service.device import default_batch_prompts
from scorer_service.factory import load_clip
from scorer_service.identity import ModelIdentity, weights_digest
from scorer_service.quota import QuotaStore, RedisQuota, SqliteQuota
from scorer_service.request_bounds import ScoreBounds
from scorer_service.scoring import TemplateScorer, TextEmbeddingCache
from scorer_service.servicer import SERVICE_NAME, ScorerServicer
from scorer_service.tasks import load_tasks

log = structlog.get_logger(__name__)

LEDGER_FILE = "evaluations.sqlite"


async def open_quota(config: ScorerConfig) -> QuotaStore:
    """The quota store the config names; fails at start (not at the first call) when it cannot be used."""
    if config.quota_store != "sqlite":
        redis_store = await RedisQuota.connect(config.quota_store)
        log.info("quota_store", store=redis_store.safe_url)
        return redis_store
    try:
        sqlite_store = SqliteQuota(config.state_dir / LEDGER_FILE)
    except (OSError, sqlite3.Error) as err:
        state = next(p for p in config.writable_paths() if p.flag == "--state-dir")
        raise state.error(f"its evaluation ledger {LEDGER_FILE} cannot be written ({err})") from None
    log.info("quota_store", store="sqlite")
    return sqlite_store


class OpenToAll(AuthConfigError):
    """The scorer would serve a non-loopback address without tokens, and no one said it should."""


def refuse_open_to_all(config: ScorerConfig, tokens: list[TokenEntry]) -> None:
    """Refuses to serve anyone who can reach a non-loopback address, unless it has tokens or the operator said so
    (--allow-unauthenticated): a scorer open to all can be mined and its budget spent by anyone."""
    if tokens or config.allow_unauthenticated or is_loopback(config.host):
        return
    raise OpenToAll(
        f"--host {config.host} is reachable beyond this machine, and no tokens are configured (--tokens-file or "
        "$PROMPTCLIMB_TOKENS): anyone could score. Give tokens, listen on 127.0.0.1, or pass --allow-unauthenticated "
        "($SCORER_ALLOW_UNAUTHENTICATED=true) to serve everyone on purpose"
    )


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost; a name or any other address is not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ScorerApp:
    """The whole scorer process: model, tasks, batcher, gRPC server, metrics endpoint."""

    def __init__(self, config: ScorerConfig) -> None:
        self.config = config
        self.service: GrpcService | None = None
        self.batcher: TextEncodeBatcher | None = None
        self.scorer: TemplateScorer | None = None
        self.quota: QuotaStore | None = None
        self.auth: Authenticator | None = None

    async def start(self) -> int:
        """Opens the ledger, loads everything, then serves; returns the bound gRPC port."""
        config = self.config
        self.quota = await open_quota(config)  # first: an unusable quota store fails before minutes of loading
        tokens = load_tokens(config.tokens_file, "PROMPTCLIMB_TOKENS")
        refuse_open_to_all(config, tokens)
        self.auth = auth = Authenticator(tokens, config.anonymous_rights, rate_limit=self.quota.take_request)
        encoder = await asyncio.to_thread(load_clip, config.model, config.device, config.dtype, config.cpu_matmul)
        model = ModelIdentity.of(encoder, await asyncio.to_thread(weights_digest, encoder), config.model_version)
        metrics.MODEL_INFO.info(
            {
                "model": config.model,
                "device": str(encoder.device),
                "dtype": str(encoder.dtype).removeprefix("torch."),
                "digest": model.digest,
                "version": model.version,
            }
        )
        log.info("model_identity", model_digest=model.digest, model_version=model.version)
        tasks, features = await asyncio.to_thread(load_tasks, config, encoder, model.digest)
        batch_prompts = config.max_batch_prompts or default_batch_prompts(encoder.device)
        self.batcher = TextEncodeBatcher(
            encoder.encode_ids, batch_prompts, config.max_batch_delay_ms / 1000, config.max_queued_prompts
        )
        log.info("batching", max_batch_prompts=batch_prompts, max_batch_delay_ms=config.max_batch_delay_ms)
        self.batcher.start()
        self.scorer = scorer = TemplateScorer(
            encoder, self.batcher, TextEmbeddingCache(config.text_cache_bytes), config.max_template_bytes
        )
        servicer = ScorerServicer(
            tasks,
            features,
            scorer,
            auth,
            self.quota,
            ScoreBounds(
                config.max_candidates_per_request,
                config.max_templates_per_request,
                config.max_prompts_per_class,
                config.max_prompts_per_candidate,
                config.max_prompts_per_request,
                config.max_queued_prompts,
            ),
            model,
        )
        self.service = GrpcService(
            [(scorer_pb2_grpc.add_ScorerServicer_to_server, servicer, SERVICE_NAME)],
            host=config.host,
            port=config.port,
            tls=config.tls,
            max_message_bytes=config.max_message_bytes,
            max_concurrent_rpcs=config.max_concurrent_rpcs,
            shares=config.share_limits,
            owner_of=auth.owner_of,
            grace_seconds=config.grace_seconds,
            metrics_port=config.metrics_port,
            metrics_host=config.metrics_host,
            metrics_caller_labels=config.metrics_caller_labels,
            port_file=config.port_file,
        )
        log.info(
            "auth", enabled=auth.enabled, anonymous_rights=sorted(config.anonymous_rights) if not auth.enabled else []
        )
        return await self.service.start()

    async def stop(self) -> None:
        """Drains the server, then releases the encoder thread and the ledger."""
        if self.service:
            await self.service.stop()
        await self._release()

    async def _release(self) -> None:
        if self.scorer:
            self.scorer.close()
        if self.batcher:
            await self.batcher.close()
        if self.quota:
            await self.quota.close()

    async def run_until_signalled(self) -> None:
        await self.start()
        assert self.service is not None and self.auth is not None  # start() sets both
        auth = self.auth
        try:
            await self.service.serve_until_signalled(
                lambda: reload_tokens(auth, self.config.tokens_file, "PROMPTCLIMB_TOKENS")
            )
        finally:
            await self._release()
