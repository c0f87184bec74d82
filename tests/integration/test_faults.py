"""Triton dies or crawls mid-traffic: every bid is still answered within its deadline, and the gateway
recovers by itself (real Triton via LocalTriton, real gateway via uvicorn, bounded loads on loopback)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import orjson
import pytest

from gateway.config import Settings
from gateway.local_triton import LocalTriton, free_ports
from tests.integration.bid_requests import ads_with_distinct_advertisers, candidate, site_request
from tests.integration.gateway_process import gateway_process
from tests.integration.gateway_server import serve_in_thread
from tests.integration.load import Outcome, closed_loop, generator_without_gc_pauses, new_session, send
from tests.integration.slow_model import slow_model_repository
from tests.integration.triton_rows import metric_values

pytestmark = pytest.mark.integration

# What the issue promises: an answer within tmax plus 50 ms of network and scheduling slack.
SLACK_S = 0.050
SLOW_MODEL_SLEEP_MS = 150


def bid_body(tmax: int, candidates: int = 5) -> bytes:
    ads = ads_with_distinct_advertisers(candidates)
    request = site_request([candidate(ad, bid=2.0 + i) for i, ad in enumerate(ads)], tmax=tmax)
    return orjson.dumps(request)


def answered_in_time(outcome: Outcome, tmax_s: float) -> bool:
    return outcome.status == 200 and outcome.latency_s <= tmax_s + SLACK_S


async def first_scored_bid(url: str, body: bytes, timeout_s: float) -> float:
    """Posts bids back to back until one is scored by the model (not degraded); returns when it arrived."""
    deadline = time.monotonic() + timeout_s
    async with new_session() as session:
        while time.monotonic() < deadline:
            outcome = await send(session, url, body)
            assert outcome.status == 200, outcome
            if not outcome.degraded:
                return outcome.finished
            await asyncio.sleep(0.005)  # pacing only: a breaker-open answer takes microseconds
    raise AssertionError(f"no bid was scored by the model within {timeout_s}s")


@pytest.mark.slow
async def test_triton_killed_mid_load_every_bid_answered_in_time_then_recovers() -> None:
    tmax_ms = 100
    body = bid_body(tmax_ms)
    ports = free_ports()
    triton = LocalTriton(ports, startup_timeout_s=180.0)
    restarted = LocalTriton(ports, startup_timeout_s=180.0)
    await asyncio.to_thread(triton.start)
    try:
        # A process of its own: the load generator here must not share the gateway's GIL.
        with gateway_process({"BIDGW_TRITON_URL": triton.http_address}) as gateway:
            url = f"{gateway.url}/v1/bid"
            await first_scored_bid(url, body, timeout_s=10.0)

            with generator_without_gc_pauses():
                async with new_session() as session:
                    load = asyncio.create_task(
                        closed_loop(session, url, lambda: body, concurrency=8, duration_s=6.0)
                    )
                    await asyncio.sleep(2.0)  # steady traffic before the fault
                    await asyncio.to_thread(triton.kill)
                    # Once the kill has returned (the process reaped): a bid sent between asking for the
                    # kill and its landing could still be scored, and is not "while Triton is dead".
                    killed_at = time.monotonic()
                    outcomes = await load

            before = [o for o in outcomes if o.finished < killed_at]
            after = [o for o in outcomes if o.started >= killed_at]
            assert len(before) >= 20, "too little traffic before the kill to judge"
            assert len(after) >= 50, "too little traffic after the kill to judge"
            assert any(not o.degraded for o in before), "Triton never scored a bid before the kill"
            late_or_failed = [o for o in outcomes if not answered_in_time(o, tmax_ms / 1000.0)]
            assert late_or_failed == [], [
                f"{o.status} in {o.latency_s * 1000:.1f} ms, sent {o.started - killed_at:+.3f} s after kill"
                for o in late_or_failed[:5]
            ] + [f"{len(late_or_failed)} of {len(outcomes)}"]
            # While Triton is dead, every answer is a fallback bid or a no-bid, flagged degraded.
            assert all(o.degraded and (o.has_bid or o.nbr is not None) for o in after)
            worst_dead_ms = max(o.latency_s for o in after) * 1000.0

            await asyncio.to_thread(restarted.start)  # the same ports, a fresh server
            ready_at = time.monotonic()
            scored_at = await first_scored_bid(url, body, timeout_s=10.0)
            recovery_s = max(0.0, scored_at - ready_at)
            print(
                f"\nMEASURED: Triton killed mid-load: {len(outcomes)} bids, 0 errors, "
                f"worst answer while dead {worst_dead_ms:.1f} ms (tmax {tmax_ms} ms); "
                f"first model-scored bid {recovery_s:.2f} s after the restarted Triton was ready"
            )
            assert recovery_s <= 5.0
    finally:
        triton.stop()
        restarted.stop()


@pytest.fixture(scope="module")
def slow_triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTriton]:
    """One instance that sleeps 150 ms per execute; its default queue timeout (1 s) is above any budget."""
    repository = slow_model_repository(tmp_path_factory.mktemp("slow"), sleep_ms=SLOW_MODEL_SLEEP_MS)
    with LocalTriton(free_ports(), model_repository=repository, startup_timeout_s=180.0) as server:
        yield server


def post(client: httpx.Client, body: bytes) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = client.post("/v1/bid", content=body, headers={"content-type": "application/json"})
    return response, time.monotonic() - started


def test_a_slow_model_cannot_make_a_bid_late(slow_triton: LocalTriton) -> None:
    tmax_ms = 60
    body = bid_body(tmax_ms)
    with (
        serve_in_thread(Settings(triton_url=slow_triton.http_address)) as url,
        httpx.Client(base_url=url) as client,
    ):
        for _ in range(5):
            response, took = post(client, body)
            assert response.status_code == 200, response.text
            assert response.json()["ext"]["degraded"] is True
            assert took <= tmax_ms / 1000.0 + SLACK_S, f"answered after {took * 1000:.1f} ms"


def failures(triton: LocalTriton) -> dict[str, float]:
    values = metric_values(triton.metrics_url, "nv_inference_request_failure")
    return {dict(labels)["reason"]: value for labels, value in values.items()}


async def concurrent_slow_bids(url: str, body: bytes, count: int, spacing_s: float) -> list[Outcome]:
    async with new_session() as session:

        async def one(i: int) -> Outcome:
            await asyncio.sleep(i * spacing_s)
            return await send(session, url, body)

        return await asyncio.gather(*(one(i) for i in range(count)))


async def until_triton_counted(triton: LocalTriton, reasons: tuple[str, ...], above: float) -> float:
    """Triton settles failures when its scheduler next looks at the queue: wait (bounded) for the count."""
    deadline = time.monotonic() + 3.0
    while (total := sum(failures(triton).get(r, 0.0) for r in reasons)) <= above:
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    return total


def executed(triton: LocalTriton) -> float:
    return sum(metric_values(triton.metrics_url, "nv_inference_request_success").values())


async def test_stale_bids_are_dropped_inside_triton_not_executed_late(slow_triton: LocalTriton) -> None:
    tmax_ms = 60  # a 50 ms budget against a 150 ms execute: generous margins for a noisy machine
    # Every bid reaches Triton at once: no breaker in the way, no cap on the gateway's calls in flight.
    settings = Settings(
        triton_url=slow_triton.http_address,
        breaker_failure_threshold=1000,
        batch_concurrency=16,
        batch_concurrency_mode="fixed",
    )
    before = failures(slow_triton)
    dropped_before = before.get("REJECTED", 0.0) + before.get("CANCELED", 0.0)
    executed_before = executed(slow_triton)
    with serve_in_thread(settings) as url:
        outcomes = await concurrent_slow_bids(f"{url}/v1/bid", bid_body(tmax_ms), count=8, spacing_s=0.005)
    assert all(answered_in_time(o, tmax_ms / 1000.0) and o.degraded for o in outcomes), outcomes
    # The first bid runs (150 ms, past every budget); the ones queued behind it expire before it ends and
    # are dropped by Triton (cancelled or rejected), not executed late for nobody.
    dropped = await until_triton_counted(slow_triton, ("REJECTED", "CANCELED"), above=dropped_before + 4)
    assert dropped - dropped_before >= 5, failures(slow_triton)
    assert executed(slow_triton) - executed_before <= 2


async def test_the_queue_timeout_makes_triton_reject_queued_bids(slow_triton: LocalTriton) -> None:
    tmax_ms = 300
    # The model needs 150 ms per execute: a bid that has not started with that much budget left cannot
    # finish in time, and Triton should reject it from its queue while the gateway still waits.
    settings = Settings(
        triton_url=slow_triton.http_address,
        breaker_failure_threshold=1000,
        server_cap_ms=1000,
        batch_upstream_latency_us=(SLOW_MODEL_SLEEP_MS + 50) * 1000,
        batch_concurrency=16,
        batch_concurrency_mode="fixed",
        # Every bid must reach Triton's queue: the learnt bid limit would shed the later ones (their latency
        # grows behind the 150 ms model), which is admission's job, not what this test is about.
        bid_concurrency_mode="fixed",
    )
    rejected_before = failures(slow_triton).get("REJECTED", 0.0)
    # A trickle, not a burst: Triton 2.51's batcher (queue policy, prefetch off) checks queue timeouts
    # only when it wakes, and a new arrival that finds an idle instance is what wakes it; a burst that
    # arrives while the instance is busy sleeps out its 500 ms idle wait, by which time the gRPC deadline
    # has cancelled everything (counted CANCELED instead).
    with serve_in_thread(settings) as url:
        outcomes = await concurrent_slow_bids(f"{url}/v1/bid", bid_body(tmax_ms), count=30, spacing_s=0.01)
    assert all(answered_in_time(o, tmax_ms / 1000.0) for o in outcomes), outcomes
    rejected = await until_triton_counted(slow_triton, ("REJECTED",), above=rejected_before)
    assert rejected > rejected_before, failures(slow_triton)
