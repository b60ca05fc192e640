"""Per-token evaluation budgets: refused when spent, and still spent after a restart."""

from __future__ import annotations

import json
from dataclasses import replace

import grpc
import pytest
from prometheus_client import REGISTRY

from promptclimb.scorer.v1 import scorer_pb2, scorer_pb2_grpc
from scorer_service.app import ScorerApp


async def test_budget_is_enforced_and_survives_restart(base_config, tmp_path):
    tokens = tmp_path / "tokens.json"
    tokens.write_text(
        json.dumps(
            {
                "tokens": [
                    {"name": "miner", "token": "m-secret", "rights": ["score"], "evaluation_budget": 5},
                    {"name": "team", "token": "t-secret", "rights": ["score"]},
                ]
            }
        )
    )
    config = replace(base_config, tokens_file=str(tokens), state_dir=tmp_path / "state")
    miner = (("authorization", "Bearer m-secret"),)
    before = REGISTRY.get_sample_value("scorer_token_evaluations_total", {"token": "miner"}) or 0

    for restart in range(2):
        app = ScorerApp(config)
        port = await app.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = scorer_pb2_grpc.ScorerStub(channel)
                if restart == 0:
                    request = scorer_pb2.ScoreRequest(task_id="shapes", templates=["{}", "a {}", "the {}"])
                    reply = await stub.Score(request, metadata=miner)
                    assert len(reply.results) == 3
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.Score(
                        scorer_pb2.ScoreRequest(task_id="shapes", templates=["x {}", "y {}", "z {}"]), metadata=miner
                    )
                assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "3 of 5 templates used, this request needs 3" in (caught.value.details() or "")
                # the rest of the budget still works, and other tokens are unaffected
                other = await stub.Score(
                    scorer_pb2.ScoreRequest(task_id="shapes", templates=["{}"] * 4),
                    metadata=(("authorization", "Bearer t-secret"),),
                )
                assert len(other.results) == 4
        finally:
            await app.stop()
    assert (REGISTRY.get_sample_value("scorer_token_evaluations_total", {"token": "miner"}) or 0) - before == 3
