"""TLS both ways: the optimizer calls an mTLS scorer with its client certificate, and serves its own API over mTLS."""

from __future__ import annotations

import grpc
import pytest

from optimizer_service.config import ScorerSettings
from promptclimb.optimizer.v1 import optimizer_pb2 as pb
from promptclimb.optimizer.v1 import optimizer_pb2_grpc
from promptclimb_common.channels import channel_credentials
from promptclimb_common.grpc_runtime import TlsFiles
from scorer_service.app import ScorerApp
from scorer_service.config import ScorerConfig, TaskSource
from tests.optimizer.conftest import TASK, open_optimizer
from tests.tls_certs import make_certs


async def test_mtls_to_the_scorer_and_on_the_optimizer_api(tiny_clip_dir, image_task_dir, llm, tmp_path):
    certs = make_certs(tmp_path / "certs")
    mtls = TlsFiles(str(certs.server_cert), str(certs.server_key), client_ca=str(certs.ca))
    scorer = ScorerApp(
        ScorerConfig(
            model=str(tiny_clip_dir),
            tasks=(TaskSource(TASK, image_task_dir),),
            shots=3,
            port=0,
            metrics_port=None,
            cache_dir=tmp_path / "cache",
            tls=mtls,
        )
    )
    scorer_port = await scorer.start()
    try:
        to_scorer = ScorerSettings(
            address=f"localhost:{scorer_port}",
            tls_ca=str(certs.ca),
            tls_cert=str(certs.client_cert),
            tls_key=str(certs.client_key),
            grace_s=5.0,
        )
        with_cert = channel_credentials(str(certs.ca), str(certs.client_cert), str(certs.client_key))
        async with open_optimizer(
            to_scorer, llm, tmp_path / "state", tls=mtls, client_credentials=with_cert
        ) as optimizer:
            spec = pb.RunSpec(
                task_id=TASK, initial_pool_size=3, restarts=1, resets=1, iterations=1, templates_per_call=1
            )
            run_id = (await optimizer.stub.StartRun(pb.StartRunRequest(spec=spec))).run_id
            [event async for event in optimizer.stub.WatchRun(pb.WatchRunRequest(run_id=run_id))]
            run = await optimizer.stub.GetRun(pb.GetRunRequest(run_id=run_id))
            assert (run.state, run.stop_reason) == (pb.RUN_STATE_SUCCEEDED, "finished")
            assert run.counters.templates_scored == 3 + 1

            for credentials in (
                None,
                channel_credentials(str(certs.ca)),
            ):  # plaintext, and TLS without a client certificate
                channel = (
                    grpc.aio.secure_channel(f"localhost:{optimizer.port}", credentials)
                    if credentials
                    else grpc.aio.insecure_channel(f"localhost:{optimizer.port}")
                )
                async with channel:
                    with pytest.raises(grpc.aio.AioRpcError) as refused:
                        await optimizer_pb2_grpc.OptimizerStub(channel).ListRuns(pb.ListRunsRequest(), timeout=5)
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await scorer.stop()
