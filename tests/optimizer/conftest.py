"""The optimizer's test rig: the real scorer (tiny random CLIP) as a process, a scripted LLM, the service on
loopback."""

from __future__ import annotations

import contextlib
import json
import signal
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from optimizer_service.config import LlmSettings, ScorerSettings
from optimizer_service.llm import LlmClient
from optimizer_service.runs import RunManager
from optimizer_service.scorer_client import ScorerClient
from optimizer_service.server import SERVICE_NAME, OptimizerServicer
from optimizer_service.spec import RunLimits
from optimizer_service.store import Store
from promptclimb.optimizer.v1 import optimizer_pb2 as pb
from promptclimb.optimizer.v1 import optimizer_pb2_grpc
from promptclimb_common.auth import Authenticator, parse_tokens
from promptclimb_common.grpc_runtime import GrpcService, TlsFiles
from tests.optimizer.scripted_llm import ScriptedLLM
from tests.procs import start_scorer, stop_process

TASK = "shapes"
SCORER_TOKENS = {"optimizer": ("opt-token-1", ["score", "test"]), "train-only": ("train-token-2", ["score"])}


@dataclass(frozen=True)
class ScorerEndpoint:
    address: str

    def settings(self, token_name: str = "optimizer", **overrides) -> ScorerSettings:
        values = {"address": self.address, "token": SCORER_TOKENS[token_name][0], "deadline_s": 30.0, "grace_s": 5.0}
        return ScorerSettings(**{**values, **overrides})


@contextlib.contextmanager
def scorer_with_tokens(model_dir: Path, images: Path, root: Path, *flags: str) -> Iterator[ScorerEndpoint]:
    """A real scorer process serving TASK from `images`, with auth on (SCORER_TOKENS), stopped after."""
    tokens = root / "tokens.json"
    tokens.write_text(
        json.dumps({"tokens": [{"name": n, "token": t, "rights": r} for n, (t, r) in SCORER_TOKENS.items()]})
    )
    process, address = start_scorer(
        model_dir, {TASK: images}, root / "cache", root / "scorer.log", *flags, "--tokens-file", str(tokens)
    )
    try:
        yield ScorerEndpoint(address)
    finally:
        stop_process(process, signal.SIGTERM)


@pytest.fixture(scope="session")
def scorer(tiny_clip_dir, image_task_dir, tmp_path_factory) -> Iterator[ScorerEndpoint]:
    """One real scorer process for the whole session, with auth on."""
    with scorer_with_tokens(tiny_clip_dir, image_task_dir, tmp_path_factory.mktemp("scorer"), "--shots", "3") as end:
        yield end


@pytest.fixture
def llm():
    with ScriptedLLM() as server:
        yield server


def llm_settings(url: str, **overrides) -> LlmSettings:
    values = {
        "base_url": url,
        "model": "scripted-model",
        "api_key": "placeholder",
        "concurrency": 4,
        "timeout_s": 5.0,
        "max_attempts": 3,
        "backoff_initial_s": 0.01,
        "backoff_max_s": 0.1,
    }
    return LlmSettings(**{**values, **overrides})


@dataclass
class Optimizer:
    """An in-process Optimizer service on loopback and the stub that calls it."""

    stub: optimizer_pb2_grpc.OptimizerAsyncStub
    manager: RunManager
    store: Store
    llm: ScriptedLLM
    port: int

    async def run_to_end(self, **spec) -> tuple[pb.Run, list[pb.RunEvent]]:
        """Starts a run, watches it to its end; returns the final run and every event."""
        run_id = (await self.stub.StartRun(pb.StartRunRequest(spec=small_spec(**spec)))).run_id
        events = [event async for event in self.stub.WatchRun(pb.WatchRunRequest(run_id=run_id))]
        return await self.stub.GetRun(pb.GetRunRequest(run_id=run_id)), events


def small_spec(**overrides) -> pb.RunSpec:
    values = {
        "task_id": TASK,
        "initial_pool_size": 6,
        "restarts": 2,
        "resets": 2,
        "iterations": 2,
        "top_k": 2,
        "templates_per_call": 2,
    }
    return pb.RunSpec(**{**values, **overrides})


@contextlib.asynccontextmanager
async def open_optimizer(
    scorer_settings: ScorerSettings,
    llm: ScriptedLLM,
    state_dir: Path,
    *,
    tokens: list[dict[str, object]] | None = None,
    tls: TlsFiles = TlsFiles(),
    client_credentials: grpc.ChannelCredentials | None = None,
    anonymous_rights: frozenset[str] = frozenset({"run", "test"}),
    limits: RunLimits = RunLimits(),
    **llm_overrides,
) -> AsyncIterator[Optimizer]:
    """The Optimizer service in this process, wired as `serve` wires it, on a free loopback port.

    With auth off (no `tokens`) callers are anonymous with `anonymous_rights` (by default they may see test accuracy).
    With `tls`, the stub connects to localhost (the test certificates' name) with `client_credentials`.
    """
    store = Store.open(state_dir)
    client = LlmClient(llm_settings(llm.url, **llm_overrides), store)
    scorer_client = ScorerClient(scorer_settings, backoff_initial_s=0.05, backoff_max_s=0.5)
    manager = RunManager(store, client, scorer_client, max_active_runs=2, default_model="scripted-model", limits=limits)
    auth = Authenticator(parse_tokens(json.dumps({"tokens": tokens}), "test") if tokens else [], anonymous_rights)
    service = GrpcService(
        [(optimizer_pb2_grpc.add_OptimizerServicer_to_server, OptimizerServicer(manager, auth), SERVICE_NAME)],
        host="127.0.0.1",
        port=0,
        tls=tls,
        grace_seconds=1,
    )
    port = await service.start()
    if tls.enabled:
        assert client_credentials is not None, "a TLS server needs the client's credentials"
        channel = grpc.aio.secure_channel(f"localhost:{port}", client_credentials)
    else:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Optimizer(optimizer_pb2_grpc.OptimizerStub(channel), manager, store, llm, port)
    finally:
        await channel.close()
        await service.stop()
        await manager.shutdown()
        await client.close()
        await scorer_client.close()
        store.close()


@pytest_asyncio.fixture
async def optimizer(scorer, llm, tmp_path, request) -> AsyncIterator[Optimizer]:
    """Options come from @pytest.mark.optimizer(llm={...}, scorer={...}, tokens=[...], limits=RunLimits(...))."""
    marker = request.node.get_closest_marker("optimizer")
    options = marker.kwargs if marker else {}
    async with open_optimizer(
        scorer.settings(**options.get("scorer", {})),
        llm,
        tmp_path / "state",
        tokens=options.get("tokens"),
        limits=options.get("limits", RunLimits()),
        **options.get("llm", {}),
    ) as service:
        yield service


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "optimizer(llm={}, scorer={}, tokens=[], limits=RunLimits()): options of the optimizer fixture"
    )
