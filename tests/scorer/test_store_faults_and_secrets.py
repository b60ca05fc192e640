"""Store faults are retryable and off the event loop; credentials never reach a log line or a message; a scorer open
to everyone beyond loopback needs to be asked for; TLS certificates rotate without a restart; /metrics can name no
caller."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import time
import urllib.request
from dataclasses import replace
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from promptclimb.scorer.v1 import scorer_pb2, scorer_pb2_grpc
from promptclimb_common.channels import channel_credentials
from promptclimb_common.errors import details_of
from promptclimb_common.grpc_runtime import ReloadingCredentials, TlsFiles, caller_label
from scorer_service.app import LEDGER_FILE, OpenToAll, ScorerApp, refuse_open_to_all
from scorer_service.quota import QuotaStoreError, RedisQuota, redacted_url
from tests.procs import start_process
from tests.scorer.conftest import serve_scorer
from tests.tls_certs import make_certs

REQUEST = scorer_pb2.ScoreRequest(task_id="shapes", templates=["a locked {}."])


async def test_a_locked_ledger_gives_unavailable_with_retry_info_and_the_loop_stays_free(base_config, tmp_path):
    config = replace(base_config, state_dir=tmp_path / "state")
    async for _app, channel in serve_scorer(config):
        stub = scorer_pb2_grpc.ScorerStub(channel)
        health: Any = health_pb2_grpc.HealthStub(channel)  # typeshed's HealthStub declares no methods
        holder = sqlite3.connect(config.state_dir / LEDGER_FILE, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")  # another writer holds the ledger
        try:
            score = asyncio.ensure_future(stub.Score(REQUEST, timeout=30))
            await asyncio.sleep(0.2)  # the charge is now waiting for the lock
            beside = []
            for _ in range(5):
                started = time.perf_counter()
                assert (await health.Check(health_pb2.HealthCheckRequest(), timeout=5)).status == 1
                await stub.ListTasks(scorer_pb2.ListTasksRequest(), timeout=5)
                beside.append(time.perf_counter() - started)
            assert max(beside) < 0.5, beside
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await score
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        details = details_of(caught.value)
        assert (details.code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "STATE_UNAVAILABLE")
        assert details.retry_after_s is not None and details.retryable
        assert (await stub.Score(REQUEST, timeout=30)).results[0].total > 0  # the lock gone, it scores again


@pytest.mark.parametrize(
    "url",
    [
        "redis://:s3cret@127.0.0.1:1/0",
        "redis://user:s3cret@127.0.0.1:1/0",
        "redis://127.0.0.1:1/0?password=s3cret",
        "rediss://127.0.0.1:1/0?db=1&username=me&password=s3cret",
        "unix:///run/redis.sock?password=s3cret&db=2",
    ],
)
async def test_every_credential_form_of_a_redis_url_is_redacted(url):
    assert "s3cret" not in redacted_url(url)
    assert redacted_url(url).startswith(url.partition("://")[0] + "://")
    if url.startswith("redis://"):  # unreachable: the start's message shows the URL
        with pytest.raises(QuotaStoreError) as caught:
            await RedisQuota.connect(url)
        assert "s3cret" not in str(caught.value)


def test_the_scorer_process_refuses_to_serve_everyone_beyond_loopback(tiny_clip_dir, image_task_dir, tmp_path):
    """What the image does with SCORER_HOST=0.0.0.0 and no tokens: exit 2 naming the ways out, before loading."""
    log = tmp_path / "scorer.log"
    args = ["scorer_service", "--model", str(tiny_clip_dir), "--task", f"shapes={image_task_dir}"]
    args += ["--cache-dir", str(tmp_path / "cache"), "--state-dir", str(tmp_path / "state"), "--metrics-port", "off"]
    process = start_process(
        [*args, "--host", "0.0.0.0", "--port", "0"], log, {"PROMPTCLIMB_TOKENS": "", "SCORER_TOKENS_FILE": ""}
    )
    assert process.wait(timeout=60) == 2
    said = log.read_text()
    assert "--allow-unauthenticated" in said and "--tokens-file" in said and "model_identity" not in said


def test_a_scorer_beyond_loopback_without_tokens_is_refused_unless_allowed(base_config):
    wide = replace(base_config, host="0.0.0.0")
    with pytest.raises(OpenToAll, match="--allow-unauthenticated"):
        refuse_open_to_all(wide, [])
    refuse_open_to_all(replace(wide, allow_unauthenticated=True), [])
    for host in ("127.0.0.1", "::1", "localhost"):
        refuse_open_to_all(replace(base_config, host=host), [])


async def test_tls_certificates_rotate_without_a_restart(base_config, tmp_path):
    first, second = make_certs(tmp_path / "first"), make_certs(tmp_path / "second")  # two unrelated CAs
    live = tmp_path / "live"
    live.mkdir()
    for name in ("server.pem", "server.key"):
        shutil.copy(first.server_cert.parent / name, live / name)
    app = ScorerApp(replace(base_config, tls=TlsFiles(str(live / "server.pem"), str(live / "server.key"))))
    port = await app.start()

    async def score_trusting(ca) -> scorer_pb2.ScoreResponse:
        async with grpc.aio.secure_channel(f"localhost:{port}", channel_credentials(str(ca))) as channel:
            return await scorer_pb2_grpc.ScorerStub(channel).Score(REQUEST, timeout=5)

    try:
        assert (await score_trusting(first.ca)).results
        for name in ("server.pem", "server.key"):  # the rotation: new files in place
            shutil.copy(second.server_cert.parent / name, live / name)
        assert (await score_trusting(second.ca)).results
        with pytest.raises(grpc.aio.AioRpcError):
            await score_trusting(first.ca)
    finally:
        await app.stop()


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return str(reply.read().decode())


async def test_metrics_can_name_no_caller(base_config, tokens_file):
    config = replace(
        base_config, tokens_file=str(tokens_file), metrics_port=0, metrics_host="127.0.0.1", metrics_caller_labels=False
    )
    named = {"token": "client", "split": "train"}
    before = REGISTRY.get_sample_value("scorer_token_requests_total", named)  # other tests' servers share the registry
    try:
        async for app, channel in serve_scorer(config):
            stub = scorer_pb2_grpc.ScorerStub(channel)
            await stub.Score(REQUEST, metadata=(("authorization", "Bearer client-token-123"),), timeout=30)
            url = f"http://127.0.0.1:{app.service.metrics_port}/metrics"
            text = await asyncio.to_thread(scrape, url)
            assert 'scorer_token_requests_total{split="train",token="-"}' in text
            assert REGISTRY.get_sample_value("scorer_token_requests_total", named) == before
    finally:
        caller_label.shown = True  # the labels are the process's; the other tests' servers show callers


def test_sighup_rereads_the_certificate_even_when_its_files_look_unchanged(tmp_path):
    """A copy that kept the old modification time and size is not seen by the check at each handshake; SIGHUP (what
    GrpcService.reload calls) makes the next handshake read the files again, once."""
    certs = make_certs(tmp_path)
    credentials = ReloadingCredentials(TlsFiles(str(certs.server_cert), str(certs.server_key)))
    assert credentials._fetch() is None  # nothing changed: gRPC keeps the configuration it has
    credentials.reload()
    assert credentials._fetch() is not None
    assert credentials._fetch() is None
