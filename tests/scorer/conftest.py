"""In-process scorer servers on loopback, called through the generated stubs."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from promptclimb.scorer.v1 import scorer_pb2_grpc
from scorer_service.app import ScorerApp
from scorer_service.config import ScorerConfig, TaskSource

TOKENS = {
    "client": ("client-token-123", ["score"]),
    "admin": ("admin-token-456", ["score", "test"]),
    "throttled": ("throttled-token-789", ["score"]),
}


def bearer(name: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {TOKENS[name][0]}"),)


@pytest.fixture(scope="session")
def tokens_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("auth") / "tokens.json"
    entries: list[dict[str, object]] = [
        {"name": name, "token": token, "rights": rights} for name, (token, rights) in TOKENS.items()
    ]
    entries[-1].update(requests_per_second=0.01, burst=2)
    path.write_text(json.dumps({"tokens": entries}))
    return path


@pytest.fixture(scope="session")
def base_config(tiny_clip_dir, image_task_dir, tmp_path_factory) -> ScorerConfig:
    return ScorerConfig(
        model=str(tiny_clip_dir),
        tasks=(TaskSource("shapes", image_task_dir),),
        shots=2,
        seed=1,
        port=0,
        metrics_port=None,
        cache_dir=tmp_path_factory.mktemp("feature-cache"),
        state_dir=tmp_path_factory.mktemp("scorer-state"),
        max_candidates_per_request=16,
        max_templates_per_request=16,
        max_message_bytes=256 * 1024,
        max_batch_delay_ms=20,
    )


async def serve_scorer(config: ScorerConfig):
    """A started ScorerApp and a plaintext channel to it; stopped after."""
    app = ScorerApp(config)
    port = await app.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield app, channel
    finally:
        await channel.close()
        await app.stop()


@pytest_asyncio.fixture(scope="session")
async def open_scorer(base_config):
    """Auth off: anonymous callers may score train, not test."""
    async for app, channel in serve_scorer(base_config):
        yield app, scorer_pb2_grpc.ScorerStub(channel), channel


@pytest_asyncio.fixture(scope="session")
async def locked_scorer(base_config, tokens_file):
    """Auth on, from the tokens file."""
    async for app, channel in serve_scorer(replace(base_config, tokens_file=str(tokens_file))):
        yield app, scorer_pb2_grpc.ScorerStub(channel), channel
