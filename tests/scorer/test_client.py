"""promptclimb.client's Scorer against the real scorer on loopback: bearer tokens, TLS, mTLS, a late server."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import grpc
import pytest

from promptclimb.client import CallError, Retry, Scorer, Tls
from promptclimb.scorer.v1 import scorer_pb2
from promptclimb_common.grpc_runtime import TlsFiles
from scorer_service.app import ScorerApp
from tests.procs import held_port
from tests.scorer.conftest import TOKENS
from tests.tls_certs import make_certs

REQUEST = scorer_pb2.ScoreRequest(task_id="shapes", templates=["a photo of a {}."])
FAST = Retry(attempts=2, initial_backoff_s=0.05, max_backoff_s=0.1)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("certs"))


async def test_a_token_over_tls_scores_and_a_missing_one_is_refused_at_once(base_config, tokens_file, certs):
    server_tls = TlsFiles(str(certs.server_cert), str(certs.server_key))
    app = ScorerApp(replace(base_config, tokens_file=str(tokens_file), tls=server_tls))
    port = await app.start()
    try:
        address, tls = f"localhost:{port}", Tls(ca=certs.ca)
        async with Scorer(address, token=TOKENS["admin"][0], tls=tls) as scorer:
            tasks = await scorer.list_tasks()
            assert [t.task_id for t in tasks.tasks] == ["shapes"]
            test_request = scorer_pb2.ScoreRequest(task_id="shapes", templates=["{}"], split=scorer_pb2.SPLIT_TEST)
            test = await scorer.score(test_request)
            assert test.results[0].total == 12 and test.split == scorer_pb2.SPLIT_TEST
        async with Scorer(address, tls=tls, retry=FAST) as anonymous:
            with pytest.raises(CallError) as caught:
                await anonymous.score(REQUEST)
        assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED and caught.value.attempts == 1
        async with Scorer(address, token=TOKENS["client"][0], tls=tls) as train_only:
            with pytest.raises(CallError) as caught:
                await train_only.score(test_request)
        assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
    finally:
        await app.stop()


async def test_mtls_needs_the_client_certificate(base_config, certs):
    server_tls = TlsFiles(str(certs.server_cert), str(certs.server_key), client_ca=str(certs.ca))
    app = ScorerApp(replace(base_config, tls=server_tls))
    port = await app.start()
    try:
        async with Scorer(f"localhost:{port}", tls=Tls(certs.ca, certs.client_cert, certs.client_key)) as scorer:
            assert (await scorer.score(REQUEST)).results[0].total == 8
        async with Scorer(f"localhost:{port}", tls=Tls(certs.ca), retry=FAST, deadline_s=5) as no_cert:
            with pytest.raises(CallError) as caught:
                await no_cert.score(REQUEST)
        assert caught.value.code == grpc.StatusCode.UNAVAILABLE and caught.value.attempts == FAST.attempts
    finally:
        await app.stop()


async def test_a_call_waits_out_a_scorer_that_is_still_starting(base_config):
    with held_port() as port:  # the address is known, and refuses connections, before the server binds it
        app = ScorerApp(replace(base_config, port=port))

        async def start_late():
            await asyncio.sleep(1.0)  # a slow start, not an ordering: the call must wait it out whatever its timing
            await app.start()

        starting = asyncio.create_task(start_late())
        started = time.monotonic()
        try:
            async with Scorer(
                f"127.0.0.1:{port}", retry=Retry(attempts=30, initial_backoff_s=0.1, max_backoff_s=0.5), deadline_s=60
            ) as scorer:
                reply = await scorer.score(REQUEST)
            assert reply.results[0].total == 8 and time.monotonic() - started >= 1.0
        finally:
            await starting
            await app.stop()
