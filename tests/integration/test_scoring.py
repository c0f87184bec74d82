"""TritonScorer and MicroBatcher against the real local Triton (no mocks)."""

from __future__ import annotations

import asyncio
import socket
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from gateway.core import feature_spec
from gateway.errors import ScoringNoAnswer, ScoringTimeout, ScoringUnavailable, ScoringUnreachable
from gateway.local_triton import LocalTriton, free_port
from gateway.scoring.batcher import MicroBatcher
from gateway.scoring.triton import TritonScorer
from tests.integration.triton_rows import metric_values, random_rows

pytestmark = pytest.mark.integration
BUDGET_S = 10.0  # generous: these tests are about results, not about a 2-core host's latency


def deadline_in(seconds: float) -> float:
    return time.monotonic() + seconds


@pytest.mark.parametrize("version", ["1", ""])
async def test_scores_equal_a_direct_tritonclient_call(triton: LocalTriton, version: str) -> None:
    cat, dense = random_rows(300, seed=11)
    inputs = [
        grpcclient.InferInput(feature_spec.INPUT_CAT, list(cat.shape), "INT64"),
        grpcclient.InferInput(feature_spec.INPUT_DENSE, list(dense.shape), "FP32"),
    ]
    inputs[0].set_data_from_numpy(cat)
    inputs[1].set_data_from_numpy(dense)
    direct = grpcclient.InferenceServerClient(triton.grpc_url).infer(
        feature_spec.MODEL_NAME, inputs, model_version=version
    )
    async with TritonScorer(triton.grpc_url, model_version=version) as scorer:
        scores = await scorer.score(cat, dense, deadline_in(BUDGET_S))
    assert scores.pctr.shape == scores.pcvr.shape == (300,)
    assert scores.pctr.dtype == scores.pcvr.dtype == np.float32
    np.testing.assert_allclose(
        scores.pctr, direct.as_numpy(feature_spec.OUTPUT_PCTR)[:, 0], rtol=0, atol=1e-6
    )
    np.testing.assert_allclose(
        scores.pcvr, direct.as_numpy(feature_spec.OUTPUT_PCVR)[:, 0], rtol=0, atol=1e-6
    )
    # The version Triton actually ran, also when the server chose it.
    assert scores.model_version == direct.get_response().model_version
    assert scores.model_version == (version or scores.model_version)
    assert scores.model_version in {"1", "2"}


async def test_batcher_merges_concurrent_bids_into_fewer_triton_requests(triton: LocalTriton) -> None:
    rows = [random_rows(50, seed=200 + i) for i in range(32)]
    async with TritonScorer(triton.grpc_url) as scorer:
        alone = [await scorer.score(cat, dense, deadline_in(BUDGET_S)) for cat, dense in rows]
        labels = (("model", feature_spec.MODEL_NAME), ("version", "1"))
        before = metric_values(triton.metrics_url, "nv_inference_request_success").get(labels, 0.0)
        batcher = MicroBatcher(scorer)
        merged = await asyncio.gather(
            *(batcher.score(cat, dense, deadline_in(BUDGET_S)) for cat, dense in rows)
        )
        await batcher.aclose()
        after = metric_values(triton.metrics_url, "nv_inference_request_success")[labels]
    for own, ref in zip(merged, alone, strict=True):
        assert own.pctr.shape == (50,)
        np.testing.assert_allclose(own.pctr, ref.pctr, rtol=0, atol=1e-6)
        np.testing.assert_allclose(own.pcvr, ref.pcvr, rtol=0, atol=1e-6)
        assert own.model_version == "1"
    assert batcher.stats.callers == 32
    assert batcher.stats.rows == 32 * 50
    assert 1 <= batcher.stats.batches < 32
    # Triton saw exactly the merged requests, not one per bid.
    assert after - before == batcher.stats.batches


async def test_expired_deadline_is_a_timeout(triton: LocalTriton) -> None:
    cat, dense = random_rows(10, seed=3)
    async with TritonScorer(triton.grpc_url) as scorer:
        with pytest.raises(ScoringTimeout):
            await scorer.score(cat, dense, deadline_in(-0.001))
        with pytest.raises(ScoringTimeout):
            await MicroBatcher(scorer).score(cat, dense, deadline_in(-0.001))
        # A budget shorter than any Triton round trip: gRPC's deadline or Triton's queue timeout, both
        # reported as the gateway's timeout.
        with pytest.raises(ScoringTimeout):
            await scorer.score(cat, dense, deadline_in(0.0001))


async def test_unknown_version_is_unavailable_and_named(triton: LocalTriton) -> None:
    cat, dense = random_rows(10, seed=4)
    async with TritonScorer(triton.grpc_url, model_version="99") as scorer:
        with pytest.raises(ScoringUnavailable, match="ranker:99") as caught:
            await scorer.score(cat, dense, deadline_in(BUDGET_S))
        assert "99" in str(caught.value.__cause__)
        assert not await scorer.ready()


async def test_dead_port_is_unavailable_quickly_and_not_ready(triton: LocalTriton) -> None:
    dead_url = f"127.0.0.1:{free_port()}"
    cat, dense = random_rows(10, seed=5)
    async with (
        TritonScorer(triton.grpc_url) as live,
        TritonScorer(dead_url, ready_timeout_s=0.5) as dead,
    ):
        assert await live.ready()
        started = time.monotonic()
        # Unreachable, a ScoringUnavailable the fleet retries elsewhere: the call never ran there.
        with pytest.raises(ScoringUnreachable, match=dead_url) as caught:
            await dead.score(cat, dense, deadline_in(BUDGET_S))
        assert time.monotonic() - started < 2.0
        assert "UNAVAILABLE" in str(caught.value)
        assert "connect" in str(caught.value).lower()
        started = time.monotonic()
        assert not await dead.ready()
        assert time.monotonic() - started < 2.0


async def test_a_server_that_never_answers_is_no_answer_by_the_deadline() -> None:
    """A listener that accepts and then says nothing (a hung or SIGSTOPped server): ScoringNoAnswer, the
    kind the fleet counts towards ejecting a silent server, and never later than the deadline."""
    cat, dense = random_rows(10, seed=7)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"127.0.0.1:{silent.getsockname()[1]}"
        async with TritonScorer(url) as scorer:
            started = time.monotonic()
            with pytest.raises(ScoringNoAnswer, match="did not answer before the deadline"):
                await scorer.score(cat, dense, deadline_in(0.2))
            assert time.monotonic() - started < 0.2 + 0.1


async def test_score_before_start_is_unavailable() -> None:
    cat, dense = random_rows(1, seed=6)
    scorer = TritonScorer("127.0.0.1:1")
    with pytest.raises(ScoringUnavailable, match="not started"):
        await scorer.score(cat, dense, deadline_in(BUDGET_S))
    assert not await scorer.ready()
