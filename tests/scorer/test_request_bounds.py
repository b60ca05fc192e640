"""Every repeated field and nested list of a ScoreRequest counts against a limit before any work, empty entries
included; each refusal is REQUEST_TOO_LARGE (INVALID_ARGUMENT) naming the field and the limit, and costs nothing."""

from __future__ import annotations

import grpc
import pytest

from promptclimb.scorer.v1 import scorer_pb2
from promptclimb_common.errors import details_of


async def refusal(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def test_empty_ensembles_count_as_candidates(open_scorer):
    # 17 empty ensembles cost the server a result each; the base config allows 16 candidates per request.
    _, stub, _ = open_scorer
    empty = scorer_pb2.TemplateEnsemble(templates=[])
    refused = details_of(await refusal(stub.Score(scorer_pb2.ScoreRequest(task_id="shapes", ensembles=[empty] * 17))))
    assert (refused.code, refused.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_TOO_LARGE")
    assert refused.fields == ("ensembles",) and refused.metadata["limit"] == "16"
    assert "17 candidates" in refused.message
    at_limit = await stub.Score(scorer_pb2.ScoreRequest(task_id="shapes", ensembles=[empty] * 16))
    assert [r.error_reason for r in at_limit.ensemble_results] == [scorer_pb2.TEMPLATE_ERROR_REASON_EMPTY_ENSEMBLE] * 16


async def test_a_million_empty_ensembles_are_refused_at_once(open_scorer):
    _, stub, _ = open_scorer
    request = scorer_pb2.ScoreRequest(task_id="shapes", ensembles=[scorer_pb2.TemplateEnsemble()] * 50_000)
    refused = details_of(await refusal(stub.Score(request, timeout=5)))
    assert refused.reason == "REQUEST_TOO_LARGE"
