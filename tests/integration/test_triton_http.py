"""TritonHttpScorer against the real local Triton (no mocks), as test_scoring.py does for the gRPC scorer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import numpy as np
import pytest

from gateway.errors import (
    ScoringError,
    ScoringNoAnswer,
    ScoringTimeout,
    ScoringUnavailable,
    ScoringUnreachable,
)
from gateway.local_triton import LocalTriton, free_port, free_ports
from gateway.scoring.triton import TritonScorer
from gateway.scoring.triton_http import TritonHttpScorer
from tests.integration.slow_model import slow_model_repository
from tests.integration.triton_rows import metric_values, random_rows

pytestmark = pytest.mark.integration
BUDGET_S = 10.0  # generous: these tests are about results, not about a 2-core host's latency
SLOW_MODEL_SLEEP_MS = 150


def deadline_in(seconds: float) -> float:
    return time.monotonic() + seconds


@pytest.fixture(scope="module")
def slow_triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTriton]:
    """One instance that sleeps 150 ms per execute; its default queue timeout (1 s) is above any budget."""
    repository = slow_model_repository(tmp_path_factory.mktemp("slow_http"), sleep_ms=SLOW_MODEL_SLEEP_MS)
    with LocalTriton(free_ports(), model_repository=repository, startup_timeout_s=180.0) as server:
        yield server


@pytest.mark.parametrize("version", ["1", "2", ""])
@pytest.mark.parametrize("rows", [1, 50, 2048])
async def test_scores_equal_the_grpc_scorer(triton: LocalTriton, version: str, rows: int) -> None:
    cat, dense = random_rows(rows, seed=rows)
    async with (
        TritonScorer(triton.grpc_url, model_version=version) as grpc_scorer,
        TritonHttpScorer(triton.http_url, model_version=version) as http_scorer,
    ):
        expected = await grpc_scorer.score(cat, dense, deadline_in(BUDGET_S))
        scores = await http_scorer.score(cat, dense, deadline_in(BUDGET_S))
    assert scores.pctr.shape == scores.pcvr.shape == (rows,)
    assert scores.pctr.dtype == scores.pcvr.dtype == np.float32
    np.testing.assert_allclose(scores.pctr, expected.pctr, rtol=0, atol=1e-6)
    np.testing.assert_allclose(scores.pcvr, expected.pcvr, rtol=0, atol=1e-6)
    # The version Triton actually ran, also when the server chose it.
    assert scores.model_version == expected.model_version == (version or expected.model_version)


async def test_ready_and_unknown_version_is_unavailable_and_named(triton: LocalTriton) -> None:
    cat, dense = random_rows(10, seed=4)
    async with (
        TritonHttpScorer(triton.http_url) as live,
        TritonHttpScorer(triton.http_url, model_version="99") as unknown,
    ):
        assert await live.ready()
        with pytest.raises(ScoringUnavailable, match="ranker:99") as caught:
            await unknown.score(cat, dense, deadline_in(BUDGET_S))
        assert "99" in str(caught.value).split("failed:", 1)[1]
        assert not await unknown.ready()


async def test_expired_deadline_is_a_timeout_without_a_request(triton: LocalTriton) -> None:
    cat, dense = random_rows(10, seed=3)
    async with TritonHttpScorer(triton.http_url) as scorer:
        with pytest.raises(ScoringTimeout, match="before calling"):
            await scorer.score(cat, dense, deadline_in(-0.001))
        assert scorer.connections_opened == 0
        # A budget shorter than any Triton round trip: the client's deadline or Triton's queue timeout,
        # both reported as the gateway's timeout.
        with pytest.raises(ScoringTimeout):
            await scorer.score(cat, dense, deadline_in(0.0001))


async def test_dead_port_is_unreachable_quickly_and_not_ready() -> None:
    dead_url = f"127.0.0.1:{free_port()}"
    cat, dense = random_rows(10, seed=5)
    async with TritonHttpScorer(dead_url, ready_timeout_s=0.5) as dead:
        started = time.monotonic()
        with pytest.raises(ScoringUnreachable, match=dead_url) as caught:
            await dead.score(cat, dense, deadline_in(BUDGET_S))
        assert time.monotonic() - started < 1.0
        assert "connect" in str(caught.value).lower()
        started = time.monotonic()
        assert not await dead.ready()
        assert time.monotonic() - started < 1.0


async def test_score_before_start_is_unavailable() -> None:
    cat, dense = random_rows(1, seed=6)
    scorer = TritonHttpScorer("127.0.0.1:1")
    with pytest.raises(ScoringUnavailable, match="not started"):
        await scorer.score(cat, dense, deadline_in(BUDGET_S))
    assert not await scorer.ready()


async def test_connections_are_reused_up_to_the_cap(triton: LocalTriton) -> None:
    rows = [random_rows(50, seed=300 + i) for i in range(8)]
    async with TritonHttpScorer(triton.http_url, max_connections=3) as scorer:
        for cat, dense in rows:
            await scorer.score(cat, dense, deadline_in(BUDGET_S))
        assert scorer.connections_opened == 1  # one caller at a time: one kept-alive socket

        async def caller(i: int) -> None:
            for _ in range(20):
                cat, dense = rows[i]
                scores = await scorer.score(cat, dense, deadline_in(BUDGET_S))
                assert scores.pctr.shape == (50,)

        await asyncio.gather(*(caller(i) for i in range(8)))
        assert 1 <= scorer.connections_opened <= 3
        assert scorer.open_connections == scorer.connections_opened


def rejected(triton: LocalTriton) -> float:
    values = metric_values(triton.metrics_url, "nv_inference_request_failure")
    return sum(v for labels, v in values.items() if dict(labels)["reason"] == "REJECTED")


async def test_the_queue_timeout_makes_triton_reject_queued_calls(slow_triton: LocalTriton) -> None:
    budget_s = 0.3
    # The model needs 150 ms per execute: a call that has not started with that much budget left cannot
    # finish in time, so Triton's queue timeout is the budget minus 200 ms, and it rejects it.
    rows = random_rows(5, seed=8)
    rejected_before = rejected(slow_triton)
    outcomes: list[BaseException | None] = []
    async with TritonHttpScorer(slow_triton.http_url, max_connections=32, queue_margin_s=0.2) as scorer:

        async def one(i: int) -> None:
            # A trickle, not a burst: Triton 2.51's batcher checks queue timeouts when a new arrival
            # wakes it (see test_faults.py).
            await asyncio.sleep(i * 0.01)
            started = time.monotonic()
            try:
                await scorer.score(*rows, started + budget_s)
                outcomes.append(None)
            except ScoringError as exc:
                outcomes.append(exc)
            assert time.monotonic() - started <= budget_s + 0.05

        await asyncio.gather(*(one(i) for i in range(30)))
    assert all(o is None or isinstance(o, ScoringTimeout) for o in outcomes), outcomes
    assert any(o is not None and "dropped the request from its queue" in str(o) for o in outcomes), outcomes
    deadline = time.monotonic() + 3.0
    while rejected(slow_triton) <= rejected_before and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert rejected(slow_triton) > rejected_before


async def test_a_busy_server_is_no_answer_by_the_deadline(slow_triton: LocalTriton) -> None:
    cat, dense = random_rows(5, seed=9)
    async with TritonHttpScorer(slow_triton.http_url, queue_margin_s=0.0) as scorer:
        # Answered only once whatever earlier tests left in Triton's queue has run: the instance is idle.
        await scorer.score(cat, dense, deadline_in(BUDGET_S))
        started = time.monotonic()
        with pytest.raises(ScoringNoAnswer, match="did not answer before the deadline"):
            await scorer.score(cat, dense, started + 0.05)  # runs at once, for 150 ms
        assert time.monotonic() - started < 0.05 + 0.15
        # The timed-out connection was closed, never reused; a later call opens another and succeeds.
        assert scorer.open_connections == 0
        scores = await scorer.score(cat, dense, deadline_in(BUDGET_S))
        assert scores.pctr.shape == (5,)
        assert scorer.connections_opened == 2


async def test_sigkill_mid_call_is_unreachable_quickly(tmp_path_factory: pytest.TempPathFactory) -> None:
    repository = slow_model_repository(tmp_path_factory.mktemp("kill_http"), sleep_ms=3000)
    victim = LocalTriton(free_ports(), model_repository=repository, startup_timeout_s=180.0)
    await asyncio.to_thread(victim.start)
    try:
        cat, dense = random_rows(5, seed=10)
        async with TritonHttpScorer(victim.http_url) as scorer:
            assert await scorer.ready()
            call = asyncio.ensure_future(scorer.score(cat, dense, deadline_in(BUDGET_S)))
            await asyncio.sleep(0.5)  # the call is in Triton's model, sleeping
            assert not call.done()
            killed_at = time.monotonic()
            await asyncio.to_thread(victim.kill)
            with pytest.raises(ScoringUnavailable) as caught:
                await call
            assert time.monotonic() - killed_at < 1.0
            assert isinstance(caught.value, ScoringUnreachable), caught.value
            # And the server stays unreachable, fast, for the next call and for readiness.
            started = time.monotonic()
            with pytest.raises(ScoringUnreachable):
                await scorer.score(cat, dense, deadline_in(BUDGET_S))
            assert not await scorer.ready()
            assert time.monotonic() - started < 1.0
    finally:
        victim.stop()


async def test_cancelling_a_call_closes_its_connection(slow_triton: LocalTriton) -> None:
    cat, dense = random_rows(5, seed=12)
    async with TritonHttpScorer(slow_triton.http_url) as scorer:
        call = asyncio.ensure_future(scorer.score(cat, dense, deadline_in(BUDGET_S)))
        await asyncio.sleep(0.05)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert scorer.open_connections == 0  # half-read: closed, not back in the pool
        await asyncio.sleep(SLOW_MODEL_SLEEP_MS / 1000.0)  # the abandoned answer would arrive now
        scores = await scorer.score(cat, dense, deadline_in(BUDGET_S))
        assert scores.pctr.shape == (5,)
